"""Signed checkpoints of the audit ledger, and verification of the whole ledger against them.

The hash chain alone catches an edited or deleted entry in the middle, but not someone who
rewrites every hash after an edit, or cuts entries off the end. A checkpoint pins
(entry count, head hash) with the broker's Ed25519 audit key: after it, such rewrites no longer
match a signature the attacker cannot make. Checkpoints live in the database and can be
exported as JSON lines (with the public key), so that a copy kept elsewhere still catches an
attacker who also deleted checkpoint rows.

The signed message is the RFC 8785 canonical JSON of
``{"type": "access-audit-checkpoint/v1", "seq", "head_hash", "at", "key_id"}``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from access.broker.audit import canonical, ledger
from access.broker.audit.actions import Action
from access.broker.clock import utc
from access.broker.errors import LedgerUnsafe
from access.broker.keys import key_id, public_pem
from access.broker.loops import Loop
from access.broker.runtime import Broker
from access.broker.store import audit as store
from access.broker.store.ledger_ddl import guard_problems, install_guards

__all__ = [
    "AuditKeys",
    "Checkpoint",
    "CheckpointLoop",
    "Problem",
    "VerifyResult",
    "audit_public_keys",
    "check_ledger",
    "entry_line",
    "export_checkpoints",
    "export_entries",
    "follow_entries",
    "load_checkpoints",
    "load_checkpoints_file",
    "refuse_unsafe",
    "restore_guards",
    "sign_checkpoint",
    "stored_checkpoints",
    "unsafe_error",
    "verify_ledger",
    "write_checkpoint",
]

log = logging.getLogger(__name__)

# The audit key that must have signed a checkpoint, or several: the current one and the older
# ones a rotation keeps (``previous_audit_key_files``), by which older checkpoints still verify.
AuditKeys = Ed25519PublicKey | Sequence[Ed25519PublicKey]


def audit_public_keys(broker: Broker) -> list[Ed25519PublicKey]:
    """The public keys of the broker's audit ring: the current one first."""
    return [key.public_key() for key in broker.audit_ring]


_TYPE = "access-audit-checkpoint/v1"
_BATCH = 1000
_VERIFY_BATCH = 10_000  # rows of (seq, at, actor, action, target, details, hashes): a few MiB
_MAX_PROBLEMS = 50


@dataclass(frozen=True)
class Checkpoint:
    seq: int
    head_hash: str
    at: datetime
    key_id: str
    signature: str  # base64 of the Ed25519 signature over ``message()``

    def message(self) -> bytes:
        body: dict[str, Any] = {
            "type": _TYPE,
            "seq": self.seq,
            "head_hash": self.head_hash,
            "at": ledger.format_time(self.at),
            "key_id": self.key_id,
        }
        data: bytes = canonical.dumps(body)
        return data

    def signed_by(self, keys: AuditKeys) -> bool:
        """Whether one of ``keys`` (the audit key, or the ring with older ones) signed this."""
        ring = (keys,) if isinstance(keys, Ed25519PublicKey) else keys
        return any(self.key_id == key_id(key) and self.signature_valid(key) for key in ring)

    def signature_valid(self, public_key: Ed25519PublicKey) -> bool:
        try:
            public_key.verify(base64.b64decode(self.signature, validate=True), self.message())
        except (InvalidSignature, ValueError):
            return False
        return True

    def to_json(self, public_key_pem: str | None = None) -> str:
        data: dict[str, Any] = {
            "seq": self.seq,
            "head_hash": self.head_hash,
            "at": ledger.format_time(self.at),
            "key_id": self.key_id,
            "signature": self.signature,
        }
        if public_key_pem is not None:
            data["public_key"] = public_key_pem
        return json.dumps(data, separators=(",", ":"))


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the ledger. ``seq`` is the first entry it concerns, when known."""

    seq: int | None
    kind: str  # changed | missing | broken_link | checkpoint_mismatch | truncated | bad_signature | ...
    message: str


@dataclass
class VerifyResult:
    entries: int = 0
    head_hash: str = ledger.GENESIS
    checkpoints_checked: int = 0
    last_checkpoint_seq: int | None = None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def unsigned_tail(self) -> int:
        """Entries after the last checkpoint: no signature covers them yet."""
        return self.entries - (self.last_checkpoint_seq or 0)

    def summary(self) -> str:
        if not self.ok:
            return self.problems[0].message
        where = f"seq {self.last_checkpoint_seq}" if self.last_checkpoint_seq is not None else "none yet"
        return f"ledger OK: {self.entries} entries, last checkpoint at {where}"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["unsigned_tail"] = self.unsigned_tail
        return data


def sign_checkpoint(key: Ed25519PrivateKey, seq: int, head_hash: str, at: datetime) -> Checkpoint:
    unsigned = Checkpoint(seq, head_hash, utc(at), key_id(key), "")
    signature = base64.b64encode(key.sign(unsigned.message())).decode()
    return Checkpoint(seq, head_hash, unsigned.at, unsigned.key_id, signature)


def _guard_messages(conn: sa.Connection) -> list[str]:
    return [
        f"{problem}: the database no longer refuses edits of the ledger "
        "(`access-broker migrate` reinstalls it)"
        for problem in guard_problems(conn)
    ]


def check_ledger(
    conn: sa.Connection, public_key: AuditKeys, anchor: tuple[int, str] | None = None
) -> list[str]:
    """What keeps the ledger from being signed now; [] when it may be.

    The append-only guards must be intact, the newest stored checkpoint must carry a valid
    signature and still match its entry, and every entry after it must hash and link (only
    that part is read: a new checkpoint vouches for no more than it adds, and an edit before
    the newest checkpoint either breaks that match or stays caught by the older checkpoints).
    ``anchor`` is the (seq, head hash) of the newest checkpoint this process saw: if it is gone,
    checkpoint rows were deleted. ``audit verify`` checks the whole ledger.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database could not be read.
    """
    problems = _guard_messages(conn)
    row = store.latest_checkpoint(conn)
    if anchor is not None and (row is None or row.seq < anchor[0]):
        problems.append(f"the checkpoint at seq {anchor[0]} is gone: checkpoint rows were deleted")
    start = (0, ledger.GENESIS)
    if row is not None:
        newest = Checkpoint(row.seq, row.head_hash, row.at, row.key_id, row.signature)
        entry = store.entries_after(conn, newest.seq - 1, 1)
        if not newest.signed_by(public_key):
            problems.append(
                f"the newest checkpoint (seq {newest.seq}) has no valid signature by the audit key"
            )
            return problems
        if not entry or entry[0].seq != newest.seq:
            problems.append(f"entry {newest.seq}, which the newest checkpoint signed, is missing")
            return problems
        if entry[0].hash != newest.head_hash or _recomputed(entry[0]) != entry[0].hash:
            problems.append(
                f"entry {newest.seq} no longer matches the newest checkpoint: the ledger was rewritten"
            )
            return problems
        start = (newest.seq, newest.head_hash)
    result = VerifyResult()
    _walk(conn, {}, result, start)
    problems.extend(problem.message for problem in result.problems)
    return problems


def unsafe_error(problems: list[str], prefix: str = "") -> LedgerUnsafe:
    return LedgerUnsafe(
        prefix + "the audit ledger is unsafe: " + "; ".join(problems),
        hint="run `access-broker audit verify`; `access-broker migrate` reinstalls missing guards; "
        "a ledger that fails verification must be investigated (restore the database from a backup)",
    )


def refuse_unsafe(broker: Broker) -> None:
    """At start: refuse to serve over a ledger ``check_ledger`` finds unsafe.

    Raises:
        LedgerUnsafe: it does; the message says what and how to restore the guards.
        Unavailable: the database could not be reached.
    """
    with broker.transaction() as conn:
        problems = check_ledger(conn, audit_public_keys(broker))
    if problems:
        raise unsafe_error(problems, "refusing to serve: ")


def restore_guards(broker: Broker, actor: str) -> list[str]:
    """Reinstall the ledger's append-only guards if any is missing or changed, recording
    ``ledger.guards_restore`` with what was found, in one transaction. Returns what was found.

    Raises:
        Unavailable: the database could not be reached.
        sqlalchemy.exc.SQLAlchemyError: the database refused (e.g. no privilege for triggers).
    """
    with broker.transaction() as conn:
        found = guard_problems(conn)
        if found:
            install_guards(conn)
            ledger.append(
                conn,
                broker.clock,
                actor=actor,
                action=Action.LEDGER_GUARDS_RESTORE,
                target="ledger",
                details={"found": found},
            )
    return found


def write_checkpoint(broker: Broker, anchor: tuple[int, str] | None = None) -> Checkpoint | None:
    """Sign the ledger's current (entry count, head hash) and store it; None when nothing is new.

    Nothing is signed over a ledger that ``check_ledger`` finds unsafe (``anchor`` as there):
    a signature must never vouch for edits it did not see made.

    Raises:
        LedgerUnsafe: the guards are gone, or the ledger since the last checkpoint fails verification.
        Unavailable: the database could not be reached.
    """
    with broker.transaction() as conn:
        head = store.chain_head(conn)
        problems = check_ledger(conn, audit_public_keys(broker), anchor)
        if problems:
            raise unsafe_error(problems)
        if head is None:
            return None
        last = store.last_checkpoint_seq(conn)
        if last is not None and last >= head[0]:
            return None
        checkpoint = sign_checkpoint(broker.audit_key, head[0], head[1], broker.clock.now())
        store.insert_checkpoint(
            conn,
            seq=checkpoint.seq,
            head_hash=checkpoint.head_hash,
            at=checkpoint.at,
            key_id=checkpoint.key_id,
            signature=checkpoint.signature,
        )
    return checkpoint


class CheckpointLoop(Loop):
    """Every ``settings.checkpoint_interval`` seconds: check the ledger, and sign its head if it moved.

    When the check fails (``check_ledger``) the loop signs nothing, logs at CRITICAL, and marks
    the ledger unsafe (``ledger.set_unsafe``): the broker then gives no new access until a later
    tick finds it safe again (after ``access-broker migrate`` has reinstalled the guards).
    """

    name = "audit checkpoints"

    def __init__(self, broker: Broker) -> None:
        super().__init__(broker, broker.settings.checkpoint_interval, max_backoff=60.0)
        self.anchor: tuple[int, str] | None = None

    async def tick(self) -> None:
        """Raises: Unavailable: the database could not be reached."""
        try:
            made = await asyncio.to_thread(write_checkpoint, self.broker, self.anchor)
        except LedgerUnsafe as exc:
            if ledger.unsafe(self.broker.engine) != exc.message:
                log.critical("%s; signing stopped, no new access is given. %s", exc.message, exc.hint)
            ledger.set_unsafe(self.broker.engine, exc.message)
            return
        if ledger.unsafe(self.broker.engine) is not None:
            log.warning("the audit ledger checks out again: signing and new access resume")
            ledger.set_unsafe(self.broker.engine, None)
        if made is not None:
            self.anchor = (made.seq, made.head_hash)


# ---------------------------------------------------------------- export and import


def stored_checkpoints(conn: sa.Connection) -> list[Checkpoint]:
    """The checkpoints in the database, by seq.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database could not be read.
    """
    rows = store.checkpoint_rows(conn)
    return [Checkpoint(r.seq, r.head_hash, r.at, r.key_id, r.signature) for r in rows]


def export_checkpoints(conn: sa.Connection, key: Ed25519PrivateKey | Ed25519PublicKey) -> Iterator[str]:
    """Every stored checkpoint as one JSON line, each carrying the public key (PEM) and key id.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database could not be read.
    """
    pem = public_pem(key)
    for checkpoint in stored_checkpoints(conn):
        yield checkpoint.to_json(pem)


def load_checkpoints(lines: Iterable[str], source: str = "checkpoints") -> list[Checkpoint]:
    """Parse exported checkpoint JSON lines (blank lines are skipped).

    The ``public_key`` in the file is informational: signatures are checked against the key
    the verifier trusts, never against one an attacker could have written into the file.

    Raises:
        ValueError: a line is not a checkpoint; the message names the line.
    """
    result = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            result.append(
                Checkpoint(
                    seq=int(data["seq"]),
                    head_hash=str(data["head_hash"]),
                    at=utc(datetime.fromisoformat(str(data["at"]).replace("Z", "+00:00"))),
                    key_id=str(data["key_id"]),
                    signature=str(data["signature"]),
                )
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{source} line {number}: not a checkpoint ({exc})") from exc
    return result


def load_checkpoints_file(path: Path) -> list[Checkpoint]:
    """Read a file written by ``export_checkpoints``.

    Raises:
        ValueError: a line is not a checkpoint.
        OSError: the file cannot be read.
    """
    with path.open(encoding="utf-8") as fh:
        return load_checkpoints(fh, str(path))


def export_entries(conn: sa.Connection, since: datetime | None = None, after: int = 0) -> Iterator[str]:
    """Ledger entries with seq > ``after`` (oldest first, read in batches) as JSON lines, each
    with its hashes.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database could not be read.
    """
    while True:
        rows = store.entries_after(conn, after, _BATCH, since)
        yield from (entry_line(row) for row in rows)
        if len(rows) < _BATCH:
            return
        after = rows[-1].seq


def follow_entries(
    engine: sa.Engine,
    after: int,
    stop: threading.Event,
    since: datetime | None = None,
    interval: float = 1.0,
) -> Iterator[str]:
    """``export_entries`` after ``after``, then each new entry as it is written, until ``stop``
    is set: the ledger is read every ``interval`` seconds, each read a short one of at most
    ``_BATCH`` rows (SQLite's write lock is never held against the broker).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database could not be read.
    """
    while not stop.is_set():
        with engine.connect() as conn:
            rows = store.entries_after(conn, after, _BATCH, since)
        for row in rows:
            yield entry_line(row)
            after = row.seq
        if len(rows) < _BATCH:
            stop.wait(interval)


def entry_line(row: Any) -> str:
    """One ledger row as the JSON line ``audit export`` prints (details parsed, with the hashes)."""
    try:
        details = json.loads(row.details)
    except ValueError:
        details = row.details
    return json.dumps(
        {
            "seq": row.seq,
            "at": ledger.format_time(row.at),
            "actor": row.actor,
            "action": row.action,
            "target": row.target,
            "details": details,
            "prev_hash": row.prev_hash,
            "hash": row.hash,
        },
        separators=(",", ":"),
    )


# ---------------------------------------------------------------- verification


def _read_batches(source: sa.Engine | sa.Connection, after: int = 0) -> Iterator[Sequence[Any]]:
    """The ledger in seq order as ``store.chain_rows`` tuples, ``_VERIFY_BATCH`` rows at a time
    (keyset pagination: memory-bounded).

    With an Engine each batch is its own short read, so a long verification never holds
    SQLite's write lock (every transaction there is BEGIN IMMEDIATE) against the broker.
    """
    while True:
        if isinstance(source, sa.Engine):
            with source.connect() as conn:
                rows = store.chain_rows(conn, after, _VERIFY_BATCH)
        else:
            rows = store.chain_rows(source, after, _VERIFY_BATCH)
        if rows:
            yield rows
        if len(rows) < _VERIFY_BATCH:
            return
        after = rows[-1][0]


def _at_text(at: Any) -> str | None:
    """``ledger.format_time`` of a ``store.chain_rows`` time, without parsing SQLite's text;
    None for a text not in the form SQLite is given (the slow path then parses it)."""
    if type(at) is str:
        if len(at) == 26 and at[10] == " ":
            return at[:10] + "T" + at[11:] + "Z"
        return None
    return ledger.format_time(at)


def _slow_hash(source: sa.Engine | sa.Connection, seq: int) -> str | None:
    """Entry ``seq``'s hash recomputed from its parsed fields (details canonicalised again):
    for an entry whose stored form did not hash right as it is."""
    if isinstance(source, sa.Engine):
        with source.connect() as conn:
            rows = store.entries_after(conn, seq - 1, 1)
    else:
        rows = store.entries_after(source, seq - 1, 1)
    return _recomputed(rows[0]) if rows and rows[0].seq == seq else None


def _recomputed(row: Any) -> str | None:
    try:
        details = json.loads(row.details)
    except ValueError:
        return None
    if not isinstance(details, dict):
        return None
    return ledger.entry_hash(
        seq=row.seq,
        at=row.at,
        actor=row.actor,
        action=row.action,
        target=row.target,
        details=details,
        prev_hash=row.prev_hash,
    )


def verify_ledger(
    source: sa.Engine | sa.Connection,
    public_key: AuditKeys,
    checkpoints: Iterable[Checkpoint] | None = None,
) -> VerifyResult:
    """Check the whole ledger: every hash, the chain, seq continuity, and every checkpoint.

    ``checkpoints`` adds checkpoints kept outside the database (``load_checkpoints``); they
    are checked together with the stored ones. Detects an edited entry (names the first bad
    seq), a deleted entry, a rewritten chain or a cut-off tail (a checkpoint whose head no
    longer matches, or that counts more entries than the ledger has), forged checkpoints, and
    missing or changed append-only guards (kind ``guard``).
    Entries after the last checkpoint are covered by the chain only (``unsigned_tail``).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database could not be read.
    """
    result = VerifyResult()
    if isinstance(source, sa.Engine):
        with source.connect() as conn:
            stored = stored_checkpoints(conn)
            guards = _guard_messages(conn)
    else:
        stored = stored_checkpoints(source)
        guards = _guard_messages(source)
    for message in guards:
        _problem(result, None, "guard", message)
    all_checkpoints = _merge(stored, list(checkpoints or ()), result)
    ring = (public_key,) if isinstance(public_key, Ed25519PublicKey) else tuple(public_key)
    wanted_id = ", ".join(key_id(key) for key in ring)
    by_seq: dict[int, list[Checkpoint]] = {}
    for checkpoint in all_checkpoints:
        if not checkpoint.signed_by(ring):
            _problem(
                result,
                checkpoint.seq,
                "bad_signature",
                f"checkpoint at seq {checkpoint.seq} has no valid signature by the audit key {wanted_id} "
                f"(key id {checkpoint.key_id}): it was forged or altered",
            )
            continue
        by_seq.setdefault(checkpoint.seq, []).append(checkpoint)
    _walk(source, by_seq, result)
    result.checkpoints_checked = sum(len(v) for v in by_seq.values())
    signed = [seq for seq in by_seq if seq <= result.entries]
    result.last_checkpoint_seq = max(signed) if signed else None
    for seq in sorted(s for s in by_seq if s > result.entries):
        _problem(
            result,
            result.entries + 1,
            "truncated",
            f"entry {result.entries + 1} is missing: a checkpoint signed {seq} entries but the ledger "
            f"has only {result.entries} (the tail was cut off)",
        )
    # The first problem in ledger order is the one to name ("the first bad entry").
    result.problems.sort(key=lambda p: (p.seq is None, p.seq or 0))
    return result


def _merge(stored: list[Checkpoint], external: list[Checkpoint], result: VerifyResult) -> list[Checkpoint]:
    seen = {(c.seq, c.head_hash, c.signature) for c in stored}
    merged = list(stored)
    for checkpoint in external:
        if (checkpoint.seq, checkpoint.head_hash, checkpoint.signature) not in seen:
            result.warnings.append(
                f"the checkpoint at seq {checkpoint.seq} from the file is not in the database "
                "(checkpoint rows may have been deleted)"
            )
            seen.add((checkpoint.seq, checkpoint.head_hash, checkpoint.signature))
            merged.append(checkpoint)
    return merged


def _problem(result: VerifyResult, seq: int | None, kind: str, message: str) -> None:
    if len(result.problems) < _MAX_PROBLEMS:
        result.problems.append(Problem(seq, kind, message))


def _walk(
    source: sa.Engine | sa.Connection,
    by_seq: dict[int, list[Checkpoint]],
    result: VerifyResult,
    start: tuple[int, str] = (0, ledger.GENESIS),
) -> None:
    """Check the entries after ``start`` (a seq and its hash, known good) against each other."""
    good_since, prev_hash = start  # good_since: the last seq confirmed by a matching checkpoint
    expected_seq = good_since + 1
    stored_hash = ledger.stored_hash
    for rows in _read_batches(source, good_since):
        for seq, at, actor, action, target, details, prev, digest in rows:
            if seq != expected_seq:
                gap = f"{expected_seq}" if seq == expected_seq + 1 else f"{expected_seq} to {seq - 1}"
                _problem(
                    result,
                    expected_seq,
                    "missing",
                    f"entry {gap} was deleted: the ledger jumps from seq {expected_seq - 1} to {seq}",
                )
            elif prev != prev_hash:
                # Either the previous entry was edited and its hash recomputed, or this one was
                # rewritten with a new prev_hash: the chain cannot tell which, so name both.
                _problem(
                    result,
                    seq - 1,
                    "broken_link",
                    f"entry {seq - 1} or {seq} was changed: entry {seq}'s prev_hash does not "
                    f"match entry {seq - 1}'s hash",
                )
            # Every entry is hashed again from its stored fields; details as stored (canonical
            # text), and only when that does not match, parsed and canonicalised again (an entry
            # written in another form) before it is called changed.
            when = _at_text(at)
            if (
                when is None or stored_hash(seq, when, actor, action, target, details, prev) != digest
            ) and _slow_hash(source, seq) != digest:
                _problem(
                    result,
                    seq,
                    "changed",
                    f"entry {seq} was changed: its contents ({action} by {actor}) do not match its hash",
                )
            if seq in by_seq:
                for checkpoint in by_seq[seq]:
                    if checkpoint.head_hash != digest:
                        _problem(
                            result,
                            good_since + 1,
                            "checkpoint_mismatch",
                            f"entries {good_since + 1} to {seq} were rewritten: the checkpoint at seq "
                            f"{seq} signed head {checkpoint.head_hash[:12]}…, the ledger has {digest[:12]}…",
                        )
                    else:
                        good_since = seq
            prev_hash = digest
            expected_seq = seq + 1
        result.entries = rows[-1][0]
        result.head_hash = rows[-1][-1]
