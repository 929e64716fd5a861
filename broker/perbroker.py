"""One object per broker, made on first use and gone with the broker: ``PerBroker``.

State that lives in one broker process and belongs to one ``Broker`` (its live tunnels, the
per-user limits, the close entries waiting for the database, the statement log, the PostgreSQL
cancel keys) hangs off the broker object this way, not off module globals, so several brokers
can live in one process (the tests run many).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

if TYPE_CHECKING:
    from access.broker.runtime import Broker

__all__ = ["PerBroker"]

T = TypeVar("T")


class PerBroker(Generic[T]):
    """``PerBroker(make)(broker)``: the broker's object, made by ``make(broker)`` the first time."""

    __slots__ = ("_made", "_make")

    def __init__(self, make: Callable[[Broker], T]) -> None:
        self._make = make
        self._made: dict[int, T] = {}

    def __call__(self, broker: Broker) -> T:
        found = self._made.get(id(broker))
        if found is None:
            found = self._made[id(broker)] = self._make(broker)
            weakref.finalize(broker, self._made.pop, id(broker), None)
        return found
