"""The MySQL / MariaDB wire protocol: the broker logs in to the target, the client logs in to nobody.

Flow (``handshake``). The broker dials the target first (``wants_target`` is True from the start)
and reads its HandshakeV10. Toward the client it plays the server: it sends a HandshakeV10 of its
own (the target's server version, connection id, character set and status; the target's
capabilities minus the ones below; a fresh random scramble; the plugin mysql_native_password),
and accepts the client's HandshakeResponse41 whatever user name and password it presents: the
grant decides who the connection is, so the client's user name is IGNORED (a client cannot know
the grant's random identity name, and tools send the OS user by default, so refusing a mismatch
would refuse everyone; ``client_user`` keeps what it claimed, for the audit). Toward the target it
sends a HandshakeResponse41 with the grant's ``TargetLogin`` (user; the grant's database, else the
one the client asked for: privileges decide what it may use), the client's capabilities
intersected with the target's, its character set and max packet size and its connection
attributes. A client that answered the greeting for another plugin than mysql_native_password
(MySQL 8 clients default to caching_sha2_password; ``--default-auth``) gets an AuthSwitchRequest
to mysql_native_password, as from a server, and its answer is not checked either. On the target's
OK the same OK packet goes to the client (its sequence id following the client's last packet) and
the machine is done; on the target's ERR the client gets an ERR (1045,
"access: the target refused the broker's login for this grant: <the target's message>") through
``WireError``; the password never appears in a message.

Capabilities the client is not offered (``_CLIENT_ALLOWED`` is an allow-list: unknown bits are
never passed on):

- CLIENT_SSL, CLIENT_SSL_VERIFY_SERVER_CERT: the tunnel to the local listener is already TLS and
  the machine terminates no TLS toward the client; a client that insists on TLS
  (``--ssl-mode=REQUIRED``) stops itself, one that sends an SSLRequest anyway gets an ERR saying
  to connect without TLS. (TLS to the TARGET is the service's choice: below.)
- CLIENT_COMPRESS, CLIENT_ZSTD_COMPRESSION_ALGORITHM: compressed frames would hide the commands
  from the Tap.
- CLIENT_QUERY_ATTRIBUTES (MySQL 8.0.23+): it puts parameter values in front of COM_QUERY's text.
- MULTI_FACTOR_AUTHENTICATION, CLIENT_CAPABILITY_EXTENSION, CLIENT_REMEMBER_OPTIONS: the client
  authenticates to nobody; the others are client-side flags or not understood here.
- MariaDB's MARIADB_CLIENT_COM_MULTI: one command wrapping others would hide them from the Tap.
- CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS is not sent to the target: an expired grant password is a
  provisioning fault and must fail, not log in to the server's sandbox mode.
CLIENT_LOCAL_FILES passes through (the Tap tells file data from commands, see below).

TLS to the target (``tls=True``: the service's ``options.tls`` is require or verify-full). The
target's greeting must offer CLIENT_SSL, else the client gets an ERR and nothing more happens
(fail closed: no login in clear). The greeting is in clear, as MySQL's is. Once the client's
HandshakeResponse41 is in, the machine sends the target an SSLRequest (sequence id 1: the first
32 bytes of the HandshakeResponse41 it is about to send, CLIENT_SSL set, because the server takes
the capabilities, max packet and character set from it) and holds the rest: ``wants_tls`` is
True, the driver starts TLS on the target's connection (``loop.start_tls``; the certificate and
the name are checked for verify-full) and calls ``tls_started``, then the HandshakeResponse41
(sequence id 2) and everything after go over TLS. A target byte before ``tls_started`` is an
error (never read as part of the login: it came in clear). ``refuse`` ends a login from outside
(TLS did not start, the login's deadline passed) with the driver's reason as the client's ERR,
sequenced where the login is.

Authentication to the target: mysql_native_password (also after an AuthSwitchRequest to it);
MariaDB's client_ed25519 after an AuthSwitchRequest to it (the nonce signed with the password as
the Ed25519 secret, see ``ed25519``); caching_sha2_password (MySQL 8's default, MySQL 9's only
one): its fast path (the server's cache knows the identity: a scramble, then "fast auth
success") always; its FULL authentication (a fresh identity: the server wants the password
itself) over TLS with the password in clear inside TLS (what MySQL's clients send), without TLS
only RSA-encrypted with the target's public key, pinned (``target_rsa_key``) or fetched from the
target when the caller allows it (``fetch_target_rsa_key``: over plain TCP, whoever can change
bytes on the path can swap the key). Refused with a clear ERR: full authentication without
either, mysql_clear_password, mysql_old_password, sha256_password, every other plugin, a second
switch: create the grant identities WITH mysql_native_password, ed25519 or caching_sha2_password
(and give the key, or use TLS).

Tap (``tap``). After the handshake it sees the client's bytes: packets of a 3-byte length and a
sequence id; a payload of 0xFFFFFF bytes continues in the next packet. Every command starts with
sequence id 0 (the server answers a command packet with any other id with "Got packets out of
order" and drops the connection: MariaDB and MySQL both do), so a payload whose first packet has a
non-zero id is DATA, never a command: the file content of LOAD DATA LOCAL INFILE (which the server
asks for after a COM_QUERY, in bytes the Tap never sees). Data is not decoded; its end (an empty
payload) is recorded as one ``Statement("local_infile", "<n> bytes")``. Recorded: COM_QUERY
("query"), COM_STMT_PREPARE ("prepare"), COM_STMT_EXECUTE and MariaDB's COM_STMT_BULK_EXECUTE
("execute", ``name`` = the statement id; the text is empty: the id is assigned in the server's
answer, which the Tap does not see), COM_INIT_DB ("init_db", the database), every other command as
("command", "COM_NAME"), the statement commands with their id as ``name``; COM_PING is not recorded
(pools ping all the time). Parameter values (COM_STMT_EXECUTE's, COM_STMT_SEND_LONG_DATA's) are
never kept: of such a payload only the first 5 bytes are read. Texts are cut at 4 KiB.

COM_CHANGE_USER would switch the connection to another identity: the Tap raises ``WireError``
(its ``client_message`` is an ERR packet for the client) as soon as the command byte arrives. The
channel must hand each chunk to ``client_bytes`` BEFORE forwarding it, and on ``WireError`` send
``client_message`` to the client, forward nothing of that chunk, and close both legs. The channel
should also feed the Tap the client leftovers of the handshake.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import NoReturn

from . import ed25519
from .base import Outgoing, Statement, TargetLogin, WireError

__all__ = [
    "MAX_HANDSHAKE_PACKET",
    "MAX_PENDING",
    "TEXT_LIMIT",
    "MysqlHandshake",
    "MysqlTap",
    "handshake",
    "native_password_scramble",
    "tap",
]

MAX_HANDSHAKE_PACKET = 64 * 1024  # the ceiling of one handshake packet, either leg
MAX_AUTH_ROUNDS = 4  # target packets after the broker's HandshakeResponse41 before OK/ERR
TEXT_LIMIT = 4096  # bytes of a statement text kept
MAX_PENDING = 1024  # statements waiting for take(); the rest are counted in ``dropped``
_MAX_PAYLOAD = 0xFFFFFF  # a packet this long continues in the next one

# Capability flags.
CLIENT_MYSQL = 1  # CLIENT_LONG_PASSWORD; MariaDB servers and clients clear it to mean "extended caps follow"
CLIENT_FOUND_ROWS = 1 << 1
CLIENT_LONG_FLAG = 1 << 2
CLIENT_CONNECT_WITH_DB = 1 << 3
CLIENT_NO_SCHEMA = 1 << 4
CLIENT_COMPRESS = 1 << 5
CLIENT_ODBC = 1 << 6
CLIENT_LOCAL_FILES = 1 << 7
CLIENT_IGNORE_SPACE = 1 << 8
CLIENT_PROTOCOL_41 = 1 << 9
CLIENT_INTERACTIVE = 1 << 10
CLIENT_SSL = 1 << 11
CLIENT_IGNORE_SIGPIPE = 1 << 12
CLIENT_TRANSACTIONS = 1 << 13
CLIENT_RESERVED = 1 << 14
CLIENT_SECURE_CONNECTION = 1 << 15
CLIENT_MULTI_STATEMENTS = 1 << 16
CLIENT_MULTI_RESULTS = 1 << 17
CLIENT_PS_MULTI_RESULTS = 1 << 18
CLIENT_PLUGIN_AUTH = 1 << 19
CLIENT_CONNECT_ATTRS = 1 << 20
CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA = 1 << 21
CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS = 1 << 22
CLIENT_SESSION_TRACK = 1 << 23
CLIENT_DEPRECATE_EOF = 1 << 24
CLIENT_OPTIONAL_RESULTSET_METADATA = 1 << 25
CLIENT_ZSTD_COMPRESSION_ALGORITHM = 1 << 26
CLIENT_QUERY_ATTRIBUTES = 1 << 27
# MariaDB's extended capabilities (the last 4 bytes of the greeting's and the response's filler).
MARIADB_CLIENT_PROGRESS = 1 << 0
MARIADB_CLIENT_COM_MULTI = 1 << 1
MARIADB_CLIENT_STMT_BULK_OPERATIONS = 1 << 2
MARIADB_CLIENT_EXTENDED_METADATA = 1 << 3
MARIADB_CLIENT_CACHE_METADATA = 1 << 4
MARIADB_CLIENT_BULK_UNIT_RESULTS = 1 << 5

# What the client may be offered of the target's capabilities (see the module's docstring).
_CLIENT_ALLOWED = (
    CLIENT_MYSQL
    | CLIENT_FOUND_ROWS
    | CLIENT_LONG_FLAG
    | CLIENT_CONNECT_WITH_DB
    | CLIENT_NO_SCHEMA
    | CLIENT_ODBC
    | CLIENT_LOCAL_FILES
    | CLIENT_IGNORE_SPACE
    | CLIENT_PROTOCOL_41
    | CLIENT_INTERACTIVE
    | CLIENT_IGNORE_SIGPIPE
    | CLIENT_TRANSACTIONS
    | CLIENT_RESERVED
    | CLIENT_SECURE_CONNECTION
    | CLIENT_MULTI_STATEMENTS
    | CLIENT_MULTI_RESULTS
    | CLIENT_PS_MULTI_RESULTS
    | CLIENT_PLUGIN_AUTH
    | CLIENT_CONNECT_ATTRS
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS
    | CLIENT_SESSION_TRACK
    | CLIENT_DEPRECATE_EOF
    | CLIENT_OPTIONAL_RESULTSET_METADATA
)
_MARIADB_ALLOWED = (
    MARIADB_CLIENT_PROGRESS
    | MARIADB_CLIENT_STMT_BULK_OPERATIONS
    | MARIADB_CLIENT_EXTENDED_METADATA
    | MARIADB_CLIENT_CACHE_METADATA
    | MARIADB_CLIENT_BULK_UNIT_RESULTS
)
# Flags that only shape the handshake packets: the broker sets its own on the target leg.
_HANDSHAKE_ONLY = (
    CLIENT_CONNECT_WITH_DB
    | CLIENT_CONNECT_ATTRS
    | CLIENT_PLUGIN_AUTH
    | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA
    | CLIENT_CAN_HANDLE_EXPIRED_PASSWORDS
)

NATIVE = "mysql_native_password"
CACHING_SHA2 = "caching_sha2_password"
ED25519 = "client_ed25519"  # MariaDB's ed25519 plugin, client side
_NONCE_SIZES = {NATIVE: 20, CACHING_SHA2: 20, ED25519: 32}

# Error codes and SQLSTATEs of the ERR packets the broker writes.
ER_HANDSHAKE_ERROR = (1043, "08S01")
ER_ACCESS_DENIED = (1045, "28000")
ER_NET_PACKET_TOO_LARGE = (1153, "08S01")
ER_SPECIFIC_ACCESS_DENIED = (1227, "42000")
ER_NOT_SUPPORTED_AUTH_MODE = (1251, "08004")

COM_QUIT = 0x01
COM_INIT_DB = 0x02
COM_QUERY = 0x03
COM_FIELD_LIST = 0x04
COM_PING = 0x0E
COM_CHANGE_USER = 0x11
COM_STMT_PREPARE = 0x16
COM_STMT_EXECUTE = 0x17
COM_STMT_SEND_LONG_DATA = 0x18
COM_STMT_CLOSE = 0x19
COM_STMT_RESET = 0x1A
COM_STMT_FETCH = 0x1C
COM_STMT_BULK_EXECUTE = 0xFA

_COMMAND_NAMES = {
    0x00: "COM_SLEEP",
    COM_QUIT: "COM_QUIT",
    COM_FIELD_LIST: "COM_FIELD_LIST",
    0x05: "COM_CREATE_DB",
    0x06: "COM_DROP_DB",
    0x07: "COM_REFRESH",
    0x08: "COM_SHUTDOWN",
    0x09: "COM_STATISTICS",
    0x0A: "COM_PROCESS_INFO",
    0x0B: "COM_CONNECT",
    0x0C: "COM_PROCESS_KILL",
    0x0D: "COM_DEBUG",
    0x0F: "COM_TIME",
    0x10: "COM_DELAYED_INSERT",
    0x12: "COM_BINLOG_DUMP",
    0x13: "COM_TABLE_DUMP",
    0x14: "COM_CONNECT_OUT",
    0x15: "COM_REGISTER_SLAVE",
    COM_STMT_SEND_LONG_DATA: "COM_STMT_SEND_LONG_DATA",
    COM_STMT_CLOSE: "COM_STMT_CLOSE",
    COM_STMT_RESET: "COM_STMT_RESET",
    0x1B: "COM_SET_OPTION",
    COM_STMT_FETCH: "COM_STMT_FETCH",
    0x1D: "COM_DAEMON",
    0x1E: "COM_BINLOG_DUMP_GTID",
    0x1F: "COM_RESET_CONNECTION",
    0xFE: "COM_MULTI",
}
_TEXT_COMMANDS = {COM_QUERY: "query", COM_STMT_PREPARE: "prepare", COM_INIT_DB: "init_db"}
_EXECUTE_COMMANDS = {COM_STMT_EXECUTE, COM_STMT_BULK_EXECUTE}
_ID_COMMANDS = {COM_STMT_SEND_LONG_DATA, COM_STMT_CLOSE, COM_STMT_RESET, COM_STMT_FETCH}
_LAST_STATEMENT = 0xFFFFFFFF  # MariaDB: "the statement prepared last"


def handshake(
    login: TargetLogin,
    *,
    tls: bool = False,
    target_rsa_key: bytes | None = None,
    fetch_target_rsa_key: bool = False,
) -> MysqlHandshake:
    """The login machine of one channel: the broker logs in to the target as ``login``.

    ``tls``: the target leg is encrypted (the service's ``options.tls``): the machine sends an
    SSLRequest, the driver starts TLS when ``wants_tls`` says so and calls ``tls_started`` (or
    ``refuse``); a target that offers no TLS is refused. ``target_rsa_key`` (PEM) is the
    target's caching_sha2_password public key, for its full authentication without TLS;
    ``fetch_target_rsa_key`` lets the broker ask the target for it instead (over plain TCP: anyone
    who can change bytes on the path can swap it and learn the password, the way MySQL's
    ``--get-server-public-key`` does). Without TLS or either, full authentication is refused.
    """
    return MysqlHandshake(
        login, tls=tls, target_rsa_key=target_rsa_key, fetch_target_rsa_key=fetch_target_rsa_key
    )


def tap(*, max_pending: int = MAX_PENDING, text_limit: int = TEXT_LIMIT) -> MysqlTap:
    """The statement recorder of one channel, fed the client's bytes after the handshake."""
    return MysqlTap(max_pending=max_pending, text_limit=text_limit)


# --- encoding --------------------------------------------------------------------------------


def _packet(seq: int, payload: bytes) -> bytes:
    if len(payload) >= _MAX_PAYLOAD:  # never for what the machine writes
        raise ValueError("a handshake packet is at most 16 MiB")
    return len(payload).to_bytes(3, "little") + bytes([seq & 0xFF]) + payload


def _err(seq: int, error: tuple[int, str], message: str, *, protocol_41: bool = True) -> bytes:
    """An ERR packet. Before the greeting there is no SQLSTATE (the client has no capabilities yet)."""
    code, state = error
    body = b"\xff" + code.to_bytes(2, "little")
    if protocol_41:
        body += b"#" + state.encode("ascii")
    return _packet(seq, body + message.encode("utf-8", "replace")[:1024])


def _lenenc(n: int) -> bytes:
    if n < 0xFB:
        return bytes([n])
    if n < 1 << 16:
        return b"\xfc" + n.to_bytes(2, "little")
    if n < 1 << 24:
        return b"\xfd" + n.to_bytes(3, "little")
    return b"\xfe" + n.to_bytes(8, "little")


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


def native_password_scramble(password: str, scramble: bytes) -> bytes:
    """mysql_native_password: SHA1(pw) XOR SHA1(scramble + SHA1(SHA1(pw))); empty for no password."""
    if not password:
        return b""
    stage1 = hashlib.sha1(password.encode("utf-8")).digest()  # noqa: S324 - the protocol's hash
    stage2 = hashlib.sha1(stage1).digest()  # noqa: S324
    return _xor(stage1, hashlib.sha1(scramble[:20] + stage2).digest())  # noqa: S324


def caching_sha2_scramble(password: str, nonce: bytes) -> bytes:
    """caching_sha2_password's fast path: SHA256(pw) XOR SHA256(SHA256(SHA256(pw)) + nonce)."""
    if not password:
        return b""
    p1 = hashlib.sha256(password.encode("utf-8")).digest()
    p2 = hashlib.sha256(p1).digest()
    return _xor(p1, hashlib.sha256(p2 + nonce[:20]).digest())


def caching_sha2_rsa_password(password: str, nonce: bytes, pem: bytes) -> bytes:
    """caching_sha2_password's full authentication without TLS: RSA-OAEP(SHA-1) of the password
    and a NUL, XOR the nonce (repeated). Raises ValueError for a key that is not an RSA public key."""
    if not password:
        return b""
    # Imported here: only this path needs it (``cryptography`` is a broker dependency).
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    try:
        key = serialization.load_pem_public_key(pem)
    except UnsupportedAlgorithm as exc:
        raise ValueError(str(exc)) from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    plain = password.encode("utf-8") + b"\x00"
    nonce = nonce[:20]
    message = bytes(b ^ nonce[i % len(nonce)] for i, b in enumerate(plain))
    sha1 = hashes.SHA1()  # noqa: S303 - the protocol's choice
    return key.encrypt(message, padding.OAEP(mgf=padding.MGF1(algorithm=sha1), algorithm=sha1, label=None))


def _random_scramble() -> bytes:
    """20 printable bytes (no NUL: the greeting ends the scramble's second part with one)."""
    return bytes(0x21 + secrets.randbelow(0x7E - 0x21) for _ in range(20))


# --- decoding --------------------------------------------------------------------------------


class _Truncated(Exception):
    pass


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _Truncated
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "little")

    def nul(self, *, or_rest: bool = False) -> bytes:
        end = self.data.find(b"\x00", self.pos)
        if end < 0:
            if not or_rest:
                raise _Truncated
            end = len(self.data)
        out = self.data[self.pos : end]
        self.pos = min(end + 1, len(self.data))
        return out

    def lenenc_int(self) -> int:
        first = self.uint(1)
        if first < 0xFB:
            return first
        width = {0xFC: 2, 0xFD: 3, 0xFE: 8}.get(first)
        if width is None:
            raise _Truncated
        return self.uint(width)

    def lenenc_bytes(self) -> bytes:
        return self.take(self.lenenc_int())

    def rest(self) -> bytes:
        return self.take(self.remaining)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


class _Packets:
    """Handshake packets from one peer: a buffer with a ceiling, split into (seq, payload)."""

    __slots__ = ("buffer", "peer")

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.buffer = bytearray()

    def feed(self, data: bytes) -> None:
        if len(self.buffer) + len(data) > MAX_HANDSHAKE_PACKET + 4:
            raise _TooLarge(self.peer)
        self.buffer += data

    def next(self) -> tuple[int, bytes] | None:
        if len(self.buffer) < 4:
            return None
        length = int.from_bytes(self.buffer[:3], "little")
        if length > MAX_HANDSHAKE_PACKET:
            raise _TooLarge(self.peer)
        if len(self.buffer) < 4 + length:
            return None
        seq = self.buffer[3]
        payload = bytes(self.buffer[4 : 4 + length])
        del self.buffer[: 4 + length]
        return seq, payload


class _TooLarge(Exception):
    def __init__(self, peer: str) -> None:
        super().__init__(peer)
        self.peer = peer


# --- handshake -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Greeting:
    version: bytes
    connection_id: int
    scramble: bytes
    capabilities: int
    mariadb_capabilities: int  # 0 unless the server is MariaDB (CLIENT_MYSQL clear)
    charset: int
    status: int
    plugin: str


_AWAIT_GREETING = "await target greeting"
_AWAIT_RESPONSE = "await client response"
_AWAIT_TLS = "await TLS to the target"
_AWAIT_AUTH = "await the target's OK and the client's switch answer"
_DONE = "done"
_FAILED = "failed"


class MysqlHandshake(Outgoing):
    """Implements ``base.Handshake`` for MySQL and MariaDB (see the module's docstring)."""

    def __init__(
        self,
        login: TargetLogin,
        *,
        tls: bool = False,
        target_rsa_key: bytes | None = None,
        fetch_target_rsa_key: bool = False,
    ) -> None:
        super().__init__()
        self._login = login
        self._tls = tls
        self._after_tls = b""  # the HandshakeResponse41, held until TLS is up
        self._rsa_key = target_rsa_key
        self._fetch_rsa_key = fetch_target_rsa_key
        self._awaiting_rsa_key = False
        self._state = _AWAIT_GREETING
        self._client = _Packets("client")
        self._target = _Packets("target")
        self._greeting: _Greeting | None = None
        self._offered = 0  # capabilities offered to the client
        self._offered_mariadb = 0
        self._client_seq = 0  # the sequence id of the client's last packet
        self._client_switching = False  # the client was asked to switch to mysql_native_password
        self._client_scramble = _random_scramble()
        self._target_ok: bytes | None = None
        self._client_user: str | None = None
        self._plugin = NATIVE  # the plugin of the broker's last answer to the target
        self._nonce = b""  # the scramble the target gave with that plugin
        self._rounds = 0
        self._switched = False
        self._left_client = b""
        self._left_target = b""

    # The interface.

    @property
    def wants_target(self) -> bool:
        return True

    @property
    def done(self) -> bool:
        return self._state == _DONE

    @property
    def wants_tls(self) -> bool:
        """The SSLRequest is out: the driver must start TLS on the target leg now, then call
        ``tls_started`` (or ``refuse``). Nothing else goes to the target until then."""
        return self._state == _AWAIT_TLS

    def tls_started(self) -> None:
        """TLS to the target is up: the HandshakeResponse41 goes out (``data_to_target``).

        Raises:
            WireError: the machine was not waiting for TLS, or the client's buffered bytes are bad.
        """
        if self._state != _AWAIT_TLS:
            raise WireError(f"the MySQL handshake is not waiting for TLS ({self._state})")
        self._to_target += self._after_tls
        self._after_tls = b""
        self._state = _AWAIT_AUTH
        self._feed(self._client, b"")  # a client's answer to a plugin switch may be waiting

    def refuse(self, log: str, message: str) -> NoReturn:
        """End the login from outside (TLS did not start, the login's deadline passed): raise
        WireError (``log``) whose ERR carries ``message`` with the sequence id the client
        expects at this point of the login (0 before its greeting, after its last packet since)."""
        self._fail(log, ER_HANDSHAKE_ERROR, f"access: {message}")

    @property
    def client_user(self) -> str | None:
        """The user name the client presented (ignored: the grant decides the identity)."""
        return self._client_user

    def leftovers(self) -> tuple[bytes, bytes]:
        return self._left_client, self._left_target

    def feed_client(self, data: bytes) -> None:
        self._feed(self._client, data)

    def feed_target(self, data: bytes) -> None:
        self._feed(self._target, data)

    # The machine.

    def _feed(self, packets: _Packets, data: bytes) -> None:
        if self._state == _FAILED:
            raise WireError("the MySQL handshake already failed")
        if self._state == _DONE:
            if packets is self._client:
                self._left_client += data
            else:
                self._left_target += data
            return
        if self._state == _AWAIT_TLS and packets is self._target and data:
            # Bytes from the target after the SSLRequest came before TLS: never read as the login.
            self._fail(
                "the target sent bytes before TLS started",
                ER_HANDSHAKE_ERROR,
                "access: the target answered the broker's TLS request in clear; tell its owners",
            )
        try:
            packets.feed(data)
            self._advance()
        except _TooLarge as exc:
            self._fail(
                f"the {exc.peer} sent a handshake packet over {MAX_HANDSHAKE_PACKET} bytes",
                ER_NET_PACKET_TOO_LARGE,
                f"access: a handshake packet from the {exc.peer} is over {MAX_HANDSHAKE_PACKET} bytes",
            )
        except _Truncated:
            self._fail(
                f"a malformed handshake packet ({self._state})",
                ER_HANDSHAKE_ERROR,
                "access: bad handshake: a malformed packet; check the client and the target",
            )

    def _fail(self, log: str, error: tuple[int, str], message: str) -> NoReturn:
        """Raise WireError with an ERR for the client: its sequence id follows the client's last packet."""
        greeted = self._state != _AWAIT_GREETING
        # A client asked to switch plugins gets the ERR after its answer to the switch.
        seq = (self._client_seq or 1) + (3 if self._client_switching else 1) if greeted else 0
        self._state = _FAILED
        raise WireError(log, _err(seq, error, message, protocol_41=greeted))

    def _advance(self) -> None:
        while True:
            if self._state == _AWAIT_GREETING:
                got = self._target.next()
                if got is None:
                    return
                self._on_greeting(got[1])
            elif self._state == _AWAIT_RESPONSE:
                got = self._client.next()
                if got is None:
                    return
                self._on_response(*got)
            elif self._state == _AWAIT_AUTH:
                got = self._client.next() if self._client_switching else None
                if got is not None:
                    self._client_seq = got[0]  # its answer is not checked either
                    self._client_switching = False
                elif self._target_ok is None and (got := self._target.next()) is not None:
                    self._on_auth(*got)
                elif self._target_ok is not None and not self._client_switching:
                    self._finish(self._target_ok)
                else:
                    return
            else:
                return

    def _on_greeting(self, payload: bytes) -> None:
        if payload[:1] == b"\xff":
            self._fail(
                "the target refused the connection before its greeting",
                ER_HANDSHAKE_ERROR,
                f"access: the target refused the connection: {_err_message(payload)}",
            )
        r = _Reader(payload)
        if r.uint(1) != 10:
            self._fail(
                "the target does not speak protocol version 10",
                ER_HANDSHAKE_ERROR,
                "access: the target does not speak the MySQL protocol version 10",
            )
        version = r.nul()
        connection_id = r.uint(4)
        scramble = r.take(8)
        r.take(1)
        caps = r.uint(2)
        charset, status, mariadb, plugin = 0x21, 0, 0, NATIVE
        if r.remaining:
            charset = r.uint(1)
            status = r.uint(2)
            caps |= r.uint(2) << 16
            auth_len = r.uint(1)
            reserved = r.take(10)
            if not caps & CLIENT_MYSQL:
                mariadb = int.from_bytes(reserved[6:10], "little")
            if caps & CLIENT_SECURE_CONNECTION:
                scramble += r.take(max(13, auth_len - 8))
            if caps & CLIENT_PLUGIN_AUTH:
                plugin = _text(r.nul(or_rest=True))
        needed = CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION
        if caps & needed != needed:
            self._fail(
                "the target does not speak the 4.1 protocol",
                ER_HANDSHAKE_ERROR,
                "access: the target's MySQL protocol is older than 4.1; the broker cannot log in to it",
            )
        if self._tls and not caps & CLIENT_SSL:
            # Fail closed: the service asks for TLS, so nothing of the login goes in clear.
            self._fail(
                "the target offers no TLS, which the service's options.tls asks for",
                ER_HANDSHAKE_ERROR,
                "access: the target offers no TLS, which this service's options.tls asks for; "
                "operators: enable TLS on the target, or set options.tls to disable",
            )
        greeting = _Greeting(version, connection_id, scramble[:20], caps, mariadb, charset, status, plugin)
        self._greeting = greeting
        self._offered = caps & _CLIENT_ALLOWED
        self._offered_mariadb = mariadb & _MARIADB_ALLOWED
        self._to_client += _packet(0, self._client_greeting(greeting))
        self._state = _AWAIT_RESPONSE

    def _client_greeting(self, target: _Greeting) -> bytes:
        scramble = self._client_scramble
        caps = self._offered
        reserved = bytes(6) + (
            self._offered_mariadb.to_bytes(4, "little") if not caps & CLIENT_MYSQL else bytes(4)
        )
        out = (
            b"\x0a"
            + target.version
            + b"\x00"
            + target.connection_id.to_bytes(4, "little")
            + scramble[:8]
            + b"\x00"
            + (caps & 0xFFFF).to_bytes(2, "little")
            + bytes([target.charset])
            + target.status.to_bytes(2, "little")
            + (caps >> 16 & 0xFFFF).to_bytes(2, "little")
            + bytes([21 if caps & CLIENT_PLUGIN_AUTH else 0])
            + reserved
            + scramble[8:]
            + b"\x00"
        )
        if caps & CLIENT_PLUGIN_AUTH:
            out += NATIVE.encode() + b"\x00"
        return out

    def _on_response(self, seq: int, payload: bytes) -> None:
        self._client_seq = seq
        r = _Reader(payload)
        raw_caps = r.uint(4)
        if not raw_caps & CLIENT_PROTOCOL_41:
            self._fail(
                "the client speaks the pre-4.1 protocol",
                ER_HANDSHAKE_ERROR,
                "access: the client's MySQL protocol is older than 4.1; use a newer client",
            )
        max_packet = r.uint(4)
        charset = r.uint(1)
        filler = r.take(23)
        if raw_caps & CLIENT_SSL and not r.remaining:
            self._fail(
                "the client asked for TLS",
                ER_HANDSHAKE_ERROR,
                "access: the local tunnel offers no TLS (the tunnel to the broker is already encrypted); "
                "connect without TLS, e.g. mysql --ssl=0 or --ssl-mode=DISABLED",
            )
        caps = raw_caps & self._offered
        client_mariadb = 0 if raw_caps & CLIENT_MYSQL else int.from_bytes(filler[19:23], "little")
        self._client_user = _text(r.nul(or_rest=True))
        if caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
            r.lenenc_bytes()
        elif caps & CLIENT_SECURE_CONNECTION:
            r.take(r.uint(1))
        else:
            r.nul(or_rest=True)
        database: bytes | None = None
        if caps & CLIENT_CONNECT_WITH_DB and r.remaining:
            database = r.nul(or_rest=True)
        # Whatever the client answered is not checked, but a client that answered for another
        # plugin (a MySQL 8 client's caching_sha2_password, --default-auth) expects that plugin's
        # exchange: switch it to mysql_native_password, as a server would.
        if caps & CLIENT_PLUGIN_AUTH and r.remaining and _text(r.nul(or_rest=True)) != NATIVE:
            self._client_switching = True
            self._to_client += _packet(
                seq + 1, b"\xfe" + NATIVE.encode() + b"\x00" + self._client_scramble + b"\x00"
            )
        attributes: bytes | None = None
        if caps & CLIENT_CONNECT_ATTRS and r.remaining:
            start = r.pos
            r.lenenc_bytes()
            attributes = payload[start : r.pos]
        if self._login.database is not None:
            database = self._login.database.encode("utf-8")
        out = self._target_response(raw_caps, caps, client_mariadb, max_packet, charset, database, attributes)
        # The greeting was 0, the client's answer (and so the broker's) 1.
        if self._tls:
            # The SSLRequest is the response's first 32 bytes (its capabilities, CLIENT_SSL among
            # them, its max packet, character set and MariaDB's extended capabilities): the
            # server reads them from it, so they must be the response's own.
            self._to_target += _packet(seq, out[:32])
            self._after_tls = _packet(seq + 1, out)
            self._state = _AWAIT_TLS
        else:
            self._to_target += _packet(seq, out)
            self._state = _AWAIT_AUTH

    def _target_response(
        self,
        raw_caps: int,
        caps: int,
        client_mariadb: int,
        max_packet: int,
        charset: int,
        database: bytes | None,
        attributes: bytes | None,
    ) -> bytes:
        target = self._greeting
        assert target is not None
        theirs = target.capabilities
        out_caps = (caps & ~_HANDSHAKE_ONLY) | (raw_caps & CLIENT_MYSQL)
        out_caps |= CLIENT_PROTOCOL_41 | CLIENT_SECURE_CONNECTION
        out_caps |= theirs & (CLIENT_PLUGIN_AUTH | CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA)
        if database is not None:
            out_caps |= CLIENT_CONNECT_WITH_DB
        if attributes is not None and theirs & CLIENT_CONNECT_ATTRS:
            out_caps |= CLIENT_CONNECT_ATTRS
        if self._tls:
            out_caps |= CLIENT_SSL
        mariadb = client_mariadb & self._offered_mariadb if not out_caps & CLIENT_MYSQL else 0
        self._plugin = target.plugin if target.plugin in (NATIVE, CACHING_SHA2) else NATIVE
        self._nonce = target.scramble
        auth = self._auth_data()
        out = (
            out_caps.to_bytes(4, "little")
            + max_packet.to_bytes(4, "little")
            + bytes([charset])
            + bytes(19)
            + mariadb.to_bytes(4, "little")
            + self._login.user.encode("utf-8")
            + b"\x00"
        )
        if out_caps & CLIENT_PLUGIN_AUTH_LENENC_CLIENT_DATA:
            out += _lenenc(len(auth)) + auth
        else:
            out += bytes([len(auth)]) + auth
        if database is not None:
            out += database + b"\x00"
        if out_caps & CLIENT_PLUGIN_AUTH:
            out += self._plugin.encode() + b"\x00"
        if out_caps & CLIENT_CONNECT_ATTRS and attributes is not None:
            out += attributes
        return out

    def _auth_data(self) -> bytes:
        if self._plugin == ED25519:
            return ed25519.sign(self._login.password.encode("utf-8"), self._nonce)
        if self._plugin == CACHING_SHA2:
            return caching_sha2_scramble(self._login.password, self._nonce)
        return native_password_scramble(self._login.password, self._nonce)

    def _on_auth(self, seq: int, payload: bytes) -> None:
        self._rounds += 1
        if self._rounds > MAX_AUTH_ROUNDS:
            self._fail(
                "the target's authentication does not end",
                ER_HANDSHAKE_ERROR,
                "access: the target's authentication exchange did not end",
            )
        kind = payload[:1]
        if kind == b"\x00":
            self._target_ok = payload
        elif kind == b"\xff":
            self._fail(
                "the target refused the broker's login",
                ER_ACCESS_DENIED,
                f"access: the target refused the broker's login for this grant: {_err_message(payload)}",
            )
        elif kind == b"\xfe":
            self._on_switch(seq, payload)
        elif kind == b"\x01" and self._awaiting_rsa_key:
            self._awaiting_rsa_key = False
            self._to_target += _packet(seq + 1, self._rsa_password(payload[1:]))
        elif kind == b"\x01" and self._plugin == CACHING_SHA2 and payload[1:2] == b"\x03":
            pass  # fast auth success: the OK follows
        elif kind == b"\x01" and self._plugin == CACHING_SHA2 and payload[1:2] == b"\x04":
            self._full_authentication(seq)
        else:
            self._fail(
                f"an unexpected packet 0x{payload[:1].hex()} from the target during authentication",
                ER_HANDSHAKE_ERROR,
                "access: the target answered the broker's login with an unexpected packet",
            )

    def _full_authentication(self, seq: int) -> None:
        """caching_sha2_password's full authentication: the password itself, over TLS in clear
        (as MySQL's clients send it), else RSA-encrypted."""
        if self._tls:
            self._to_target += _packet(seq + 1, self._login.password.encode("utf-8") + b"\x00")
        elif self._rsa_key is not None:
            self._to_target += _packet(seq + 1, self._rsa_password(self._rsa_key))
        elif self._fetch_rsa_key:
            self._awaiting_rsa_key = True
            self._to_target += _packet(seq + 1, b"\x02")  # "send me your public key"
        else:
            self._unsupported(
                "caching_sha2_password full authentication (the target's cache does not know this "
                "identity yet: it needs TLS to the target or the target's RSA public key)"
            )

    def _rsa_password(self, pem: bytes) -> bytes:
        try:
            return caching_sha2_rsa_password(self._login.password, self._nonce, pem)
        except ValueError:
            self._fail(
                "the target's RSA public key is unusable",
                ER_HANDSHAKE_ERROR,
                "access: the target's RSA public key for caching_sha2_password is unusable",
            )

    def _finish(self, ok: bytes) -> None:
        self._to_client += _packet(self._client_seq + 1, ok)
        self._left_client = bytes(self._client.buffer)
        self._left_target = bytes(self._target.buffer)
        self._client.buffer.clear()
        self._target.buffer.clear()
        self._state = _DONE

    def _on_switch(self, seq: int, payload: bytes) -> None:
        r = _Reader(payload)
        r.take(1)
        if self._switched or not r.remaining:
            self._unsupported("a second authentication switch" if self._switched else "mysql_old_password")
        self._switched = True
        plugin = _text(r.nul(or_rest=True))
        nonce = r.rest()  # native and caching_sha2: 20 bytes and a NUL; ed25519: 32 bytes (any of them NUL)
        size = _NONCE_SIZES.get(plugin)
        if size is None or len(nonce) < size:
            self._unsupported(plugin)
        self._plugin, self._nonce = plugin, nonce[:size]
        self._to_target += _packet(seq + 1, self._auth_data())

    def _unsupported(self, what: str) -> NoReturn:
        self._fail(
            f"the target asks for {what}, which the broker does not support",
            ER_NOT_SUPPORTED_AUTH_MODE,
            f"access: the target asks for {what}, which the broker cannot do; "
            "create the grant's identities on this target with mysql_native_password or ed25519",
        )


def _err_message(payload: bytes) -> str:
    """The message of an ERR packet (with or without its SQLSTATE), cut at 512 characters."""
    r = _Reader(payload)
    try:
        r.take(1)
        code = r.uint(2)
        rest = r.rest()
    except _Truncated:
        return "(no message)"
    if rest[:1] == b"#":
        rest = rest[6:]
    return f"{code} {_text(rest[:512])}"


# --- tap -------------------------------------------------------------------------------------


class MysqlTap:
    """Implements ``base.Tap`` for MySQL and MariaDB (see the module's docstring).

    State per chunk: the header bytes of a packet split across chunks (at most 4), how many
    payload bytes of the current packet are still to come, and the first bytes of the current
    command (at most the text ceiling): no work or copy per payload byte beyond those.
    """

    __slots__ = (
        "_body",
        "_command",
        "_data_bytes",
        "_dropped",
        "_failed",
        "_head",
        "_header",
        "_keep",
        "_left",
        "_max_pending",
        "_more",
        "_payload_bytes",
        "_pending",
        "_text_limit",
        "terminated",
    )

    def __init__(self, *, max_pending: int = MAX_PENDING, text_limit: int = TEXT_LIMIT) -> None:
        self._max_pending = max_pending
        self._text_limit = text_limit
        self._pending: list[Statement] = []
        self._dropped = 0
        self._header = bytearray()
        self._body = False  # inside a packet's payload
        self._left = 0  # payload bytes of the current packet still to come
        self._more = False  # the current packet is 0xFFFFFF long: the payload goes on in the next
        self._command = False  # the current payload is a command (its first packet had sequence id 0)
        self._head = bytearray()  # the kept first bytes of the current command
        self._keep = 1  # how many of its first bytes to keep (set once the command byte is known)
        self._payload_bytes = 0  # bytes of the current payload so far
        self._data_bytes = 0  # bytes of LOAD DATA LOCAL content since the last command
        self._failed = False
        self.terminated = False  # the client sent COM_QUIT

    @property
    def dropped(self) -> int:
        """Statements not kept because ``max_pending`` were waiting for ``take``."""
        return self._dropped

    def take(self) -> list[Statement]:
        out = self._pending
        self._pending = []
        return out

    def client_bytes(self, data: bytes | memoryview) -> None:
        if self._failed:
            raise WireError("the MySQL tap already refused this stream")
        view = memoryview(data)
        end = len(view)
        i = 0
        while i < end:
            if not self._body:
                need = 4 - len(self._header)
                self._header += view[i : i + need]
                i += min(need, end - i)
                if len(self._header) == 4:
                    self._start_packet()
                continue
            n = min(self._left, end - i)
            if self._command and len(self._head) < self._keep:
                if not self._head:
                    self._on_command_byte(view[i])
                self._head += view[i : i + min(n, self._keep - len(self._head))]
            i += n
            self._left -= n
            if not self._left:
                self._end_packet()

    def _start_packet(self) -> None:
        header = self._header
        length = header[0] | header[1] << 8 | header[2] << 16
        seq = header[3]
        header.clear()
        if not self._more:  # a new payload
            self._command = seq == 0
            self._head.clear()
            self._keep = 1
            self._payload_bytes = 0
            if self._command:
                self._data_bytes = 0
        self._more = length == _MAX_PAYLOAD
        self._payload_bytes += length
        if not self._command:
            self._data_bytes += length
        self._left = length
        self._body = length > 0
        if not length:
            self._end_packet()

    def _end_packet(self) -> None:
        self._body = False
        if self._more:
            return
        if self._command:
            self._record_command()
        elif not self._payload_bytes:  # the empty payload that ends LOAD DATA LOCAL's content
            self._record(Statement("local_infile", f"{self._data_bytes} bytes"))
            self._data_bytes = 0

    def _on_command_byte(self, command: int) -> None:
        if command == COM_QUIT:
            self.terminated = True
        if command == COM_CHANGE_USER:
            self._failed = True
            raise WireError(
                "the client sent COM_CHANGE_USER",
                _err(
                    1,
                    ER_SPECIFIC_ACCESS_DENIED,
                    "access: COM_CHANGE_USER is refused: this connection's identity is the grant's; "
                    "open a new connection instead",
                ),
            )
        if command in _TEXT_COMMANDS or command == COM_FIELD_LIST:
            self._keep = 1 + self._text_limit
        elif command in _EXECUTE_COMMANDS or command in _ID_COMMANDS:
            self._keep = 5  # the command byte and the statement id: never the parameters after it

    def _record_command(self) -> None:
        head = bytes(self._head)
        if not head:
            self._record(Statement("command", "COM_EMPTY"))
            return
        command = head[0]
        if command == COM_PING:
            return
        kind = _TEXT_COMMANDS.get(command)
        if kind is not None:
            self._record(Statement(kind, _text(head[1:])))
        elif command in _EXECUTE_COMMANDS:
            self._record(Statement("execute", "", _statement_id(head)))
        elif command in _ID_COMMANDS:
            self._record(Statement("command", _COMMAND_NAMES[command], _statement_id(head)))
        elif command == COM_FIELD_LIST:
            table = head[1:].split(b"\x00", 1)[0]
            self._record(Statement("command", f"COM_FIELD_LIST {_text(table)}"))
        else:
            self._record(Statement("command", _COMMAND_NAMES.get(command, f"COM_0x{command:02X}")))

    def _record(self, statement: Statement) -> None:
        if len(self._pending) < self._max_pending:
            self._pending.append(statement)
        else:
            self._dropped += 1


def _statement_id(head: bytes) -> str | None:
    if len(head) < 5:
        return None
    sid = int.from_bytes(head[1:5], "little")
    return "last" if sid == _LAST_STATEMENT else str(sid)
