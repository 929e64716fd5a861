"""Every time in ``access ... -o json`` is ISO-8601 in UTC with ``Z`` (issue 9, "Readable output")."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.cli.conftest import LiveBroker


def _times(value: Any, key: str = "") -> list[str]:
    if isinstance(value, dict):
        return [t for k, v in value.items() for t in _times(v, k)]
    if isinstance(value, list):
        return [t for item in value for t in _times(item, key)]
    return [value] if isinstance(value, str) and (key == "at" or key.endswith("_at")) else []


def test_every_time_in_json_output_is_iso_8601_with_z(signed_in: LiveBroker) -> None:
    grant = json.loads(
        signed_in.invoke("request", "svc-payments", "-s", "read", "-t", "10m", "-o", "json").stdout
    )
    signed_in.invoke("revoke", grant["id"])
    seen: list[str] = []
    for args in (["whoami"], ["grants", "--all"], ["audit"], ["revoke", grant["id"]]):
        result = signed_in.invoke(*args, "-o", "json")
        assert result.exit_code == 0, result.stderr
        seen += _times(json.loads(result.stdout))
    assert len(seen) >= 6
    iso_z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
    assert all(iso_z.match(t) for t in seen), seen
