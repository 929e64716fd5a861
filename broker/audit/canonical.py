"""RFC 8785 (JCS) canonical JSON: the bytes the ledger hashes, fast for what the ledger writes.

The rfc8785 package is pure Python and costs per item (about 5 µs per statement of a
``connection.statements`` batch, on the statement log's flush thread, which competes with the
tunnel's event loop for the GIL). For values made only of dicts with ASCII string keys, lists,
strings without lone surrogates, booleans, None and integers within ±(2**53 - 1), the standard
library's C encoder (sorted keys, no spaces, no ASCII escaping) writes the very same bytes:
RFC 8785 escapes exactly ``"``, ``\\`` and the controls below U+0020 (``\\b \\f \\n \\r \\t``
short, the others as lowercase ``\\u00xx``), as ``json.dumps`` does; it sorts keys by UTF-16 code
units, the order of code points for ASCII keys; and it writes such integers as their digits.
Anything else (a float, a non-ASCII key, a tuple, a subclass such as an enum, a lone surrogate, a
larger integer) goes to rfc8785 itself. ``tests/broker/audit/test_canonical.py`` checks that both
give the same bytes, and raise alike, over a corpus of edge cases and random values.
"""

from __future__ import annotations

import json
from typing import Any

import rfc8785

__all__ = ["Plain", "dumps"]

_LIMIT = 2**53 - 1
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), sort_keys=True, allow_nan=False).encode


class Plain(list[Any]):
    """A list its maker vouches for: only ints within ±(2**53 - 1), strings without lone
    surrogates, and lists of those (``_plain`` does not look inside). The statement log's
    batches are made so (``audit.statements._compact``): checking each of their items again
    would cost as much as encoding them."""

    __slots__ = ()


def dumps(value: Any) -> bytes:
    """The RFC 8785 canonical JSON of ``value``, as UTF-8.

    Raises:
        rfc8785.CanonicalizationError: ``value`` has no canonical form (as rfc8785.dumps).
    """
    if _plain(value):
        return _encode(value).encode("utf-8")
    return rfc8785.dumps(value)


def _plain(value: Any) -> bool:
    """Whether ``value`` holds only what the C encoder writes exactly as RFC 8785 does."""
    stack = [value]
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str:
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate
                    return False
        elif kind is list:
            extend(item)
        elif kind is Plain:
            continue
        elif kind is dict:
            for key, inner in item.items():
                if type(key) is not str or not key.isascii():
                    return False
                push(inner)
        elif kind is int:
            if not -_LIMIT <= item <= _LIMIT:
                return False
        elif item is None or kind is bool:
            continue
        else:
            return False
    return True
