"""The real ``access-broker serve`` process, started with the two faults issue 9 quotes: it
exits 1 at once, naming the file or the address and what to do, with no errno text.

(Every other start-up fault runs in-process in tests/broker/test_startup.py.)
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from tests.e2e.conftest import ACCESS_BROKER


def test_serve_names_a_missing_certificate_and_a_busy_port(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCESS_")}
    env.update(ACCESS_BROKER_DATA_DIR=str(tmp_path / "data"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        runs = {  # both at once: each is a Python start-up, nothing else
            name: subprocess.Popen(
                [ACCESS_BROKER, "serve", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
            )
            for name, args in {
                "cert": ["--port", "0", "--tls-cert", "/nope.pem", "--tls-key", "/nope-key.pem"],
                "port": ["--port", str(port)],
            }.items()
        }
        results = {name: (proc.communicate(timeout=60)[1], proc.returncode) for name, proc in runs.items()}

    err, code = results["cert"]
    assert code == 1, err
    assert err.splitlines() == [
        "error: TLS certificate /nope.pem: no such file or directory",
        "hint: create it, fix its permissions, or point --tls-cert / ACCESS_BROKER_TLS_CERT at the right one",
    ]
    err, code = results["port"]
    assert code == 1, err
    assert (
        err.splitlines()[0]
        == f"error: cannot listen on 127.0.0.1:{port}: another process is already listening there"
    )
    assert "choose another port with --port / ACCESS_BROKER_PORT" in err
    assert "Errno" not in err
