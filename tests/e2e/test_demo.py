"""`access demo` runs the whole loop against its own throwaway broker and says what it did.

On the local PostgreSQL its service is dynamic (issue 10): the test reads the demo's own admin
queries (real ``pg_roles`` and ``pg_stat_activity`` rows, printed as the demo ran) for each grant's
role appearing and going, then checks the server itself for anything the demo left.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import psycopg
import pytest

from tests.e2e.conftest import ACCESS

pytestmark = pytest.mark.e2e


def _one(pattern: str, text: str) -> re.Match[str]:
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{pattern!r} not in the demo's output:\n{text}"
    return found


def test_demo_goes_all_the_way(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ACCESS_", "XDG_"))}
    env.update(HOME=str(tmp_path), TMPDIR=str(tmp_path))
    result = subprocess.run(
        [ACCESS, "demo"], capture_output=True, text=True, env=env, timeout=120, stdin=subprocess.DEVNULL
    )
    out = result.stderr
    assert result.returncode == 0, out
    assert "acting as your browser" in out  # it says that it filled in the device page itself
    assert "error: no policy rule gives lead read on demo-db" in out  # deny by default
    # A write waits for a second person: pending (exit 5), not approvable by its requester, then
    # approved from the lead's own terminal (its own sign-in), and its TTL counts from then.
    assert "error: grant g-" in out and "waits for approval by 1 more of group:leads" in out
    assert "nobody reviews their own request" in out
    assert "(lead's terminal)" in out and "Signed in to" in out and "as lead" in out
    assert 'lead approved ("ok for DEMO-3")' in out
    assert "ttl        5m (counted from the approval)" in out
    assert "INSERT 0 1" in out  # the approved write grant's role may write
    assert "kind: kubernetes" in out  # how to add a cluster
    assert "Revoked grant" in out
    cut = re.search(r"cut ([+-]\d+\.\d+)s from the grant's expiry", out)
    assert cut, out
    assert -0.05 <= float(cut.group(1)) <= 1.5
    assert "the broker answers 410" in out  # the refused reconnect
    assert "connection.open" in out and "connection.close" in out
    assert re.search(r"ledger OK: \d+ entries", out)
    assert not list(tmp_path.glob("access-demo-*")), "the demo left its temporary directory behind"

    # Issue 10: each grant logs in as a role of its own, made for it and dropped when it ends.
    database = _one(r"database (access_demo_[0-9a-f]{8}) \(made for this run\)", out).group(1)
    broker = _one(r"tagged by this broker \(([A-Za-z0-9_-]+)\)", out).group(1)
    assert _one(rf"-v broker={re.escape(broker)} <<< .*\n    (\d+)$", out).group(1) == "0"  # none before
    roles = re.findall(r"^    rolname\s+\| (access_demo_[a-z0-9]{6})$", out, re.MULTILINE)
    # One per grant: exec's, the approved write's, then the cut one's.
    assert len(roles) == 3 and len(set(roles)) == 3, out
    assert len(re.findall(r"^    member_of\s+\| \{pg_read_all_data\}$", out, re.MULTILINE)) == 2
    writer = r"^    member_of\s+\| \{pg_read_all_data,pg_write_all_data\}$"
    assert len(re.findall(writer, out, re.MULTILINE)) == 1
    assert len(re.findall(r"^    rolconnlimit\s+\| 3$", out, re.MULTILINE)) == 3
    assert len(re.findall(r"^    rolvaliduntil\s+\| 20\d\d-", out, re.MULTILINE)) == 3
    read, _write, cut_role = roles
    assert re.search(rf"^     {read}$", out, re.MULTILINE)  # `select current_user` through the tunnel
    assert "ERROR:  permission denied for table orders" in out  # the target refuses the write
    after_revoke = float(_one(rf"role {read} gone (\d+\.\d+)s after `access revoke` returned", out).group(1))
    assert after_revoke < 5
    _one(rf"^    \d+\|{cut_role}\|PgSleep\|select pg_sleep\(60\)$", out)  # its live session on the server
    after_expiry = float(
        _one(rf"role {cut_role} and its session \(pid \d+\) gone ([+-]\d+\.\d+)s", out).group(1)
    )
    assert 0 <= after_expiry < 5
    assert "identity.create" in out and "identity.drop" in out

    with psycopg.connect(host="127.0.0.1", user="postgres", dbname="postgres", autocommit=True) as pg:
        left = pg.execute(
            "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)"
            " OR split_part(shobj_description(oid, 'pg_authid'), ' broker=', 2) = %s",
            [roles, broker],
        ).fetchall()
        assert left == [], "the demo left roles behind"
        assert pg.execute("SELECT 1 FROM pg_database WHERE datname = %s", [database]).fetchone() is None
