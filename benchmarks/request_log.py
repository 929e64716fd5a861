"""What the request middleware (``observe.requests.RequestLog``) costs per request: microseconds
for a bare ASGI answer, and for the same answer through the middleware (request id, header,
two metrics, the log line: once at ``warning``, where it is skipped, once at ``info`` into a
JSON handler writing to /dev/null), side by side, as ratios.

    python benchmarks/request_log.py [--requests 20000] [--rounds 3]

No sockets and no FastAPI routing: the middleware's own share, which the rest of a request
(routing, validation, the database) adds to.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this worktree, not an installed access

from access.broker.observe.logs import JsonFormatter
from access.broker.observe.metrics import metrics_for
from access.broker.observe.requests import RequestLog
from access.broker.policy import policy_from_data
from access.broker.runtime import Broker
from access.broker.settings import Settings

_START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}
_BODY = {"type": "http.response.body", "body": b"ok"}


async def bare(scope: Any, receive: Any, send: Any) -> None:
    await send(_START)
    await send(_BODY)


async def _sink(_message: Any) -> None:
    return None


async def _receive() -> Any:
    return {"type": "http.request", "body": b""}


def _scope() -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": "/healthz", "headers": [(b"host", b"broker")]}


async def per_request_us(app: Any, count: int) -> float:
    started = time.perf_counter()
    for _ in range(count):
        await app(_scope(), _receive, _sink)
    return (time.perf_counter() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(data_dir=Path(scratch), database_url=f"sqlite:///{scratch}/broker.db")
        broker = Broker.from_settings(settings, policy=policy_from_data({}))
        wrapped = RequestLog(bare, metrics_for(broker))
        requests_log = logging.getLogger("access.broker.requests")
        handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 (closed at exit)
        handler.setFormatter(JsonFormatter())
        requests_log.addHandler(handler)
        requests_log.propagate = False
        results: dict[str, float] = {}
        for name, app, level in (
            ("bare ASGI answer", bare, logging.WARNING),
            ("RequestLog, log at warning", wrapped, logging.WARNING),
            ("RequestLog, log at info (JSON)", wrapped, logging.INFO),
        ):
            requests_log.setLevel(level)
            results[name] = min(asyncio.run(per_request_us(app, args.requests)) for _ in range(args.rounds))
        broker.engine.dispose()
    base = results["bare ASGI answer"]
    print(f"{'':34} {'us/request':>10} {'vs bare':>8} {'added us':>9}")
    for name, value in results.items():
        print(f"{name:34} {value:10.2f} {value / base:7.1f}x {value - base:9.2f}")


if __name__ == "__main__":
    main()
