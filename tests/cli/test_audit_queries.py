"""``access audit --grant G [--queries]`` against the in-process broker: a grant's entries, and the
statements its connections relayed, escaped and readable at 80 columns, exact in JSON."""

from __future__ import annotations

import json

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.audit.statements import statement_log_for
from access.broker.wire.base import Statement
from access.cli.errors import ExitCode
from tests.cli.conftest import BrokerApp, LiveBroker

HOSTILE = "SELECT 1 \x1b[2J\u202e-- gotcha\nFROM payments"


def _live(broker_app: BrokerApp) -> tuple[LiveBroker, str, str]:
    live = broker_app(users={"alice": ["sre"], "bob": ["ci"]})
    live.sign_in("alice")
    result = live.invoke("request", "svc-payments", "--scope", "read", "--reason", "INC-7", "-o", "json")
    assert result.exit_code == 0, result.stderr
    mine = json.loads(result.stdout)["id"]
    other = "g-00000000000000ff"  # another grant's statements stay out of the view of mine
    log = statement_log_for(live.broker)
    sent = [
        Statement("query", "SELECT count(*) FROM payments WHERE created_at > now() - interval '1 day'"),
        Statement("parse", "SELECT * FROM payments WHERE id = $1", "s1"),
        Statement("execute", "SELECT * FROM payments WHERE id = $1", "s1"),
        Statement("query", HOSTILE),
    ]
    for connection, grant in (("c-1111111111111111", mine), ("c-2222222222222222", other)):
        assert log.add(
            connection_id=connection, grant_id=grant, service="svc-payments", actor="alice", statements=sent
        )
    log.flush()
    return live, mine, other


def test_queries_shows_a_grants_statements_escaped_in_80_columns(broker_app: BrokerApp) -> None:
    live, mine, _ = _live(broker_app)
    result = live.invoke("audit", "--grant", mine, "--queries", env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    # At 80 columns the statement goes on an indented line under its row (render.layout).
    assert lines[0].split() == ["TIME", "CONNECTION", "KIND"]
    assert "    SELECT * FROM payments WHERE id = $1" in lines
    assert all(len(line) <= 80 for line in lines), result.stdout
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert "\\x1b[2J" in result.stdout and "\\u202e" in result.stdout
    assert "c-1111111111111111" in result.stdout and "c-2222222222222222" not in result.stdout
    assert "parse s1" in result.stdout
    assert dict(live.sent("GET", "/v1/audit")[-1].url.params) == {
        "grant": mine,
        "action": "connection.statements",
        "limit": "100",
    }

    exact = live.invoke("audit", "--grant", mine, "--queries", "-o", "json")
    rows = json.loads(exact.stdout)
    assert [(r["n"], r["kind"], r["name"]) for r in rows] == [
        (0, "query", None),
        (1, "parse", "s1"),
        (2, "execute", "s1"),
        (3, "query", None),
    ]
    assert rows[3]["text"] == HOSTILE and {r["grant"] for r in rows} == {mine}
    assert rows[0]["at"] == "2030-01-01T00:00:00Z"  # the broker's (fake) clock, ISO-8601 with Z
    assert {r["connection"] for r in rows} == {"c-1111111111111111"}

    newest = json.loads(live.invoke("audit", "--grant", mine, "--queries", "-n", "2", "-o", "json").stdout)
    assert [r["n"] for r in newest] == [2, 3]


def test_grant_filter_lists_its_entries_with_batches_summarised(broker_app: BrokerApp) -> None:
    live, mine, _ = _live(broker_app)
    result = live.invoke("audit", "--grant", mine, "-o", "json")
    assert result.exit_code == 0, result.stderr
    entries = json.loads(result.stdout)
    assert [e["action"] for e in entries] == ["grant.request", "grant.issue", "connection.statements"]
    assert all(e["target"].endswith("/" + mine) for e in entries)
    text = live.invoke("audit", "--grant", mine).stdout
    assert "connection.statements" in text and "count=4" in text
    assert "SELECT" not in text  # the rows themselves are for --queries


def test_queries_need_audit_permission_and_a_good_grant_id(broker_app: BrokerApp) -> None:
    live, mine, _ = _live(broker_app)
    bad = live.invoke("audit", "--grant", "not-a-grant", "--queries")
    assert bad.exit_code != 0 and "bad grant id" in bad.stderr
    live.sign_in("bob")  # ci is not an audit reader
    denied = live.invoke("audit", "--grant", mine, "--queries")
    assert denied.exit_code == ExitCode.DENIED, denied.stderr


def test_a_batch_written_twice_shows_each_statement_once(broker_app: BrokerApp) -> None:
    """A retry after a COMMIT that timed out (and committed) writes the same rows again."""
    live, mine, _ = _live(broker_app)
    [batch] = json.loads(live.invoke("audit", "--grant", mine, "-o", "json").stdout)[-1:]
    ledger.record(
        live.broker,
        actor=batch["actor"],
        action=Action.CONNECTION_STATEMENTS,
        target=batch["target"],
        details=batch["details"],
    )
    rows = json.loads(live.invoke("audit", "--grant", mine, "--queries", "-o", "json").stdout)
    assert [r["n"] for r in rows] == [0, 1, 2, 3]
