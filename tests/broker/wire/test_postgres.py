"""broker/wire/postgres.py: byte by byte, then with psql and psycopg against a real server.

The real tests drive the machine with ``PgDriver`` (conftest) between a real client that has no
password and a private cluster that asks for one (SCRAM, MD5, cleartext).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
from collections.abc import Callable, Iterator

import psycopg
import pytest
import scramp

from access.broker.wire import postgres
from access.broker.wire.base import Statement, TargetLogin, WireError
from tests.broker.wire.conftest import BOUND, DATABASE, Cluster, PgDriver

LOGIN = TargetLogin("access_alice_k3x9", "s3cret-Pässword", "payments")


def message(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def startup(params: dict[str, str], version: int = 3 << 16) -> bytes:
    body = b"".join(k.encode() + b"\0" + v.encode() + b"\0" for k, v in params.items()) + b"\0"
    return struct.pack("!II", len(body) + 8, version) + body


def auth(code: int, data: bytes = b"") -> bytes:
    return message(b"R", struct.pack("!I", code) + data)


SSL_REQUEST = struct.pack("!II", 8, 80877103)
GSSENC_REQUEST = struct.pack("!II", 8, 80877104)
TARGET_KEY = (4242, 0xDEADBEEF)
AFTER_AUTH = (
    message(b"S", b"server_version\x0015.20\0")
    + message(b"N", b"SNOTICE\0C00000\0Mhello\0\0")
    + message(b"K", struct.pack("!II", *TARGET_KEY))
    + message(b"Z", b"I")
)


def messages(data: bytes) -> list[tuple[bytes, bytes]]:
    """Typed messages, as (type, body)."""
    found = []
    while data:
        length = struct.unpack_from("!I", data, 1)[0]
        found.append((data[:1], data[5 : length + 1]))
        data = data[length + 1 :]
    return found


def target_startup(data: bytes) -> dict[str, str]:
    length, version = struct.unpack_from("!II", data)
    assert length == len(data) and version == 3 << 16
    parts = data[8:-2].split(b"\0")
    return {k.decode(): v.decode() for k, v in zip(parts[::2], parts[1::2], strict=True)}


def splits(data: bytes) -> Iterator[list[bytes]]:
    """``data`` whole, cut in two at every byte, and one byte at a time."""
    yield [data]
    for cut in range(1, len(data)):
        yield [data[:cut], data[cut:]]
    yield [data[i : i + 1] for i in range(len(data))]


def logged_in(**kwargs: object) -> postgres.PostgresHandshake:
    machine = postgres.handshake(LOGIN, **kwargs)  # type: ignore[arg-type]
    machine.feed_client(startup({"user": "whoever", "database": "payments"}))
    assert machine.wants_target
    machine.data_to_target()
    return machine


def refusal(error: WireError) -> dict[str, str]:
    """The fields of the ErrorResponse a WireError carries for the client."""
    [(kind, body)] = messages(error.client_message)
    assert kind == b"E" and body.endswith(b"\0\0")
    return {chr(part[0]): part[1:].decode() for part in body.split(b"\0") if part}


# -- client leg ------------------------------------------------------------------------------


def test_the_client_is_told_no_encryption_and_its_startup_becomes_the_grants() -> None:
    stream = (
        SSL_REQUEST
        + GSSENC_REQUEST
        + startup(
            {"user": "whoever", "database": "payments", "application_name": "psql", "options": "-c x=1"}
        )
    )
    for chunks in splits(stream):
        machine = postgres.handshake(LOGIN)
        for chunk in chunks:
            assert not machine.wants_target
            machine.feed_client(chunk)
        assert machine.data_to_client() == b"NN"
        assert machine.wants_target and not machine.done and machine.cancel_request is None
        sent = target_startup(machine.data_to_target())
        assert sent == {
            "user": LOGIN.user,
            "database": "payments",
            "application_name": "psql",
            "options": "-c x=1",
        }
        assert machine.parameters["user"] == "whoever"


def test_a_client_that_names_no_database_gets_the_grants() -> None:
    machine = postgres.handshake(LOGIN)
    machine.feed_client(startup({"user": "whoever"}))
    assert target_startup(machine.data_to_target()) == {"user": LOGIN.user, "database": "payments"}


def test_with_no_database_in_the_grant_the_clients_choice_goes_through() -> None:
    machine = postgres.handshake(TargetLogin("u", "p"))
    machine.feed_client(startup({"user": "whoever", "database": "reports"}))
    assert target_startup(machine.data_to_target()) == {"user": "u", "database": "reports"}
    machine = postgres.handshake(TargetLogin("u", "p"))
    machine.feed_client(startup({"user": "whoever"}))
    assert target_startup(machine.data_to_target()) == {"user": "u"}


def test_another_database_than_the_grants_is_refused() -> None:
    machine = postgres.handshake(LOGIN)
    with pytest.raises(WireError) as caught:
        machine.feed_client(startup({"user": "whoever", "database": "root"}))
    fields = refusal(caught.value)
    assert fields["C"] == "42501" and fields["S"] == "FATAL"
    assert fields["M"] == 'access: this grant is for database "payments", not "root"'
    assert "dbname=payments" in fields["H"]
    assert not machine.wants_target and machine.data_to_target() == b""


def test_replication_is_refused_and_replication_off_is_not() -> None:
    with pytest.raises(WireError) as caught:
        postgres.handshake(LOGIN).feed_client(startup({"user": "u", "replication": "database"}))
    assert refusal(caught.value)["C"] == "42501"
    machine = postgres.handshake(LOGIN)
    machine.feed_client(startup({"user": "u", "replication": "false"}))
    assert target_startup(machine.data_to_target())["replication"] == "false"


def test_newer_minor_versions_and_protocol_options_are_declined() -> None:
    machine = postgres.handshake(LOGIN)
    machine.feed_client(startup({"user": "u", "_pq_.frob": "1", "TimeZone": "UTC"}, version=(3 << 16) | 2))
    [(kind, body)] = messages(machine.data_to_client())
    assert kind == b"v" and body == struct.pack("!II", 3 << 16, 1) + b"_pq_.frob\0"
    assert "_pq_.frob" not in target_startup(machine.data_to_target())


@pytest.mark.parametrize(
    ("stream", "words"),
    [
        (startup({"user": "u"}, version=2 << 16), "unsupported frontend protocol 2.0"),
        (struct.pack("!II", 10_001, 3 << 16) + b"\0" * 10, "invalid startup packet length 10001"),
        (struct.pack("!I", 4), "invalid startup packet length 4"),
        (startup({"user": "u"})[:-1] + b"x", "layout"),
        (struct.pack("!II", 12, 3 << 16) + b"\0u\0\0", "empty parameter name"),
        (SSL_REQUEST + SSL_REQUEST, "invalid encryption negotiation"),
        (b"\x16\x03\x01\x02\x00", "sslnegotiation=direct"),
        (struct.pack("!II", 12, 80877102) + b"\0" * 4, "invalid cancel request length"),
    ],
)
def test_a_malformed_client_startup_is_a_protocol_violation(stream: bytes, words: str) -> None:
    with pytest.raises(WireError) as caught:
        postgres.handshake(LOGIN).feed_client(stream)
    fields = refusal(caught.value)
    assert words in fields["M"] and fields["C"] in ("08P01", "0A000")


def test_a_cancel_request_is_surfaced_and_nothing_else_happens() -> None:
    stream = SSL_REQUEST + struct.pack("!IIII", 16, 80877102, 1234, 0xFEEDF00D)
    for chunks in splits(stream):
        machine = postgres.handshake(LOGIN)
        for chunk in chunks:
            machine.feed_client(chunk)
        assert machine.cancel_request == (1234, 0xFEEDF00D)
        assert not machine.wants_target and machine.data_to_target() == b""
        machine.feed_client(b"anything after it is ignored")


def test_cancel_helpers() -> None:
    assert postgres.cancel_message(7, 0xFFFFFFFF) == struct.pack("!IIII", 16, 80877102, 7, 0xFFFFFFFF)
    assert postgres.cancel_key_matches((7, 9), (7, 9))
    assert not postgres.cancel_key_matches((7, 9), (7, 8))
    assert not postgres.cancel_key_matches((7, 9), (6, 9))


def test_client_bytes_during_the_login_are_held_as_leftovers_up_to_a_ceiling() -> None:
    machine = logged_in()
    machine.feed_client(message(b"Q", b"select 1\0"))
    machine.feed_target(auth(0) + AFTER_AUTH + b"extra")
    assert machine.done
    assert machine.leftovers() == (message(b"Q", b"select 1\0"), b"extra")
    machine = logged_in()
    with pytest.raises(WireError, match="before the login finished"):
        machine.feed_client(b"x" * (postgres.EARLY_CEILING + 1))


def test_a_login_with_nul_characters_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="NUL"):
        postgres.handshake(TargetLogin("u", "p\0q"))


# -- target leg ------------------------------------------------------------------------------


def test_after_authentication_ok_the_client_gets_the_targets_startup_with_the_brokers_key() -> None:
    stream = auth(0) + AFTER_AUTH
    for chunks in splits(stream):
        machine = logged_in(client_key=(77, 88))
        for chunk in chunks:
            assert not machine.done
            machine.feed_target(chunk)
        assert machine.done and machine.target_key == TARGET_KEY and machine.client_key == (77, 88)
        assert messages(machine.data_to_client()) == [
            (b"R", struct.pack("!I", 0)),
            (b"S", b"server_version\x0015.20\0"),
            (b"N", b"SNOTICE\0C00000\0Mhello\0\0"),
            (b"K", struct.pack("!II", 77, 88)),
            (b"Z", b"I"),
        ]
        assert machine.data_to_target() == b"" and machine.leftovers() == (b"", b"")


def test_the_brokers_key_is_random_by_default() -> None:
    first, second = postgres.handshake(LOGIN).client_key, postgres.handshake(LOGIN).client_key
    assert first != second and 0 < first[0] < 2**31


def test_md5() -> None:
    machine = logged_in()
    machine.feed_target(auth(5, b"\x01\x02\x03\x04"))
    inner = (
        hashlib.md5(LOGIN.password.encode() + LOGIN.user.encode(), usedforsecurity=False).hexdigest().encode()
    )
    expected = "md5" + hashlib.md5(inner + b"\x01\x02\x03\x04", usedforsecurity=False).hexdigest()
    assert messages(machine.data_to_target()) == [(b"p", expected.encode() + b"\0")]
    assert machine.data_to_client() == b""  # the client never sees an authentication request


def test_cleartext_only_when_allowed() -> None:
    machine = logged_in(allow_cleartext=True)
    machine.feed_target(auth(3))
    assert messages(machine.data_to_target()) == [(b"p", LOGIN.password.encode() + b"\0")]
    with pytest.raises(WireError) as caught:
        logged_in().feed_target(auth(3))
    fields = refusal(caught.value)
    assert "clear text" in fields["M"] and fields["C"] == "28000"
    assert LOGIN.password.encode() not in caught.value.client_message


class ScramTarget:
    """The server's half of SCRAM-SHA-256 (scramp), to check the machine's half byte by byte."""

    def __init__(self, password: str, iterations: int = 4096) -> None:
        self.mechanism = scramp.ScramMechanism()
        self.info = self.mechanism.make_auth_info(password, iteration_count=iterations)  # one salt

    def answer(self, machine: postgres.PostgresHandshake, *, final: Callable[[str], str] = str) -> None:
        self.server = self.mechanism.make_server(lambda _username: self.info)  # one per login
        machine.feed_target(auth(10, b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"))
        [(kind, body)] = messages(machine.data_to_target())
        assert kind == b"p" and body.startswith(b"SCRAM-SHA-256\0")
        self.server.set_client_first(body[18:].decode())
        machine.feed_target(auth(11, self.server.get_server_first().encode()))
        [(kind, body)] = messages(machine.data_to_target())
        self.server.set_client_final(body.decode())  # raises unless the machine knows the password
        machine.feed_target(auth(12, final(self.server.get_server_final()).encode()))


def test_scram_sha_256() -> None:
    machine = logged_in()
    ScramTarget(LOGIN.password).answer(machine)
    machine.feed_target(auth(0) + AFTER_AUTH)
    assert machine.done


def test_the_salted_password_is_derived_once_per_password_and_salt() -> None:
    """A second login with the same password and the same server salt runs no PBKDF2 (about
    3 ms on the event loop each), and still proves itself to the server; a new salt derives."""
    from access.broker.wire import scram

    target = ScramTarget(LOGIN.password)
    before = scram.derivations()
    for _ in range(3):
        machine = logged_in()
        target.answer(machine)  # the server checks each proof
        machine.feed_target(auth(0) + AFTER_AUTH)
        assert machine.done
    assert scram.derivations() == before + 1
    other = logged_in()
    ScramTarget(LOGIN.password).answer(other)  # another salt (a new SCRAM secret for the password)
    assert scram.derivations() == before + 2


def test_a_target_that_cannot_prove_it_knows_the_password_is_refused() -> None:
    machine = logged_in()
    with pytest.raises(WireError, match="SCRAM proof is wrong"):
        ScramTarget(LOGIN.password).answer(machine, final=lambda _: "v=" + "A" * 44)


def test_authentication_ok_in_the_middle_of_scram_is_refused() -> None:
    machine = logged_in()
    machine.feed_target(auth(10, b"SCRAM-SHA-256\0\0"))
    with pytest.raises(WireError, match="without proving"):
        machine.feed_target(auth(0))


def test_scram_iterations_have_a_ceiling() -> None:
    machine = logged_in()
    machine.feed_target(auth(10, b"SCRAM-SHA-256\0\0"))
    nonce = messages(machine.data_to_target())[0][1].split(b"r=")[1].decode()
    with pytest.raises(WireError, match="SCRAM iterations"):
        machine.feed_target(auth(11, f"r={nonce}xyz,s=c2FsdA==,i=100000000".encode()))


@pytest.mark.parametrize(
    ("stream", "words"),
    [
        (auth(7), "GSSAPI"),
        (auth(10, b"SCRAM-SHA-256-PLUS\0\0"), "the broker does SCRAM-SHA-256"),
        (auth(11, b"r=x"), "SASLContinue without"),
        (message(b"Z", b"I"), "unexpected message 'Z' during authentication"),
        (auth(0) + message(b"R", struct.pack("!I", 0)), "unexpected message 'R' after"),
        (auth(0) + message(b"K", b"\0" * 12), "not protocol 3.0's"),
        (b"R" + struct.pack("!I", postgres.MESSAGE_CEILING + 1), "login message of 65537 bytes"),
    ],
)
def test_a_target_that_misbehaves_during_the_login_is_refused(stream: bytes, words: str) -> None:
    with pytest.raises(WireError) as caught:
        logged_in().feed_target(stream)
    assert words in refusal(caught.value)["M"]


def test_the_targets_login_bytes_have_a_ceiling() -> None:
    machine = logged_in()
    notice = message(b"N", b"M" + b"n" * 60_000 + b"\0\0")
    with pytest.raises(WireError, match="more than 1048576 bytes"):
        for _ in range(20):
            machine.feed_target(notice)


def test_the_targets_refusal_reaches_the_client_without_the_password() -> None:
    refused = message(
        b"E",
        b'SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user "access_alice_k3x9"\0'
        b"Dtried s3cret-P\xc3\xa4ssword\0\0",
    )
    for chunks in splits(refused):
        machine = logged_in()
        with pytest.raises(WireError) as caught:
            for chunk in chunks:
                machine.feed_target(chunk)
        fields = refusal(caught.value)
        assert fields["C"] == "28P01" and fields["S"] == "FATAL"
        assert fields["M"] == (
            "access: the target refused the broker's login for this grant: "
            'password authentication failed for user "access_alice_k3x9"'
        )
        assert fields["D"] == "tried [redacted]"
        assert LOGIN.password not in str(caught.value)


# -- tap -------------------------------------------------------------------------------------


def bind(portal: bytes, statement: bytes, *values: bytes) -> bytes:
    params = b"".join(struct.pack("!i", len(v)) + v for v in values)
    return message(
        b"B", portal + b"\0" + statement + b"\0" + b"\0\0" + struct.pack("!H", len(values)) + params + b"\0\0"
    )


SESSION = (
    message(b"Q", b"select 1; select 2\0")
    + message(b"P", b"s1\0select $1::text\0\0\0")
    + bind(b"p1", b"s1", b"secret-424242")
    + message(b"D", b"Pp1\0")
    + message(b"E", b"p1\0\0\0\0\0")
    + message(b"S", b"")
    + message(b"P", b"\0insert into t values ($1)\0\0\0")
    + bind(b"", b"", b"secret-777")
    + message(b"E", b"\0\0\0\0\0")
    + message(b"H", b"")
    + message(b"C", b"Ss1\0")
    + bind(b"p2", b"s1")
    + message(b"E", b"p2\0\0\0\0\0")
    + message(b"F", struct.pack("!I", 764) + b"\0\0\0\1\0\0\0\4secr\0\0")
    + message(b"Q", b"copy t from stdin\0")
    + message(b"d", b"1\tsecret-copied\n")
    + message(b"d", b"2\tx\n")
    + message(b"c", b"")
    + message(b"X", b"")
)
SESSION_STATEMENTS = [
    Statement("query", "select 1; select 2"),
    Statement("parse", "select $1::text", "s1"),
    Statement("execute", "select $1::text", "s1"),
    Statement("parse", "insert into t values ($1)"),
    Statement("execute", "insert into t values ($1)"),
    Statement("execute", "", "s1"),  # s1 was closed: its text is forgotten
    Statement("function", "function oid 764"),
    Statement("query", "copy t from stdin"),
]


def test_the_tap_records_statements_never_values_at_every_split() -> None:
    for chunks in splits(SESSION):
        recorder = postgres.tap()
        for chunk in chunks:
            recorder.client_bytes(memoryview(chunk))
        assert recorder.take() == SESSION_STATEMENTS
        assert recorder.copy_bytes == 20 and recorder.terminated and recorder.take() == []
        assert recorder.dropped == 0


def test_the_taps_statements_are_statements_as_their_constructor_makes_them() -> None:
    # The tap makes them without Statement.__init__ (pgtap._statement): the same objects.
    recorder = postgres.tap()
    recorder.client_bytes(SESSION)
    taken = recorder.take()
    assert [type(statement) for statement in taken] == [Statement] * len(SESSION_STATEMENTS)
    assert taken == SESSION_STATEMENTS and {hash(s) for s in taken} == {hash(s) for s in SESSION_STATEMENTS}
    assert [repr(s) for s in taken] == [repr(s) for s in SESSION_STATEMENTS]
    with pytest.raises(AttributeError):
        taken[0].text = "changed"  # type: ignore[misc]


def test_the_tap_cuts_texts_and_names_at_their_ceilings() -> None:
    recorder = postgres.tap()
    long_name = b"n" * 5000  # past the prefix the tap reads: the text behind it is not seen
    recorder.client_bytes(
        message(b"Q", b"select 'x" + "é".encode() * 5000 + b"'\0")
        + message(b"P", long_name + b"\0select 2\0\0\0")
        + bind(b"", long_name)
        + message(b"E", b"\0\0\0\0\0")
    )
    query, parse, execute = recorder.take()
    assert (
        len(query.text.encode()) <= 4096
        and query.text.startswith("select 'xéé")
        and "\ufffd" not in query.text
    )
    assert parse.name == "n" * postgres.NAME_CEILING and parse.text == ""
    assert execute == Statement("execute", "", "n" * postgres.NAME_CEILING)


def test_the_tap_keeps_a_bounded_number_of_statements_and_counts_the_rest() -> None:
    recorder = postgres.tap(pending_ceiling=3)
    recorder.client_bytes(message(b"Q", b"select 1\0") * 5)
    assert len(recorder.take()) == 3 and recorder.dropped == 2
    recorder.client_bytes(message(b"Q", b"select 1\0"))
    assert len(recorder.take()) == 1


def test_the_tap_forgets_the_oldest_statements_past_its_ceiling() -> None:
    recorder = postgres.tap()
    for number in range(postgres.STATEMENTS_KEPT + 1):
        recorder.client_bytes(message(b"P", f"s{number}\0select {number}\0\0\0".encode()))
    recorder.client_bytes(bind(b"", b"s0") + message(b"E", b"\0\0\0\0\0"))
    recorder.client_bytes(bind(b"", b"s1") + message(b"E", b"\0\0\0\0\0"))
    assert recorder.take()[-2:] == [Statement("execute", "", "s0"), Statement("execute", "select 1", "s1")]


def test_a_huge_copy_is_counted_not_held() -> None:
    recorder = postgres.tap()
    body = b"x" * (1 << 20)
    recorder.client_bytes(b"d" + struct.pack("!I", 4 + 3 * len(body)))
    for _ in range(3):
        recorder.client_bytes(body)
    recorder.client_bytes(message(b"Q", b"select 1\0"))
    assert recorder.copy_bytes == 3 * len(body) and recorder.take() == [Statement("query", "select 1")]


def test_the_tap_takes_any_byte_view() -> None:
    recorder = postgres.tap()
    recorder.client_bytes(memoryview(bytearray(message(b"Q", b"select 1\0"))).cast("c"))
    assert recorder.take() == [Statement("query", "select 1")]


@pytest.mark.parametrize(
    ("stream", "words"),
    [
        (b"Z\0\0\0\4", "not a frontend message"),
        (b"Q\0\0\0\3", "invalid message length"),
        (b"Q\0\0\0\4", "empty"),
    ],
)
def test_a_stream_out_of_step_is_a_wire_error(stream: bytes, words: str) -> None:
    with pytest.raises(WireError, match=words):
        postgres.tap().client_bytes(stream)


# -- against a real server, with real clients that have no password ----------------------------

pg_real = pytest.mark.anyio


@pytest.fixture(autouse=True)
def no_client_password(monkeypatch: pytest.MonkeyPatch) -> None:
    """psycopg's libpq reads this process's environment: no password there either."""
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.setenv("PGPASSFILE", "/dev/null")


def client_env() -> dict[str, str]:
    """No password anywhere: no PGPASSWORD, and a password file that is empty."""
    return {
        "PATH": os.environ["PATH"],
        "PGPASSFILE": "/dev/null",
        "PGCONNECT_TIMEOUT": "10",
        "LC_ALL": "C.UTF-8",
    }


async def psql(
    driver: PgDriver, *args: str, stdin: bytes = b"", database: str = DATABASE
) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        "psql", "-X", "-w", "-A", "-t", "-v", "ON_ERROR_STOP=1",
        f"host=127.0.0.1 port={driver.port} dbname={database} user=nobody", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=client_env(),
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(stdin), BOUND)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pg_real
async def test_psql_with_no_password_logs_in_as_the_grant_and_its_statements_are_tapped(
    pg_cluster: Cluster,
) -> None:
    async with PgDriver(pg_cluster, pg_cluster.login("access_scram")) as driver:
        code, out, err = await psql(
            driver, "-c", "select 1", "-c", "select current_user, current_database(); select 2"
        )
        assert (code, out) == (0, f"1\naccess_scram|{DATABASE}\n2\n"), err
        assert driver.statements() == [
            Statement("query", "select 1"),
            Statement("query", "select current_user, current_database(); select 2"),
        ]
        assert driver.errors == []


@pg_real
async def test_psql_copy_in_and_out(pg_cluster: Cluster) -> None:
    async with PgDriver(pg_cluster, pg_cluster.login("access_scram")) as driver:
        code, out, err = await psql(
            driver, "-c", "create temp table t (n int, s text)", "-c", r"\copy t from pstdin",
            "-c", "select sum(n), count(*) from t", "-c", r"\copy (select n from t order by n) to pstdout",
            stdin=b"1\tsecret-row\n2\tb\n3\tc\n",
        )  # fmt: skip
        assert (code, out) == (0, "CREATE TABLE\nCOPY 3\n6|3\n1\n2\n3\n"), err
        [channel] = driver.channels
        assert channel.tap.copy_bytes == len(b"1\tsecret-row\n2\tb\n3\tc\n")
        texts = [s.text for s in driver.statements()]
        assert texts[1] == "COPY  t FROM STDIN "  # psql rewrites \copy into a COPY ... STDIN
        assert texts[3] == "COPY  ( select n from t order by n ) TO STDOUT "
        assert not any("secret-row" in text for text in texts)


@pg_real
@pytest.mark.parametrize("role", ["access_md5", "access_clear"])
async def test_psql_through_md5_and_cleartext_targets(pg_cluster: Cluster, role: str) -> None:
    async with PgDriver(pg_cluster, pg_cluster.login(role), allow_cleartext=True) as driver:
        code, out, err = await psql(driver, "-c", "select current_user")
        assert (code, out) == (0, f"{role}\n"), err


@pg_real
@pytest.mark.parametrize("role", ["access_scram", "access_md5", "access_clear"])
async def test_a_wrong_broker_password_is_the_error_psql_prints(pg_cluster: Cluster, role: str) -> None:
    login = pg_cluster.login(role, password="not-the-password")
    async with PgDriver(pg_cluster, login, allow_cleartext=True) as driver:
        code, out, err = await psql(driver, "-c", "select 1")
    assert code == 2 and out == ""
    assert "FATAL:  access: the target refused the broker's login for this grant: " in err
    assert f'password authentication failed for user "{role}"' in err
    assert "not-the-password" not in err and pg_cluster.passwords[role] not in err


@pg_real
async def test_psql_asking_for_another_database_is_told_the_grants(pg_cluster: Cluster) -> None:
    async with PgDriver(pg_cluster, pg_cluster.login()) as driver:
        code, _, err = await psql(driver, "-c", "select 1", database="postgres")
    assert code == 2 and f'access: this grant is for database "{DATABASE}", not "postgres"' in err
    assert f"HINT:  Connect with dbname={DATABASE}" in err


@pg_real
async def test_psycopg_prepared_statements_are_tapped_as_parse_and_execute(pg_cluster: Cluster) -> None:
    async with PgDriver(pg_cluster, pg_cluster.login()) as driver:
        async with await psycopg.AsyncConnection.connect(driver.conninfo(), autocommit=True) as conn:
            for value in (424242, 515151):
                cursor = await conn.execute("select %s::int + 1", (value,), prepare=True)
                assert await cursor.fetchone() == (value + 1,)
            assert (
                conn.info.backend_pid != (await (await conn.execute("select pg_backend_pid()")).fetchone())[0]
            )
        parse, first, second, *_ = driver.statements()
        assert parse.kind == "parse" and parse.name and parse.text == "select $1::int + 1"
        assert first == second == Statement("execute", "select $1::int + 1", parse.name)
        assert not any("424242" in s.text or "515151" in s.text for s in driver.statements())
        [channel] = driver.channels
        for _ in range(int(BOUND / 0.01)):  # bounded: the driver relays the Terminate soon after
            if channel.tap.terminated:
                break
            await asyncio.sleep(0.01)
        assert channel.tap.terminated


@pg_real
async def test_a_client_asking_for_protocol_3_2_is_negotiated_down(pg_cluster: Cluster) -> None:
    async with PgDriver(pg_cluster, pg_cluster.login()) as driver:
        conninfo = driver.conninfo(max_protocol_version="3.2")
        async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
            assert await (await conn.execute("select 7")).fetchone() == (7,)
            assert conn.pgconn.full_protocol_version == 30000  # libpq took the 3.0 the broker offered


SLEEP = "select pg_sleep(30)"


def sleeping_queries(admin: psycopg.Connection[tuple[int]]) -> int:
    row = admin.execute(
        "select count(*) from pg_stat_activity where query = %s and state = 'active'", (SLEEP,)
    )
    return row.fetchone()[0]  # type: ignore[index]


@pg_real
async def test_a_cancel_through_the_broker_cancels_only_with_the_brokers_key(pg_cluster: Cluster) -> None:
    async with (
        PgDriver(pg_cluster, pg_cluster.login()) as driver,
        await psycopg.AsyncConnection.connect(driver.conninfo(), autocommit=True) as conn,
    ):
        sleeping = asyncio.create_task(conn.execute(SLEEP))
        with pg_cluster.admin() as admin:
            for _ in range(int(BOUND / 0.02)):  # bounded poll until the query runs on the target
                if sleeping_queries(admin) == 1:
                    break
                await asyncio.sleep(0.02)
            else:
                pytest.fail("the query never started")
            [channel] = driver.channels
            pid, key = channel.handshake.client_key
            assert channel.handshake.target_key is not None
            # A key one bit off the broker's, and the target's own key: neither reaches the target.
            for wrong in ((pid, key ^ 1), channel.handshake.target_key):
                _, writer = await asyncio.open_connection("127.0.0.1", driver.port)
                writer.write(struct.pack("!IIII", 16, 80877102, *wrong))
                await writer.drain()
                writer.close()
            assert await driver.wait_cancels(2) == ["refused", "refused"]
            assert not sleeping.done() and sleeping_queries(admin) == 1
            await conn.cancel_safe(timeout=BOUND)  # libpq's own CancelRequest, with the broker's key
            with pytest.raises(psycopg.errors.QueryCanceled):
                await asyncio.wait_for(sleeping, BOUND)
            assert driver.cancels == ["refused", "refused", "forwarded"]
