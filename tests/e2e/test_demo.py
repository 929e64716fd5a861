"""`access demo` runs the whole loop against its own throwaway broker and says what it did."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import ACCESS

pytestmark = pytest.mark.e2e


def test_demo_goes_all_the_way(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCESS_", "XDG_"))}
    env.update(HOME=str(tmp_path), TMPDIR=str(tmp_path))
    result = subprocess.run(
        [ACCESS, "demo"], capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL
    )
    out = result.stderr
    assert result.returncode == 0, out
    assert "acting as your browser" in out  # it says that it filled in the device page itself
    assert "error: no policy rule gives demo write on demo-db" in out  # deny by default
    assert "kind: kubernetes" in out  # how to add a cluster
    assert "Revoked grant" in out
    cut = re.search(r"cut ([+-]\d+\.\d+)s from the grant's expiry", out)
    assert cut, out
    assert -0.05 <= float(cut.group(1)) <= 1.5
    assert "the broker answers 410" in out  # the refused reconnect
    assert "connection.open" in out and "connection.close" in out
    assert re.search(r"ledger OK: \d+ entries", out)
    assert not list(tmp_path.glob("access-demo-*")), "the demo left its temporary directory behind"
