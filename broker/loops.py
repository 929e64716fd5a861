"""Background loops: one ``tick()`` each, which tests call directly, and one way to run them.

``Loop.run`` calls ``tick`` every ``interval`` seconds. When a tick fails (the database is down,
say) the loop backs off, doubling the wait up to ``max_backoff``, and logs one line when it
starts failing and one when it recovers, not one per tick: an outage of an hour is two lines,
not twenty thousand tracebacks. A failure that is not a ``BrokerError`` (a bug) is logged with
its traceback once, at the change of state. ``wake()`` (from any thread) runs the next tick at
once instead of after the interval: the outbox wakes on a grant's end, so that end's work (the
identity's drop) does not wait out a poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from access.broker.errors import BrokerError

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = ["Loop"]

log = logging.getLogger(__name__)


class Loop:
    """A background loop of the broker. Subclasses set ``name`` and implement ``tick``."""

    name = "loop"

    def __init__(self, broker: Broker, interval: float, *, max_backoff: float = 5.0) -> None:
        self.broker = broker
        self.interval = interval
        self.max_backoff = max(max_backoff, interval)
        self.failing = False
        self._woken: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def wake(self) -> None:
        """Tick now rather than after the wait (thread-safe; nothing before ``run`` or after it)."""
        if self._loop is not None and self._woken is not None:
            with contextlib.suppress(RuntimeError):  # the event loop has closed meanwhile
                self._loop.call_soon_threadsafe(self._woken.set)

    async def tick(self) -> None:
        """One pass of the loop's work. Raises whatever the work raised."""
        raise NotImplementedError

    def next_delay(self, delay: float) -> float:
        """The wait before the next tick: the interval, or a doubling backoff while failing."""
        return min(delay * 2, self.max_backoff) if self.failing else self.interval

    async def step(self) -> bool:
        """Run one tick, recording (and logging once) a change between failing and working.

        Returns whether the tick succeeded; never raises (except cancellation).
        """
        try:
            await self.tick()
        except asyncio.CancelledError:
            raise
        except BrokerError as exc:
            if not self.failing:
                log.warning("%s: failing, backing off: %s", self.name, exc.message)
            self.failing = True
            return False
        except Exception:
            if not self.failing:
                log.exception("%s: failing, backing off", self.name)
            self.failing = True
            return False
        if self.failing:
            log.warning("%s: working again", self.name)
        self.failing = False
        return True

    async def run(self) -> None:
        """Forever: wait (or be woken), tick, back off while ticks fail."""
        self._loop, self._woken = asyncio.get_running_loop(), asyncio.Event()
        delay = self.interval
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._woken.wait(), delay)
            self._woken.clear()
            await self.step()
            delay = self.next_delay(delay)
