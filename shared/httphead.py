"""HTTP/1.1 message heads, sans-I/O: the tunnel's upgrade request (broker) and its answer (CLI).

Bytes in, values out; no socket. :func:`split_head` finds the end of a head in what has arrived so
far and enforces a ceiling, so a peer cannot make us buffer without bound while we wait for
``\\r\\n\\r\\n``. The parsers are deliberately lenient about what they do not need (a missing
reason phrase, stray lines without a colon): each caller checks the fields it relies on.
Header names are lower-cased; a repeated header keeps its last value.
"""

from __future__ import annotations

from dataclasses import dataclass

from access.shared.errors import SharedError

__all__ = [
    "HeadError",
    "RequestHead",
    "ResponseHead",
    "parse_request_head",
    "parse_response_head",
    "split_head",
]

_END = b"\r\n\r\n"


class HeadError(SharedError, ValueError):
    """The head is larger than the ceiling allows."""


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: str
    target: str  # as sent: path and query (or an absolute URL)
    headers: dict[str, str]


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int  # 0 when the status line has no number
    headers: dict[str, str]


def split_head(buffer: bytes, limit: int) -> tuple[bytes, bytes] | None:
    """``(head, rest)`` once ``buffer`` holds a whole head (without its blank line); None until then.

    Raises:
        HeadError: the head is, or can only become, longer than ``limit`` bytes.
    """
    end = buffer.find(_END)
    if end < 0:
        if len(buffer) > limit:
            raise HeadError(f"the head is over {limit} bytes")
        return None
    if end > limit:
        raise HeadError(f"the head is over {limit} bytes")
    return buffer[:end], buffer[end + len(_END) :]


def _headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return headers


def parse_request_head(head: bytes) -> RequestHead:
    """``GET /path?q HTTP/1.1`` and its headers (``head`` without the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    method, _, rest = lines[0].partition(" ")
    return RequestHead(method=method, target=rest.rpartition(" ")[0], headers=_headers(lines[1:]))


def parse_response_head(head: bytes) -> ResponseHead:
    """``HTTP/1.1 101 Switching Protocols`` and its headers (``head`` without the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        status = 0
    return ResponseHead(status=status, headers=_headers(lines[1:]))
