"""Policy decisions seen from the real CLI against the real broker process: a role that selects
services by label issues at once, an explicit deny (by label) wins over an allow by name, a
reason pattern is refused with the pattern named, then accepted, and break-glass is had only
when asked for, flagged and listed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from access.shared.devca import DevCA
from access.shared.errors import ExitCode
from tests.e2e.conftest import make_broker_process, new_cli, running

_ECHO = "127.0.0.1:9"  # never dialled: these grants are requested, not connected


def _service(name: str, **labels: str) -> dict[str, Any]:
    return {
        "name": name,
        "kind": "tcp",
        "target": _ECHO,
        "scopes": ["read", "write"],
        "max_ttl": "1h",
        "labels": labels,
    }


POLICY: dict[str, Any] = {
    "services": [
        _service("svc-payments", team="payments", env="prod"),
        _service("svc-payments-staging", team="payments", env="staging"),
        _service("svc-search", team="search", env="prod"),
    ],
    "roles": [
        {
            "name": "payments-oncall",
            "members": {"groups": ["payments"]},
            "allow": [
                # Anything of the team may be read, at once: selected by label, not by name.
                {"labels": {"team": "payments"}, "scopes": ["read"], "max_ttl": "30m"},
                # Writes need a ticket.
                {
                    "labels": {"team": "payments"},
                    "scopes": ["write"],
                    "max_ttl": "15m",
                    "reason": {"pattern": "^(INC|CHG)-[0-9]+$"},
                },
                # Named outright, and also matched by the deny below: the deny wins.
                {"services": ["svc-search"], "scopes": ["read"]},
                # An emergency: search writes at once, only when asked as break-glass.
                {"services": ["svc-search"], "scopes": ["write"], "max_ttl": "10m", "break_glass": True},
            ],
        }
    ],
    "rules": [
        {
            "name": "no-prod-writes-for-contractors",
            "subjects": {"groups": ["contractors"]},
            "labels": {"env": "prod"},
            "scopes": ["read", "write"],
            "require": "deny",  # also beats break-glass
        }
    ],
}


def _json(result: Any) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_roles_labels_deny_and_reason_patterns(tmp_path: Path, devca: DevCA) -> None:
    proc = make_broker_process(tmp_path, devca, f"sqlite:///{tmp_path / 'broker-data' / 'broker.db'}", POLICY)
    proc.add_user("alice", "alice-password-1", "payments")
    proc.add_user("mallory", "mallory-password-1", "payments", "contractors")
    with running(proc):
        (tmp_path / "a").mkdir()
        alice = new_cli(tmp_path / "a", proc)
        assert alice.device_login("alice", "alice-password-1").returncode == 0

        # What the role gives, by label: every payments service, and search by name.
        listed = {svc["name"]: svc for svc in _json(alice.run("services", "-o", "json"))}
        assert set(listed) == {"svc-payments", "svc-payments-staging", "svc-search"}
        assert listed["svc-payments-staging"]["labels"] == {"team": "payments", "env": "staging"}

        staging = _json(
            alice.run("request", "svc-payments-staging", "--scope", "read", "--ttl", "10m", "-o", "json")
        )
        assert (staging["state"], staging["rule"]) == ("active", "payments-oncall[0]")

        # A reason pattern: refused saying the pattern and what was given, then accepted.
        refused = alice.run("request", "svc-payments", "--scope", "write", "--ttl", "5m", "--reason", "fix")
        assert refused.returncode == ExitCode.DENIED, refused.stderr
        assert "^(INC|CHG)-[0-9]+$" in refused.stderr and '"fix"' in refused.stderr
        write = _json(
            alice.run(
                "request",
                "svc-payments",
                "--scope",
                "write",
                "--ttl",
                "5m",
                "--reason",
                "INC-42",
                "-o",
                "json",
            )
        )
        assert (write["state"], write["rule"], write["reason"]) == ("active", "payments-oncall[1]", "INC-42")

        # Break-glass: not without asking for it (nor without a reason); asked for, issued at once,
        # said loudly, and listed for review.
        plain = alice.run("request", "svc-search", "--scope", "write", "--ttl", "5m", "--reason", "INC-9")
        assert plain.returncode == ExitCode.DENIED, plain.stderr
        assert "without --break-glass" not in plain.stderr
        bare = alice.run("request", "svc-search", "--scope", "write", "--ttl", "5m", "--break-glass")
        assert bare.returncode == ExitCode.USAGE and "needs a reason" in bare.stderr
        args = ("request", "svc-search", "--scope", "write", "--ttl", "5m", "--reason", "INC-9")
        glass = alice.run(*args, "--break-glass", "-o", "json")
        taken = _json(glass)
        assert (taken["state"], taken["break_glass"], taken["rule"]) == ("active", True, "payments-oncall[3]")
        assert "BREAK-GLASS" in glass.stderr and "flagged" in glass.stderr
        listed_glass = _json(alice.run("grants", "--break-glass", "-o", "json"))
        assert [g["id"] for g in listed_glass] == [taken["id"]]
        table = alice.run("grants", "--break-glass")
        assert table.returncode == 0 and taken["id"] in table.stdout and "INC-9" in table.stdout

        # The explicit deny (by label) beats the role's allow (by label and by name).
        (tmp_path / "m").mkdir()
        mallory = new_cli(tmp_path / "m", proc)
        assert mallory.device_login("mallory", "mallory-password-1").returncode == 0
        assert {svc["name"] for svc in _json(mallory.run("services", "-o", "json"))} == {
            "svc-payments-staging"
        }
        emergency = mallory.run(
            "request", "svc-search", "--scope", "write", "--ttl", "5m", "-r", "x", "--break-glass"
        )
        assert (
            emergency.returncode == ExitCode.DENIED and "no-prod-writes-for-contractors" in emergency.stderr
        )
        for service in ("svc-payments", "svc-search"):
            denied = mallory.run("request", service, "--scope", "read", "--ttl", "5m", "--reason", "INC-1")
            assert denied.returncode == ExitCode.DENIED, denied.stderr
            assert "denied by rule no-prod-writes-for-contractors" in denied.stderr
        assert _json(mallory.run("grants", "-o", "json")) == []
