"""How fast the audit ledger verifies and answers a search, on a large ledger.

    python benchmarks/ledger.py [--entries 1000000] [--services 50] [--days 30] [--keep DIR]

Builds, in a temporary data directory (or ``--keep DIR``, reused when it already holds a ledger of
that size), a SQLite ledger of ``--entries`` valid chained entries: each hash made by the ledger's
own code (``audit.ledger._digest`` over the canonical details, as ``append`` does), inserted in
batches, with a signed checkpoint every 100,000 entries and at the head. Then, side by side:

- ``access-broker audit verify`` run as users run it (a subprocess; wall time, entries/s);
- the query behind ``access audit --service S --since 1h`` (``store.audit.search``; the entries
  are spread over ``--days``, so an hour holds a few hundred of them), and with ``--actor``
  and ``--grant``; best of five, milliseconds;
- ``entries_after`` from near the head (what ``--follow`` asks every poll).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this worktree, not an installed access

import sqlalchemy as sa

from access.broker.audit import canonical, ledger
from access.broker.audit.checkpoints import sign_checkpoint
from access.broker.clock import SystemClock
from access.broker.policy import policy_from_data
from access.broker.runtime import Broker
from access.broker.settings import Settings
from access.broker.store import audit as store
from access.broker.store.tables import audit_log, grants, principals

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
_BATCH = 20_000
_CHECKPOINT_EVERY = 100_000
_ACTIONS = ("grant.request", "grant.issue", "connection.open", "connection.close", "grant.expire")


def make_broker(data_dir: Path) -> Broker:
    settings = Settings(data_dir=data_dir, database_url=f"sqlite:///{data_dir / 'broker.db'}")
    return Broker.from_settings(settings, clock=SystemClock(), policy=policy_from_data({}))


def build(broker: Broker, entries: int, services: int, days: int) -> float:
    """Append ``entries`` chained entries ending now; returns seconds taken."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    step = timedelta(days=days) / entries
    prev = ledger.GENESIS
    rows: list[dict[str, object]] = []
    grant_rows: list[dict[str, object]] = []
    with broker.engine.begin() as conn:
        head = store.chain_head(conn)
        if head is None:
            conn.execute(
                principals.insert().values(id="p-bench", name="bench", kind="user", groups=[], created_at=now)
            )
    if head is not None:
        raise SystemExit(f"{broker.settings.data_dir} already holds a ledger: give an empty --keep")
    for seq in range(1, entries + 1):
        at = now - step * (entries - seq)
        # Five entries a grant, all about the grant's one service; the grants table holds each
        # grant, as a broker's does (``--grant G`` looks its service up there).
        service = f"svc-{(seq // 5) % services}"
        grant = f"g-{seq // 5:016x}"
        if seq % 5 == 0 or seq == 1:
            grant_rows.append(
                {
                    "id": grant,
                    "principal_id": "p-bench",
                    "subject": "bench",
                    "service": service,
                    "kind": "postgres",
                    "scope": "read",
                    "reason": "bench",
                    "state": "expired",
                    "created_at": at,
                    "expires_at": at + timedelta(minutes=30),
                }
            )
        action = _ACTIONS[seq % len(_ACTIONS)]
        actor = f"user{seq % 200}"
        target = f"service:{service}/{grant}"
        details = {"scope": "read", "ttl": 1800, "reason": f"INC-{seq % 9973}", "client": "cli"}
        text = canonical.dumps(details)
        digest = ledger._digest(seq, ledger.format_time(at), actor, action, target, text, prev)
        rows.append(
            {
                "seq": seq,
                "at": at,
                "actor": actor,
                "action": action,
                "target": target,
                "details": text.decode(),
                "prev_hash": prev,
                "hash": digest,
            }
        )
        prev = digest
        if len(rows) == _BATCH or seq == entries:
            with broker.engine.begin() as conn:
                conn.execute(audit_log.insert(), rows)
                if grant_rows:
                    conn.execute(grants.insert(), grant_rows)
                if seq % _CHECKPOINT_EVERY == 0 or seq == entries:
                    made = sign_checkpoint(broker.audit_key, seq, digest, at)
                    store.insert_checkpoint(
                        conn,
                        seq=made.seq,
                        head_hash=made.head_hash,
                        at=made.at,
                        key_id=made.key_id,
                        signature=made.signature,
                    )
            rows = []
            grant_rows = []
    return time.perf_counter() - started


def time_verify(data_dir: Path, tree: Path) -> tuple[float, float, dict[str, object]]:
    """``access-broker audit verify`` with the code of ``tree``: wall seconds, CPU seconds, result."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(
        [str(BIN / "access-broker"), "audit", "verify", "-o", "json", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    seconds = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    if done.returncode != 0:
        raise SystemExit(
            f"audit verify failed ({done.returncode}): {done.stdout[-2000:]} {done.stderr[-2000:]}"
        )
    return seconds, cpu, json.loads(done.stdout)


def copy_for(tree: Path, data_dir: Path, into: Path) -> Path:
    """A copy of ``data_dir`` whose schema is migrated down to ``tree``'s newest revision (an
    older tree refuses a database that names a revision it does not know)."""
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    shutil.copytree(data_dir, into)
    head = ScriptDirectory(str(tree / "broker" / "store" / "migrations")).get_current_head()
    engine = sa.create_engine(f"sqlite:///{into / 'broker.db'}")
    cfg = Config()
    cfg.set_main_option("script_location", "access.broker.store:migrations")
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, head or "base")
    engine.dispose()
    return into


def best_ms(broker: Broker, **filters: object) -> tuple[float, int]:
    times, found = [], 0
    for _ in range(5):
        with broker.engine.connect() as conn:
            started = time.perf_counter()
            found = len(store.search(conn, limit=100, **filters))  # type: ignore[arg-type]
            times.append(time.perf_counter() - started)
    return min(times) * 1000, found


def follow_ms(broker: Broker, after: int) -> float:
    times = []
    for _ in range(5):
        with broker.engine.connect() as conn:
            started = time.perf_counter()
            store.entries_after(conn, after, 1000)
            times.append(time.perf_counter() - started)
    return min(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--services", type=int, default=50)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--keep", type=Path, help="build the ledger here (reused if it is already there)")
    parser.add_argument(
        "--compare",
        type=Path,
        help="also time audit verify with the code of this tree (e.g. `git worktree add` of main)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.keep or Path(tmp)
        data_dir.mkdir(parents=True, exist_ok=True)
        broker = make_broker(data_dir)
        with broker.engine.connect() as conn:
            head = store.chain_head(conn)
        if head is None:
            built = build(broker, args.entries, args.services, args.days)
            print(f"built {args.entries:,} entries in {built:.1f} s", file=sys.stderr)
        elif head[0] != args.entries:
            raise SystemExit(f"{data_dir} holds {head[0]} entries, not {args.entries}")
        print(f"ledger: {args.entries:,} entries over {args.days} days, {args.services} services (SQLite)")
        trees = [("this tree", ROOT)] + ([("--compare", args.compare.resolve())] if args.compare else [])
        rates = []
        for label, tree in trees:
            where = data_dir if tree == ROOT else copy_for(tree, data_dir, Path(tmp) / "compare")
            seconds, cpu, result = time_verify(where, tree)
            if not result["ok"] or result["entries"] != args.entries:
                raise SystemExit(f"verify did not pass over the whole ledger: {result}")
            rates.append(args.entries / seconds)
            print(
                f"audit verify, {label:<10} {seconds:7.2f} s wall {cpu:7.2f} s CPU  "
                f"{args.entries / seconds:>9,.0f} entries/s wall {args.entries / cpu:>9,.0f} per CPU s  "
                f"({args.entries / seconds / 100_000:.2f}x the 100,000/s goal)"
            )
        if len(rates) == 2:
            print(f"audit verify: this tree {rates[0] / rates[1]:.2f}x --compare (wall)")
        now = datetime.now(UTC)
        hour = now - timedelta(hours=1)
        for label, filters in (
            ("search --service S --since 1h", {"service": "svc-7", "actor": None, "start": hour}),
            ("search --service S (newest 100)", {"service": "svc-7", "actor": None, "start": None}),
            ("search --actor A --since 1h", {"service": None, "actor": "user7", "start": hour}),
            (
                "search --grant G",
                {
                    "service": None,
                    "actor": None,
                    "start": None,
                    "grant": f"g-{(args.entries // 2) // 5:016x}",
                },
            ),
            ("search --since 1h (no filter)", {"service": None, "actor": None, "start": hour}),
        ):
            ms, found = best_ms(broker, **filters)
            print(f"{label:<35}{ms:8.2f} ms  ({found} entries)")
        print(f"{'follow: entries_after(head - 10)':<35}{follow_ms(broker, args.entries - 10):8.2f} ms")
        broker.engine.dispose()


if __name__ == "__main__":
    main()
