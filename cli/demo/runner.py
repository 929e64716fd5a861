"""The demo's programs: a throwaway broker (``access-broker serve``) and the ``access`` CLI, run as
a person would run them, each command printed before it runs."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from access.cli.demo import console

__all__ = ["Runner", "program"]

_BIN = Path(sys.executable).parent


def program(name: str) -> str:
    """The program ``name`` next to this Python (the venv's), else the one on PATH."""
    local = _BIN / name
    return str(local) if local.exists() else (shutil.which(name) or name)


def _pump(stream: Any, lines: queue.Queue[str]) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
    stream.close()


class Runner:
    """One demo's broker process and CLI configuration, in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        from access.shared.devca import make_ca

        self.workdir = workdir
        self.ca = make_ca(workdir / "ca")
        self.broker: subprocess.Popen[str] | None = None
        self.url = ""
        # No PostgreSQL password reaches the broker or the CLI but the admin password file the
        # policy names: what the demo shows logging in without one really has none.
        self.no_pgpass = workdir / "no-pgpass"  # never made: libpq finds no password file
        nopass = {"PGPASSFILE": str(self.no_pgpass)}
        self.broker_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ACCESS_") and k != "PGPASSWORD"},
            **nopass,
            "ACCESS_BROKER_DATA_DIR": str(workdir / "broker"),
            "ACCESS_BROKER_DEVICE_POLL_INTERVAL": "1",
            "ACCESS_BROKER_LOG_LEVEL": "warning",
        }
        self.cli_env = {
            **{
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("ACCESS_", "PYTHON_KEYRING")) and k != "PGPASSWORD"
            },
            **nopass,
            "XDG_CONFIG_HOME": str(workdir / "config"),
            "PYTHON_KEYRING_BACKEND": "keyring.backends.fail.Keyring",
            "ACCESS_CA_FILE": str(self.ca.ca_cert),
            "NO_COLOR": "1",
        }

    def start_broker(self, policy: Path) -> None:
        cmd = [
            program("access-broker"),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-cert",
            str(self.ca.server_cert),
            "--tls-key",
            str(self.ca.server_key),
            "--policy",
            str(policy),
        ]
        self.broker = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=self.broker_env,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_pump, args=(self.broker.stderr, lines), daemon=True).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                line = lines.get(timeout=0.5)
                match = re.search(r"listening on (\S+)", line)
                if match:
                    self.url = match.group(1)
                    self.cli_env["ACCESS_BROKER_URL"] = self.url
                    return
            if self.broker.poll() is not None:
                break
        raise RuntimeError("the demo broker did not start")

    def stop_broker(self) -> None:
        if self.broker and self.broker.poll() is None:
            self.broker.terminate()
            try:
                self.broker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.broker.kill()

    def admin(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        console.command(["access-broker", *args])
        return subprocess.run(
            [program("access-broker"), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.broker_env,
            timeout=60,
            check=True,
        )

    def env_of(self, who: str | None) -> dict[str, str]:
        """The CLI environment of the demo's engineer (None), or of another person ``who``: a
        configuration folder, and so a sign-in, of their own, as on their own laptop."""
        if who is None:
            return self.cli_env
        return {**self.cli_env, "XDG_CONFIG_HOME": str(self.workdir / f"config-{who}")}

    def access(
        self, *args: str, show: bool = True, check: bool = True, who: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        console.command(["access", *args], f"   ({who}'s terminal)" if who else "")
        result = subprocess.run(
            [program("access"), *args],
            capture_output=True,
            text=True,
            env=self.env_of(who),
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if show:
            console.output(result.stdout, result.stderr)
        if check and result.returncode != 0:
            raise RuntimeError(f"`access {' '.join(args)}` exited {result.returncode}")
        return result

    def login(self, username: str, password: str, who: str | None = None) -> None:
        from access.cli.browser import complete_device_login

        console.command(["access", "login", "--no-browser"], f"   ({who}'s terminal)" if who else "")
        proc = subprocess.Popen(
            [program("access"), "login", "--no-browser"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env_of(who),
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=_pump, args=(proc.stderr, lines), daemon=True).start()
        code = None
        deadline = time.monotonic() + 20
        while code is None and time.monotonic() < deadline:
            with contextlib.suppress(queue.Empty):
                line = lines.get(timeout=0.5)
                console.output(line)
                match = re.search(r"\b([B-DF-HJ-NP-TV-XZ]{4}-[B-DF-HJ-NP-TV-XZ]{4})\b", line)
                if match:
                    code = match.group(1)
        if code is None:
            proc.kill()
            raise RuntimeError("access login printed no user code")
        console.say(
            f"[demo] acting as your browser: opening {self.url}/device, signing in as {username!r}, "
            f"entering {code} and pressing Approve"
        )
        complete_device_login(self.url, code, username, password, ca_file=str(self.ca.ca_cert))
        proc.wait(timeout=30)
        while not lines.empty():
            console.output(lines.get())
        if proc.returncode != 0:
            raise RuntimeError(f"access login exited {proc.returncode}")

    def access_token(self) -> str:
        """The access token ``access login`` stored (the demo's keyring is the file)."""
        tokens = json.loads((self.workdir / "config" / "access" / "tokens.json").read_text())
        entry = tokens.get(self.url, tokens) if isinstance(tokens, dict) else {}
        token = entry.get("access_token", "") if isinstance(entry, dict) else ""
        return str(token)

    def broker_id(self) -> str:
        """The id this broker tags its per-grant roles with: its token signing key's id, which is
        also the ``kid`` in the header of every token it issues.

        Raises:
            RuntimeError: the stored token has no readable ``kid``.
        """
        header = self.access_token().split(".", 1)[0]
        try:
            kid = json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RuntimeError("the token access login stored has no readable key id") from exc
        return str(kid)

    def replay_handshake(self, grant_id: str) -> str:
        """Ask the broker's tunnel endpoint for ``grant_id`` directly and report its answer."""
        import ssl

        import httpx

        from access.shared.muxframe import SUBPROTOCOL

        headers = {
            "Authorization": f"Bearer {self.access_token()}",
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Protocol": SUBPROTOCOL,
            "Sec-WebSocket-Key": base64.b64encode(secrets.token_bytes(16)).decode(),
        }
        verify = ssl.create_default_context(cafile=str(self.ca.ca_cert))
        with httpx.Client(verify=verify, timeout=10) as http:
            response = http.get(f"{self.url}/v1/tunnel", params={"grant": grant_id}, headers=headers)
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:120]
        return f"{response.status_code}: {message}"
