"""The tunnel's channel messages (access.shared.muxframe): pure bytes in, messages out."""

from __future__ import annotations

import json
import random

import pytest

from access.shared.muxframe import (
    CLOSE,
    DATA,
    HEADER_SIZE,
    MAX_CONTROL,
    OPEN,
    OPEN_FAIL,
    OPEN_OK,
    WINDOW,
    MuxParser,
    header,
)
from access.shared.wsframe import CLOSE_PROTOCOL, ProtocolError


def _stream() -> tuple[bytes, list[tuple[int, int, int, bytes]]]:
    """A stream of every message type and what a parser must make of it (DATA joined per channel)."""
    rng = random.Random(7)
    big = rng.randbytes(70_000)
    error = json.dumps({"error": {"code": "target_unreachable", "message": "no"}}).encode()
    messages = [
        (OPEN, 1, 0, b""),
        (OPEN_OK, 1, 0, b""),
        (DATA, 1, 5, b"hello"),
        (DATA, 2, len(big), big),
        (WINDOW, 1, 524_288, b""),
        (DATA, 1, 0, b""),
        (OPEN_FAIL, 3, len(error), error),
        (CLOSE, 1, 6, b"bye \xc3\xa9"),
        (CLOSE, 2, 0, b""),
    ]
    wire = b"".join(header(kind, channel, value) + payload for kind, channel, value, payload in messages)
    return wire, messages


def _parse(parser: MuxParser, pieces: list[bytes]) -> list[tuple[int, int, int, bytes]]:
    """Parse ``pieces``; join consecutive DATA pieces of one channel back into messages."""
    out: list[tuple[int, int, int, bytes]] = []
    open_data: dict[int, bytearray] = {}
    for piece in pieces:
        for kind, channel, value, payload in parser.feed(piece):
            if kind == DATA:
                assert value == len(payload)
                open_data.setdefault(channel, bytearray()).extend(payload)
                continue
            out.append((kind, channel, value, payload))
    return out + [(DATA, ch, len(data), bytes(data)) for ch, data in open_data.items()]


def test_every_split_point_gives_the_same_messages() -> None:
    wire, messages = _stream()
    expected = _parse(MuxParser(), [wire])
    assert sorted((m[0], m[1], m[3]) for m in expected) == sorted(
        (kind, ch, payload) for kind, ch, _v, payload in _joined(messages)
    )
    # Cut the stream in two at every byte near a header (and a sample elsewhere).
    points = sorted({*range(0, 200), *range(len(wire) - 200, len(wire) + 1), *range(0, len(wire), 997)})
    for cut in points:
        assert _parse(MuxParser(), [wire[:cut], wire[cut:]]) == expected, cut


def test_byte_by_byte() -> None:
    small = header(OPEN_OK, 1, 0) + header(DATA, 1, 3) + b"abc" + header(CLOSE, 1, 2) + b"ok"
    small += header(DATA, 2, 0) + header(WINDOW, 2, 10)
    whole = _parse(MuxParser(), [small])
    assert _parse(MuxParser(), [small[i : i + 1] for i in range(len(small))]) == whole


def _joined(messages: list[tuple[int, int, int, bytes]]) -> list[tuple[int, int, int, bytes]]:
    data: dict[int, bytes] = {}
    rest = []
    for kind, ch, value, payload in messages:
        if kind == DATA:
            data[ch] = data.get(ch, b"") + payload
        else:
            rest.append((kind, ch, value, payload))
    return rest + [(DATA, ch, len(d), d) for ch, d in data.items()]


def test_data_is_handed_on_as_it_arrives_not_reassembled() -> None:
    parser = MuxParser()
    payload = bytes(range(256)) * 400
    wire = header(DATA, 9, len(payload)) + payload
    first = parser.feed(wire[:1000])
    assert first == [(DATA, 9, 1000 - HEADER_SIZE, payload[: 1000 - HEADER_SIZE])]
    second = parser.feed(wire[1000:])
    assert second == [(DATA, 9, len(payload) - (1000 - HEADER_SIZE), payload[1000 - HEADER_SIZE :])]
    assert parser.between_messages()


def test_window_value_is_credit_not_a_payload_length() -> None:
    parser = MuxParser()
    assert parser.feed(header(WINDOW, 4, 2**31) + header(OPEN_OK, 4, 0)) == [
        (WINDOW, 4, 2**31, b""),
        (OPEN_OK, 4, 0, b""),
    ]


@pytest.mark.parametrize(
    ("wire", "text"),
    [
        (header(0, 1, 0), "unknown tunnel message type 0"),
        (header(77, 1, 0), "unknown tunnel message type 77"),
        (header(CLOSE, 1, MAX_CONTROL + 1), "CLOSE payload over"),
        (header(OPEN_FAIL, 1, 1 << 30), "OPEN_FAIL payload over"),
        (header(DATA, 1, 64 * 1024 * 1024), "over the"),
    ],
)
def test_bad_messages_are_protocol_errors(wire: bytes, text: str) -> None:
    with pytest.raises(ProtocolError) as err:
        MuxParser().feed(wire)
    assert err.value.code == CLOSE_PROTOCOL
    assert text in err.value.reason


def test_messages_are_counted_for_the_flood_bound() -> None:
    parser = MuxParser()
    parser.feed(b"".join(header(WINDOW, 1, 1) for _ in range(50)))
    assert parser.messages == 50
