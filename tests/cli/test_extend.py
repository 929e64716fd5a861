"""``access extend`` against the real broker app in-process, and the expiry warning of
``connect``/``exec``: when it comes (it scales with short grants) and what it says."""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest

from access.cli import render
from access.cli.commands.tunnel import warn_points
from access.shared.errors import ExitCode
from tests.cli.conftest import LiveBroker


def _request(live: LiveBroker, ttl: str, scope: str = "read") -> str:
    result = live.invoke("request", "svc-payments", "-s", scope, "-t", ttl, "-r", "INC-1", "-o", "json")
    assert result.exit_code == 0, result.stderr
    grant_id: str = json.loads(result.stdout)["id"]
    return grant_id


def test_extend_within_and_beyond_the_maximum(signed_in: LiveBroker) -> None:
    grant_id = _request(signed_in, "10m")  # sre-payments: at most 30m
    signed_in.clock.advance(timedelta(minutes=5))
    result = signed_in.invoke("extend", grant_id, "--ttl", "20m", "-o", "json")
    assert result.exit_code == 0, result.stderr
    grant = json.loads(result.stdout)
    assert grant["seconds_left"] == 20 * 60 and grant["state"] == "active"
    assert f"Extended grant {grant_id}: 20m left" in result.stderr
    assert "stay open" in result.stderr
    [sent] = signed_in.sent("POST", f"/v1/grants/{grant_id}/extend")
    assert json.loads(sent.content) == {"ttl": "20m"}

    over = signed_in.invoke("extend", grant_id, "--ttl", "1h")
    assert over.exit_code == ExitCode.DENIED
    assert "the maximum for read on svc-payments is 30m" in over.stderr
    assert "hint: request a new grant" in over.stderr

    shorter = signed_in.invoke("extend", grant_id, "-t", "1m")
    assert shorter.exit_code == ExitCode.USAGE
    assert "would not make it last longer" in shorter.stderr


def test_extend_refuses_a_bad_ttl_before_asking_and_an_ended_grant_after(signed_in: LiveBroker) -> None:
    grant_id = _request(signed_in, "10m")
    bad = signed_in.invoke("extend", grant_id, "--ttl", "soon")
    assert bad.exit_code == ExitCode.USAGE and "counted from now" in bad.stderr
    assert signed_in.sent("POST", f"/v1/grants/{grant_id}/extend") == []
    assert signed_in.invoke("revoke", grant_id).exit_code == 0
    ended = signed_in.invoke("extend", grant_id, "--ttl", "20m")
    assert ended.exit_code == ExitCode.ERROR
    assert "an ended grant cannot be extended" in ended.stderr and "hint: request a new grant" in ended.stderr
    gone = signed_in.invoke("extend", "g-0000000000000000", "--ttl", "20m")
    assert gone.exit_code == ExitCode.NOT_FOUND


@pytest.mark.parametrize(
    ("lifetime", "points"),
    [
        (3600.0, [300.0, 60.0]),  # long grants: at 5 minutes and at 1 minute left
        (600.0, [300.0, 60.0]),
        (480.0, [240.0, 60.0]),  # half the lifetime comes after the 5-minute mark
        (120.0, [60.0, 24.0]),
        (4.0, [2.0, 0.8]),  # a 4 s grant: at 2 s and 0.8 s left
    ],
)
def test_the_warning_points_scale_with_short_grants(lifetime: float, points: list[float]) -> None:
    assert warn_points(lifetime) == pytest.approx(points)


def test_the_expiry_warning_says_how_to_extend_and_escapes_the_id(capsys: pytest.CaptureFixture[str]) -> None:
    render.expiry_warning("g-0123456789abcdef", 59.6)
    render.expiry_warning("g-\x1b[2Jevil\u202e", 3, checked=False)
    err = capsys.readouterr().err.splitlines()
    assert err[0] == (
        "warning: grant g-0123456789abcdef ends in 1m: connections through it will be cut then; "
        "for more time: `access extend g-0123456789abcdef --ttl TTL` (TTL counted from now, "
        "within the rule's maximum)"
    )
    assert "\x1b" not in err[1] and "\u202e" not in err[1]
    assert "(as last known: the broker did not answer)" in err[1]


def test_a_stopping_connect_leaves_the_state_file_a_newer_connect_wrote(tmp_path: Path) -> None:
    """Two `access connect` of the same service and scope (two grants): the first one's end must
    not take `access env` away from the second."""
    from access.cli.commands.tunnel import _remove_state

    path = tmp_path / "connect-svc-payments-read.json"
    path.write_text(json.dumps({"port": 1, "grant_id": "g-2", "pid": os.getpid() + 1}))
    _remove_state(path)
    assert path.exists()
    path.write_text(json.dumps({"port": 1, "grant_id": "g-1", "pid": os.getpid()}))
    _remove_state(path)
    assert not path.exists()
