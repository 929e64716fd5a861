"""The audit sink against a real receiver on loopback: NDJSON batches in seq order, the cursor in
the database moved only after a 2xx, a refusal or a dead receiver retried with the same entries
(none dropped, none skipped), the token read from its file and never in an error."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from access.broker.audit import ledger
from access.broker.audit.actions import Action
from access.broker.audit.sink import SINK, AuditSinkLoop, SinkFailed, ship
from access.broker.runtime import Broker
from access.broker.store import audit as store

TOKEN = "sink-token-0123456789abcdef"


class Receiver:
    """An HTTP server on loopback answering each POST with the next of ``answers`` (then 200)."""

    def __init__(self, answers: list[int]) -> None:
        self.answers = answers
        self.posts: list[tuple[dict[str, str], list[dict[str, Any]]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = owner.answers.pop(0) if owner.answers else 200
                owner.posts.append(
                    (dict(self.headers), [json.loads(line) for line in body.decode().splitlines()])
                )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"


@contextmanager
def running(answers: list[int]) -> Iterator[Receiver]:
    receiver = Receiver(answers)
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "sink.token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


def write(broker: Broker, n: int) -> list[int]:
    return [
        ledger.record(broker, actor="alice", action=Action.LOGOUT, target=f"thing:{i}").seq for i in range(n)
    ]


def cursor(broker: Broker) -> int:
    with broker.transaction() as conn:
        return store.sink_cursor(conn, SINK)


def test_entries_arrive_in_order_once_each_after_the_receiver_recovers(
    make_broker: Callable[..., Broker], db_url: str, token_file: Path
) -> None:
    with running([503, 500]) as receiver:
        broker = make_broker(
            db_url=db_url, audit_sink_url=receiver.url, audit_sink_token_file=token_file, audit_sink_batch=3
        )
        seqs = write(broker, 5)
        for _ in range(2):  # refused twice: nothing moves, the same entries go again
            with pytest.raises(SinkFailed, match="answered 50"):
                ship(broker)
            assert cursor(broker) == 0
        assert ship(broker) == 3  # a full batch
        assert ship(broker) == 2
        assert ship(broker) == 0  # nothing new
        assert cursor(broker) == seqs[-1]
        more = write(broker, 2)
        assert ship(broker) == 2

    tried = [[e["seq"] for e in entries] for _, entries in receiver.posts]
    assert tried == [seqs[:3], seqs[:3], seqs[:3], seqs[3:], more]
    delivered = [seq for batch in tried[2:] for seq in batch]
    assert delivered == [*seqs, *more]  # each once, in order, after the failures
    headers, entries = receiver.posts[-1]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["Content-Type"] == "application/x-ndjson"
    assert {"seq", "at", "actor", "action", "target", "details", "prev_hash", "hash"} == set(entries[0])


def test_a_dead_receiver_moves_nothing_and_names_no_url(
    make_broker: Callable[..., Broker], token_file: Path
) -> None:
    with running([]) as receiver:
        url = receiver.url
    broker = make_broker(audit_sink_url=url, audit_sink_token_file=token_file)
    write(broker, 2)
    with pytest.raises(SinkFailed) as failed:
        ship(broker)
    assert url not in failed.value.message and TOKEN not in failed.value.message
    assert cursor(broker) == 0


def test_the_cursor_is_kept_in_the_database(
    make_broker: Callable[..., Broker], db_url: str, token_file: Path
) -> None:
    with running([]) as receiver:
        first = make_broker(db_url=db_url, audit_sink_url=receiver.url, audit_sink_token_file=token_file)
        seqs = write(first, 2)
        assert ship(first) == 2
        # Another broker on the same database (a restart, a replica) goes on from the cursor.
        again = make_broker(
            db_url=first.settings.database_url,
            audit_sink_url=receiver.url,
            audit_sink_token_file=token_file,
        )
        later = write(again, 1)
        assert ship(again) == 1
    assert [[e["seq"] for e in entries] for _, entries in receiver.posts] == [seqs, later]


def test_a_token_file_open_to_others_is_refused(make_broker: Callable[..., Broker], token_file: Path) -> None:
    token_file.chmod(0o644)
    with running([]) as receiver:
        broker = make_broker(audit_sink_url=receiver.url, audit_sink_token_file=token_file)
        write(broker, 1)
        with pytest.raises(SinkFailed, match="chmod 600"):
            ship(broker)
    assert receiver.posts == []


@pytest.mark.anyio
async def test_the_loop_ships_whole_backlogs_in_one_tick(
    make_broker: Callable[..., Broker], token_file: Path
) -> None:
    with running([]) as receiver:
        broker = make_broker(
            audit_sink_url=receiver.url, audit_sink_token_file=token_file, audit_sink_batch=2
        )
        seqs = write(broker, 5)
        await AuditSinkLoop(broker).tick()
    assert [e["seq"] for _, entries in receiver.posts for e in entries] == seqs


def test_a_sink_url_must_be_https_or_loopback(make_broker: Callable[..., Broker]) -> None:
    with pytest.raises(ValueError, match="audit sink"):
        make_broker(audit_sink_url="http://example.com/ingest")
