"""Background loops: a failing tick backs off and logs once per change of state, not per tick."""

from __future__ import annotations

import asyncio
import logging

import pytest

from access.broker.errors import Unavailable
from access.broker.loops import Loop
from access.broker.runtime import Broker


class Flaky(Loop):
    name = "flaky"

    def __init__(self, broker: Broker, outcomes: list[Exception | None]) -> None:
        super().__init__(broker, 0.25, max_backoff=2.0)
        self.outcomes = outcomes

    async def tick(self) -> None:
        outcome = self.outcomes.pop(0)
        if outcome is not None:
            raise outcome


def test_an_outage_is_two_lines_and_a_backoff(broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    down = Unavailable("the broker's database is unavailable")
    loop = Flaky(broker, [down, down, down, down, down, None, None])
    caplog.set_level(logging.WARNING, logger="access.broker.loops")
    delays, delay = [], loop.interval

    async def run() -> list[bool]:
        nonlocal delay
        results = []
        for _ in range(7):
            results.append(await loop.step())
            delay = loop.next_delay(delay)
            delays.append(delay)
        return results

    assert asyncio.run(run()) == [False] * 5 + [True, True]
    assert delays == [0.5, 1.0, 2.0, 2.0, 2.0, 0.25, 0.25]
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "flaky: failing, backing off: the broker's database is unavailable",
        "flaky: working again",
    ]


def test_a_bug_logs_its_traceback_once(broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    loop = Flaky(broker, [ValueError("boom"), ValueError("boom"), None])
    caplog.set_level(logging.WARNING, logger="access.broker.loops")

    async def run() -> None:
        for _ in range(3):
            await loop.step()

    asyncio.run(run())
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1
    exc_info = tracebacks[0].exc_info
    assert exc_info is not None
    assert str(exc_info[1]) == "boom"
    assert caplog.records[-1].getMessage() == "flaky: working again"
