"""The tunnel's sans-I/O WebSocket framing (access.shared.wsframe): pure bytes in, frames out."""

from __future__ import annotations

import random
import struct

import pytest

from access.shared import wsframe
from access.shared.wsframe import (
    CLOSE_PROTOCOL,
    CLOSE_TOO_BIG,
    CLOSE_UNSUPPORTED,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameParser,
    ProtocolError,
    accept_key,
    close_payload,
    encode_frame,
    frame_header,
    masked_frame,
    parse_close,
    unmasked_frame,
)

SIZES = [0, 1, 125, 126, 127, 65535, 65536, 300_000]


def parse_all(parser: FrameParser, pieces: list[bytes]) -> tuple[bytes, list[tuple[int, bytes]]]:
    data = bytearray()
    controls: list[tuple[int, bytes]] = []
    for piece in pieces:
        for opcode, payload in parser.feed(piece):
            if opcode == OP_BINARY:
                data += payload
            else:
                controls.append((opcode, payload))
    return bytes(data), controls


def stream(mask: bool) -> tuple[bytes, bytes, list[tuple[int, bytes]]]:
    """A mixed stream: data, a ping, fragmented data, a pong, an empty frame, a close."""
    frames = [
        encode_frame(OP_BINARY, b"hello ", mask=mask),
        encode_frame(OP_PING, b"p1", mask=mask),
        encode_frame(OP_BINARY, b"frag", mask=mask, fin=False),
        encode_frame(OP_CONTINUATION, bytes(range(200)), mask=mask, fin=False),
        encode_frame(OP_PONG, b"", mask=mask),
        encode_frame(OP_CONTINUATION, b"-end", mask=mask),
        encode_frame(OP_BINARY, b"", mask=mask),
        encode_frame(OP_CLOSE, close_payload(1000, "bye"), mask=mask),
    ]
    data = b"hello frag" + bytes(range(200)) + b"-end"
    controls = [(OP_PING, b"p1"), (OP_PONG, b""), (OP_CLOSE, close_payload(1000, "bye"))]
    return b"".join(frames), data, controls


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("client", [True, False])
def test_round_trip_of_one_frame(size: int, client: bool) -> None:
    payload = random.Random(size).randbytes(size)
    frame = masked_frame(payload) if client else unmasked_frame(payload)
    data, controls = parse_all(FrameParser(expect_masked=client), [frame])
    assert data == payload
    assert controls == []


@pytest.mark.parametrize("mask", [True, False])
def test_split_at_every_byte_boundary(mask: bool) -> None:
    raw, expected_data, expected_controls = stream(mask)
    for cut in range(len(raw) + 1):
        data, controls = parse_all(FrameParser(expect_masked=mask), [raw[:cut], raw[cut:]])
        assert (data, controls) == (expected_data, expected_controls), cut


@pytest.mark.parametrize("mask", [True, False])
def test_one_byte_at_a_time(mask: bool) -> None:
    raw, expected_data, expected_controls = stream(mask)
    data, controls = parse_all(FrameParser(expect_masked=mask), [raw[i : i + 1] for i in range(len(raw))])
    assert (data, controls) == (expected_data, expected_controls)


def test_random_splits_of_large_masked_frames() -> None:
    rng = random.Random(7)
    payloads = [rng.randbytes(rng.choice(SIZES)) for _ in range(12)]
    raw = b"".join(masked_frame(p) for p in payloads)
    pieces = []
    pos = 0
    while pos < len(raw):
        step = rng.randint(1, 70_000)
        pieces.append(raw[pos : pos + step])
        pos += step
    data, _ = parse_all(FrameParser(expect_masked=True), pieces)
    assert data == b"".join(payloads)


def test_server_refuses_unmasked_client_frames() -> None:
    with pytest.raises(ProtocolError) as err:
        FrameParser(expect_masked=True).feed(unmasked_frame(b"x"))
    assert err.value.code == CLOSE_PROTOCOL


def test_client_refuses_masked_server_frames() -> None:
    with pytest.raises(ProtocolError) as err:
        FrameParser(expect_masked=False).feed(masked_frame(b"x"))
    assert err.value.code == CLOSE_PROTOCOL


def test_oversized_frame_is_refused_from_its_header_alone() -> None:
    parser = FrameParser(expect_masked=True, max_payload=1024 * 1024)
    header = frame_header(OP_BINARY, 1024 * 1024 + 1, mask_key=b"abcd")
    with pytest.raises(ProtocolError) as err:
        parser.feed(header)
    assert err.value.code == CLOSE_TOO_BIG


def test_frame_at_the_limit_is_accepted() -> None:
    payload = bytes(1024)
    data, _ = parse_all(FrameParser(expect_masked=True, max_payload=1024), [masked_frame(payload)])
    assert data == payload


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (frame_header(OP_PING, 126, mask_key=b"abcd") + bytes(126), CLOSE_PROTOCOL),  # control too long
        (frame_header(OP_PING, 1, fin=False, mask_key=b"abcd") + b"x", CLOSE_PROTOCOL),  # fragmented control
        (frame_header(OP_TEXT, 1, mask_key=b"abcd") + b"x", CLOSE_UNSUPPORTED),
        (frame_header(0x3, 1, mask_key=b"abcd") + b"x", CLOSE_PROTOCOL),  # reserved data opcode
        (frame_header(0xB, 1, mask_key=b"abcd") + b"x", CLOSE_PROTOCOL),  # reserved control opcode
        (bytes([0xC2, 0x81]) + b"abcd" + b"x", CLOSE_PROTOCOL),  # RSV1 set
        (frame_header(OP_CONTINUATION, 1, mask_key=b"abcd") + b"x", CLOSE_PROTOCOL),  # nothing to continue
        (
            frame_header(OP_BINARY, 1, fin=False, mask_key=b"abcd")
            + b"x"
            + frame_header(OP_BINARY, 1, mask_key=b"abcd")
            + b"y",
            CLOSE_PROTOCOL,
        ),  # a new message inside a fragmented one
    ],
)
def test_malformed_frames_are_refused(frame: bytes, code: int) -> None:
    with pytest.raises(ProtocolError) as err:
        FrameParser(expect_masked=True).feed(frame)
    assert err.value.code == code


def test_encode_frame_refuses_long_control_payloads() -> None:
    with pytest.raises(ValueError, match="125"):
        encode_frame(OP_PING, bytes(126), mask=False)


def test_close_payload_round_trip_and_truncation() -> None:
    assert parse_close(close_payload(4010, "grant g-1 expired")) == (4010, "grant g-1 expired")
    code, reason = parse_close(close_payload(1000, "é" * 200))
    assert code == 1000
    assert len(reason.encode()) <= 123
    assert parse_close(b"") == (1005, "")
    with pytest.raises(ProtocolError):
        parse_close(b"\x03")
    with pytest.raises(ProtocolError):
        parse_close(struct.pack("!H", 1000) + b"\xff")


def test_accept_key_matches_rfc_6455_example() -> None:
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_fallback_mask_matches_c_mask() -> None:
    rng = random.Random(3)
    for size in (0, 1, 3, 4, 5, 1000, 65537):
        data = rng.randbytes(size)
        assert wsframe._apply_mask_fallback(data, b"\x01\x02\x03\x04") == wsframe.apply_mask(
            data, b"\x01\x02\x03\x04"
        )


def test_header_sizes() -> None:
    assert len(frame_header(OP_BINARY, 125)) == 2
    assert len(frame_header(OP_BINARY, 126)) == 4
    assert len(frame_header(OP_BINARY, 65536)) == 10
    assert len(frame_header(OP_BINARY, 65536, mask_key=b"abcd")) == 14


def test_frames_are_counted() -> None:
    parser = FrameParser(expect_masked=True)
    parser.feed(b"".join(masked_frame(b"") for _ in range(5)))
    assert parser.frames == 5
