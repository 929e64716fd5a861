"""What ``access-broker serve`` imports by the time it listens: its start is what every operator's
restart and every end-to-end test waits for.

The console script's entry point runs in a new interpreter, which lists what it had loaded
when it stops (SIGTERM, as a service manager stops it).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.conftest import Watched

_REPORT = (
    "import atexit, json, sys\n"
    "def report():\n"
    "    seen = {name: module is not None for name, module in sys.modules.items()}\n"
    "    sys.stderr.write('\\nMODULES ' + json.dumps(seen) + '\\n')\n"
    "atexit.register(report)\n"
    "sys.argv = ['access-broker', *sys.argv[1:]]\n"
    "from access.broker.admin import main\n"
    "main()\n"
)


def _served_modules(tmp_path: Path) -> dict[str, bool]:
    """The modules a broker on SQLite had imported (True) or refused (False) once it listened."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCESS_")}
    args = ["serve", "--insecure-http", "--host", "127.0.0.1", "--port", "0"]
    args += ["--data-dir", str(tmp_path / "data"), "--database-url", f"sqlite:///{tmp_path / 'broker.db'}"]
    broker = Watched(
        subprocess.Popen(
            [sys.executable, "-c", _REPORT, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
    )
    broker.until(r"listening on ", timeout=60)
    broker.proc.terminate()
    done = broker.finish(timeout=30)
    assert done.returncode == 0, done.stderr
    seen: dict[str, bool] = json.loads(done.stderr.rsplit("\nMODULES ", 1)[1])
    return seen


def test_serve_does_not_import_httpx_s_command_line_tool(tmp_path: Path) -> None:
    """httpx's own CLI (rich's console and progress bars) cost the broker's start 0.1 s."""
    seen = _served_modules(tmp_path)
    assert seen["httpx"] and seen["fastapi"] and seen["uvicorn"]  # the report is of a broker
    assert seen.get("httpx._main") is False  # refused, so httpx defines its stand-in
    assert not [name for name in seen if name.split(".")[0] == "rich"]
