"""The Redis wire machine: byte by byte, then with the real redis-cli against the real Redis.

The client (redis-cli) connects to a loopback relay with NO password; the relay logs in to
127.0.0.1:6379 as a per-test ACL user through ``resp.handshake`` and taps the stream.
"""

from __future__ import annotations

import secrets
import socket
import subprocess
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
import redis

from access.broker.wire import resp
from access.broker.wire.base import Statement, TargetLogin, WireError

from .relay import Relay

REDIS = ("127.0.0.1", 6379)


def _cmd(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _tapped(chunks: list[bytes], **kw: bool) -> list[Statement]:
    tap = resp.tap(**kw)
    for chunk in chunks:
        tap.client_bytes(chunk)
    return tap.take()


# -- the tap, byte by byte ---------------------------------------------------------------------

PIPELINE = b"".join(
    [
        _cmd(b"get", b"user:1"),
        _cmd(b"SET", b"user:2", b"SECRET-VALUE-1", b"EX", b"60"),
        _cmd(b"MSET", b"a", b"SECRET-VALUE-2", b"b", b"SECRET-VALUE-3"),
        _cmd(b"DEL", b"x", b"y", b"z"),
        _cmd(b"EVAL", b"return SECRET-SCRIPT", b"2", b"k1", b"k2", b"SECRET-ARG"),
        _cmd(b"XREAD", b"COUNT", b"2", b"STREAMS", b"s1", b"s2", b"0", b"0"),
        _cmd(b"OBJECT", b"encoding", b"user:1"),
        _cmd(b"ZUNIONSTORE", b"dst", b"2", b"z1", b"z2", b"WEIGHTS", b"1", b"2"),
        _cmd(b"BLPOP", b"q1", b"q2", b"5"),
        b"*0\r\n",
        _cmd(b"SET", b"", b"SECRET-VALUE-4"),
        _cmd(b"GET", b'we"ird key\n\x00\xff'),
        b"set \"in line\" 'SECRET-VALUE-5'\r\n",
        b"\r\n",
        b"ping\n",
        _cmd(b"HELLO", b"3", b"SETNAME", b"me"),
    ]
)
EXPECTED = [
    "GET user:1",
    "SET user:2",
    "MSET a b",
    "DEL x y z",
    "EVAL k1 k2",
    "XREAD s1 s2",
    "OBJECT ENCODING user:1",
    "ZUNIONSTORE dst z1 z2",
    "BLPOP q1 q2",
    'SET ""',
    'GET "we\\"ird key\\n\\x00\\xff"',
    'SET "in line"',
    "PING",
    "HELLO",
]


def test_tap_records_names_and_keys_never_values_split_at_every_byte() -> None:
    assert [s.text for s in _tapped([PIPELINE])] == EXPECTED
    assert all(s.kind == "command" for s in _tapped([PIPELINE]))
    for cut in range(1, len(PIPELINE)):
        assert [s.text for s in _tapped([PIPELINE[:cut], PIPELINE[cut:]])] == EXPECTED, cut
    assert [s.text for s in _tapped([PIPELINE[i : i + 1] for i in range(len(PIPELINE))])] == EXPECTED
    tap = resp.tap()
    tap.client_bytes(memoryview(PIPELINE)[:100])
    tap.client_bytes(memoryview(PIPELINE)[100:])
    assert [s.text for s in tap.take()] == EXPECTED
    assert not any("SECRET" in s.text for s in _tapped([PIPELINE]))


def test_values_flag_shows_arguments_but_never_of_secret_carrying_commands() -> None:
    got = _tapped(
        [
            _cmd(b"SET", b"k", b"v1"),
            _cmd(b"CONFIG", b"SET", b"masterauth", b"SECRET"),
            _cmd(b"ACL", b"SETUSER", b"u", b">SECRET"),
        ],
        values=True,
    )
    assert [s.text for s in got] == ["SET k v1", "CONFIG SET", "ACL SETUSER"]


def test_a_512_mib_value_is_skipped_by_count_not_held() -> None:
    chunk = memoryview(bytes(1024 * 1024))
    tap = resp.tap()
    tracemalloc.start()
    try:
        tap.client_bytes(b"*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n$%d\r\n" % (512 * 1024 * 1024))
        for _ in range(512):
            tap.client_bytes(chunk)
        tap.client_bytes(b"\r\n" + _cmd(b"GET", b"big"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [s.text for s in tap.take()] == ["SET big", "GET big"]
    assert peak < 64 * 1024, peak


def test_inline_commands_in_a_memoryview_are_read_in_place() -> None:
    chunk = memoryview(b"PING\r\n" * 10_000)
    tap = resp.RespTap(pending_limit=1)
    tracemalloc.start()
    try:
        tap.client_bytes(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [s.kind for s in tap.take()] == ["command", "dropped"]
    assert peak < 16 * 1024, peak


def test_statement_texts_and_pending_statements_have_ceilings() -> None:
    tap = resp.RespTap(text_limit=100, pending_limit=3)
    tap.client_bytes(_cmd(b"MGET", *[b"key-%04d" % i for i in range(500)]))
    tap.client_bytes(_cmd(b"GET", b"k" * 10_000))
    for _ in range(3):
        tap.client_bytes(_cmd(b"PING"))
    got = tap.take()
    assert len(got[0].text) <= 100 and got[0].text.startswith("MGET key-0000 key-0001")
    assert "more" in got[0].text
    assert len(got[1].text) <= 100 and got[1].text.endswith("…")
    assert [s.kind for s in got] == ["command", "command", "command", "dropped"]
    assert got[3].text.startswith("2 commands")
    assert tap.take() == []


@pytest.mark.parametrize(
    ("stream", "what"),
    [
        (b"*1\r\n$3\r\nGETX\r\n", "CRLF"),
        (b"*1\r\n$03\r\nGET\r\n", "bulk length"),
        (b"*1\r\n$-1\r\n", "bulk length"),
        (b"*1\r\n$536870913\r\n", "bulk length"),
        (b"*01\r\n", "multibulk length"),
        (b"*2\r\n:1\r\n", "expected '[$]'"),
        (b"*1\r\n$" + b"1" * 40, "too long"),
        (b"*1\r\n$3\rXGET\r\n", "bulk length"),
        (b"GET " + b"k" * (64 * 1024), "too big inline"),
        (b'GET "unbalanced\r\n', "unbalanced"),
        (b'GET "closing"quote\r\n', "unbalanced"),
    ],
)
def test_a_malformed_stream_is_refused(stream: bytes, what: str) -> None:
    tap = resp.tap()
    with pytest.raises(WireError, match=what) as caught:
        tap.client_bytes(stream)
    assert caught.value.client_message.startswith(b"-ERR Protocol error: ")
    assert caught.value.client_message.endswith(b"\r\n")
    with pytest.raises(WireError):  # and stays refused
        tap.client_bytes(_cmd(b"PING"))


REFUSED = [
    _cmd(b"AUTH", b"default", b"x"),
    _cmd(b"auth", b"x"),
    _cmd(b"AUTH"),
    _cmd(b"AUTH\x00junk", b"x"),
    _cmd(b"HELLO", b"3", b"AUTH", b"default", b"x"),
    _cmd(b"hello", b"3", b"SETNAME", b"n", b"auth\x00", b"default", b"x"),
    _cmd(b"RESET"),
    b"AUTH default x\r\n",
    b'"AU\\x54H" default x\n',
    b'AU"TH" default x\r\n',
    b"  reset\r\n",
]


@pytest.mark.parametrize("command", REFUSED)
def test_identity_switches_are_refused_before_redis_has_the_whole_command(command: bytes) -> None:
    before = _cmd(b"GET", b"k")
    stream = before + command
    for cut in range(len(before) + 1, len(stream) + 1):
        tap = resp.tap()
        tap.client_bytes(before)  # forwarded
        forwarded = before
        with pytest.raises(WireError) as caught:
            for chunk in (stream[len(before) : cut], stream[cut:]):
                tap.client_bytes(chunk)
                forwarded += chunk  # only a chunk the tap accepted is forwarded
        assert forwarded != stream and len(forwarded) < len(stream), cut
        assert caught.value.client_message.startswith(b"-ERR access: ")
        assert b"refused" in caught.value.client_message
        assert [s.kind for s in tap.take()] == ["command", "refused"]


def test_the_refused_chunk_takes_back_the_statements_it_completed() -> None:
    tap = resp.tap()
    tap.client_bytes(_cmd(b"GET", b"a") + b"*2\r\n$3\r\nGET\r\n$1\r\n")
    with pytest.raises(WireError):
        tap.client_bytes(b"b\r\n" + _cmd(b"GET", b"c") + _cmd(b"AUTH", b"x"))
    assert [(s.kind, s.text) for s in tap.take()] == [("command", "GET a"), ("refused", "AUTH")]


def test_hello_without_auth_passes() -> None:
    assert [s.text for s in _tapped([_cmd(b"HELLO", b"3"), _cmd(b"HELLO", b"2", b"SETNAME", b"auth")])] == [
        "HELLO",
        "HELLO",
    ]


def test_inline_commands_split_like_redis() -> None:
    lines = [
        b'ECHO "a\\x41b\\n\\"c"',
        b"ECHO 'it\\'s'",
        b'ECHO ab"c d"e',
        b"ECHO \t spaced\x0b",
        b'ECHO "\\q"',
        b'ECHO "x"y',
        b"ECHO 'x",
    ]
    with socket.create_connection(REDIS, timeout=5) as conn:
        reader = conn.makefile("rb")
        for line in lines:
            conn.sendall(line + b"\r\n")
            head = reader.readline()
            if head.startswith(b"-ERR Protocol error: unbalanced quotes"):
                assert resp._splitargs(line) is None, line
                conn.close()  # Redis closes after a protocol error
                conn = socket.create_connection(REDIS, timeout=5)
                reader = conn.makefile("rb")
                continue
            assert head.startswith(b"$"), head
            said = reader.read(int(head[1:]) + 2)[:-2]
            assert resp._splitargs(line) == [b"ECHO", said], line
    conn.close()


# -- the login, byte by byte -------------------------------------------------------------------


def test_handshake_logs_in_with_auth_and_hands_over_early_bytes() -> None:
    for cut in range(5):
        login = resp.handshake(TargetLogin("access_u", "pw"))
        assert login.wants_target and not login.done
        assert login.data_to_target() == _cmd(b"AUTH", b"access_u", b"pw")
        login.feed_client(_cmd(b"HELLO", b"3"))
        reply = b"+OK\r\n"
        login.feed_target(reply[:cut])
        assert not login.done
        login.feed_target(reply[cut:])
        assert login.done
        assert login.leftovers() == (_cmd(b"HELLO", b"3"), b"")
        assert login.data_to_client() == b""


def test_an_auth_sent_before_the_login_is_done_is_refused_by_the_tap() -> None:
    login = resp.handshake(TargetLogin("u", "pw"))
    login.feed_client(_cmd(b"PING") + _cmd(b"AUTH", b"default", b"x"))
    login.feed_target(b"+OK\r\n")
    early, _ = login.leftovers()
    tap = resp.tap()
    with pytest.raises(WireError, match="AUTH is refused"):
        tap.client_bytes(early)  # the channel's contract: leftovers go through the tap first
    assert [(s.kind, s.text) for s in tap.take()] == [("refused", "AUTH")]


def test_handshake_selects_the_database_after_auth() -> None:
    login = resp.handshake(TargetLogin("u", "pw", database="3"))
    login.data_to_target()
    login.feed_target(b"+OK\r\n")
    assert login.data_to_target() == _cmd(b"SELECT", b"3") and not login.done
    login.feed_target(b"+OK\r\n")
    assert login.done
    other = resp.handshake(TargetLogin("u", "pw", database="99"))
    with pytest.raises(WireError) as caught:
        other.feed_target(b"+OK\r\n-ERR DB index is out of range\r\n")
    assert caught.value.client_message.startswith(b"-ERR access: the target refused database 99 ")


def test_a_refused_login_is_a_resp_error_for_the_client() -> None:
    login = resp.handshake(TargetLogin("u", "the-password"))
    with pytest.raises(WireError) as caught:
        login.feed_target(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n")
    message = caught.value.client_message
    assert message.startswith(b"-ERR access: the target refused the broker's login for this grant (WRONGPASS")
    assert message.endswith(b"\r\n") and message.count(b"\r\n") == 1
    assert b"the-password" not in message and "the-password" not in str(caught.value)
    with pytest.raises(WireError):
        login.feed_client(b"PING\r\n")


def test_handshake_ceilings() -> None:
    login = resp.RespHandshake(TargetLogin("u", "pw"), early_limit=100)
    with pytest.raises(WireError, match="more than 100 bytes"):
        login.feed_client(b"x" * 101)
    with pytest.raises(WireError, match="longer than"):
        resp.handshake(TargetLogin("u", "pw")).feed_target(b"+" + b"O" * (64 * 1024 + 1))
    with pytest.raises(WireError, match="unexpected reply"):
        resp.handshake(TargetLogin("u", "pw")).feed_target(b":1\r\n")
    with pytest.raises(ValueError, match="database"):
        resp.handshake(TargetLogin("u", "pw", database="db1"))


# -- the real redis-cli through a relay to the real Redis -------------------------------------


@pytest.fixture
def admin() -> Iterator[redis.Redis]:
    client = redis.Redis(*REDIS, socket_timeout=5, socket_connect_timeout=5)
    yield client
    client.close()


@pytest.fixture
def user(admin: redis.Redis) -> Iterator[Callable[..., TargetLogin]]:
    made: list[str] = []

    def make(*rules: str) -> TargetLogin:
        name = f"test_resp_{secrets.token_hex(4)}"
        password = secrets.token_urlsafe(16)
        admin.execute_command(  # type: ignore[no-untyped-call]
            "ACL", "SETUSER", name, "on", f">{password}", "resetchannels", *rules
        )
        made.append(name)
        return TargetLogin(name, password)

    yield make
    if made:
        admin.execute_command("ACL", "DELUSER", *made)  # type: ignore[no-untyped-call]


@pytest.fixture
def relay_for() -> Iterator[Callable[[TargetLogin], Relay]]:
    started: list[Relay] = []

    def start(login: TargetLogin) -> Relay:
        relay = Relay(lambda: resp.handshake(login), resp.tap, REDIS).start()
        started.append(relay)
        return relay

    yield start
    for relay in started:
        relay.stop()


def cli(relay: Relay, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        ["redis-cli", "-h", "127.0.0.1", "-p", str(relay.port), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return done.stdout + done.stderr


@pytest.fixture
def key(admin: redis.Redis) -> Iterator[str]:
    name = f"test:resp:{secrets.token_hex(4)}"
    admin.set(name, "hello")
    yield name
    admin.delete(name)


def test_redis_cli_with_no_password_reads_as_a_read_identity_and_redis_refuses_writes(
    user: Callable[..., TargetLogin], relay_for: Callable[[TargetLogin], Relay], key: str, admin: redis.Redis
) -> None:
    relay = relay_for(user("+@read", "~test:resp:*"))
    assert cli(relay, "GET", key).strip() == "hello"
    assert "NOPERM" in cli(relay, "SET", key, "changed")
    assert admin.get(key) == b"hello"
    texts = [s.text for s in relay.taken()]
    assert f"GET {key}" in texts and f"SET {key}" in texts
    assert not any("changed" in t for t in texts)


def test_redis_cli_writes_as_a_write_identity_and_in_resp3(
    user: Callable[..., TargetLogin], relay_for: Callable[[TargetLogin], Relay], key: str, admin: redis.Redis
) -> None:
    relay = relay_for(user("+@read", "+@write", "+@connection", "~test:resp:*"))
    assert cli(relay, "SET", key, "changed").strip() == "OK"
    assert admin.get(key) == b"changed"
    assert cli(relay, "-3", "HGETALL", key + ":none").strip() == ""
    assert cli(relay, "-3", "GET", key).strip() == "changed"
    assert "HELLO" in [s.text for s in relay.taken()]


@pytest.mark.parametrize(
    "switch", ["AUTH default x", "HELLO 3 AUTH default x", "RESET"], ids=["auth", "hello", "reset"]
)
def test_identity_switches_mid_stream_are_refused(
    user: Callable[..., TargetLogin],
    relay_for: Callable[[TargetLogin], Relay],
    key: str,
    admin: redis.Redis,
    switch: str,
) -> None:
    # The test Redis's default user has no password and every right: a switch that got through
    # would be answered OK (or RESET) and the SET would succeed.
    relay = relay_for(user("+@read", "~test:resp:*"))
    out = cli(relay, stdin=f"GET {key}\n{switch}\nSET {key} changed\n")
    assert "hello" in out
    assert "ERR access: " in out and "is refused" in out
    assert "OK" not in out.replace("NOPERM", "") and "RESET" not in out.replace("RESET is refused", "")
    assert admin.get(key) == b"hello"
    assert [s.kind for s in relay.taken() if s.kind == "refused"] == ["refused"]


def test_a_wrong_broker_password_is_a_clear_error_for_redis_cli(
    user: Callable[..., TargetLogin], relay_for: Callable[[TargetLogin], Relay]
) -> None:
    login = user("+@read", "~test:resp:*")
    relay = relay_for(TargetLogin(login.user, "not-" + login.password))
    out = cli(relay, "GET", "test:resp:x")
    assert "ERR access: the target refused the broker's login for this grant (WRONGPASS" in out
    assert login.password not in out


@pytest.mark.parametrize("goodbye", [b"*1\r\n$4\r\nquit\r\n", b"QUIT\r\n"])
def test_the_tap_knows_a_client_that_said_quit(goodbye: bytes) -> None:
    """QUIT (as RESP or inline) is the client's goodbye: the channel's close is the client's,
    even when Redis's close reaches the broker first (broker/tunnel/protocol.py)."""
    tap = resp.tap()
    tap.client_bytes(b"*2\r\n$3\r\nGET\r\n$4\r\nquit\r\n")  # a key named quit is no goodbye
    assert not tap.terminated
    tap.client_bytes(goodbye)
    assert tap.terminated
