"""PostgreSQL's frontend/backend protocol 3.0, sans-I/O: the broker's login and the statement tap.

**Client leg.** The client reaches the tunnel's local listener with no password. ``SSLRequest``
and ``GSSENCRequest`` get ``N`` (the tunnel itself is TLS; the loopback leg needs nothing more),
then the client's ``StartupMessage`` is read. Its parameters (``options``, ``application_name``,
``client_encoding``, ...) go on to the target, except:

* ``user`` is ignored: the broker logs in as the grant's identity (``TargetLogin.user``); the
  client does not know that name and does not need to.
* ``database``: when the grant names one, the client may ask for that one or none; asking for
  any other is refused with an ErrorResponse saying which database the grant is for (libpq
  defaults the database to the user name, so ``psql`` without ``-d`` is refused: nothing is
  quietly swapped). When the grant names none, the client's choice goes through.
* ``replication`` (other than off) is refused: a grant is for SQL sessions.
* ``_pq_.*`` protocol options and minor versions past 3.0 are declined with a
  NegotiateProtocolVersion, as a 3.0 server does.

A ``CancelRequest`` as the first message is surfaced as ``cancel_request`` (pid, secret) for
the broker to map: the client only ever sees a broker-chosen BackendKeyData (``client_key``),
never the target's (``target_key``), so a cancel reaches a target only through the broker's
map, and only for the same channel's session. ``cancel_message`` builds the request the
broker sends the target; ``cancel_key_matches`` compares keys in constant time.

**Target leg.** The broker sends a StartupMessage with the grant's user and database and
answers AuthenticationCleartextPassword (only with ``allow_cleartext``: the target leg may be
plain TCP), AuthenticationMD5Password and AuthenticationSASL with SCRAM-SHA-256 (``scramp`` for
the messages, ``wire.scram`` for the proof, with the salted password cached per login so a new
connection costs a few HMACs, not PBKDF2; the server's proof is checked). SCRAM-SHA-256-PLUS is
not offered: channel binding needs TLS on the target leg, which this machine does not see. The
client gets a synthesized AuthenticationOk (it never authenticates), then the target's
ParameterStatus, NoticeResponse, BackendKeyData (rewritten) and ReadyForQuery. An ErrorResponse
from the target during the login becomes a ``WireError`` whose ``client_message`` is an
ErrorResponse naming the refusal, with the target's SQLSTATE; the password never appears in it.

**Tap** (``wire.pgtap``: it runs per message, so it is compiled with the tunnel's hot path).
After the handshake, the client's messages are walked by their lengths. Statements:
``query`` (a Query's text, several statements as one), ``parse`` (a Parse: its text, and its
name), ``execute`` (an Execute: the name and text of the statement its portal was bound to,
tracked from Bind, the last 100 named ones remembered), ``function`` (a FunctionCall: the
function's OID). The unnamed statement has ``name`` None. Parameter values are never decoded;
CopyData is only counted (``copy_bytes``); Terminate sets ``terminated``. Texts are cut at
4 KiB (decoded as UTF-8, with replacement); at most 1000 statements wait for ``take``, the rest
are counted in ``dropped``.

Ceilings: a startup message 10000 bytes (PostgreSQL's own), any other handshake message
64 KiB, all the target's login bytes 1 MiB, client bytes held during the login 64 KiB, SCRAM
iterations 100000 (each login runs PBKDF2 on the broker); past one, a ``WireError``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import struct
from typing import Final

import scramp

from access.broker.wire import scram
from access.broker.wire.base import Handshake, Outgoing, Tap, TargetLogin, WireError
from access.broker.wire.pgtap import (
    LARGEST_MESSAGE,
    NAME_CEILING,
    PENDING_CEILING,
    STATEMENTS_KEPT,
    TEXT_CEILING,
    PostgresTap,
)

__all__ = [
    "LARGEST_MESSAGE",
    "NAME_CEILING",
    "PENDING_CEILING",
    "STATEMENTS_KEPT",
    "TEXT_CEILING",
    "PostgresHandshake",
    "PostgresTap",
    "cancel_key_matches",
    "cancel_message",
    "error_response",
    "handshake",
    "tap",
]

PROTOCOL_3_0: Final = 3 << 16
SSL_REQUEST: Final = 80877103
GSSENC_REQUEST: Final = 80877104
CANCEL_REQUEST: Final = 80877102

STARTUP_CEILING: Final = 10_000  # PostgreSQL's MAX_STARTUP_PACKET_LENGTH
MESSAGE_CEILING: Final = 64 * 1024
LOGIN_CEILING: Final = 1024 * 1024  # every byte the target sends before ReadyForQuery
EARLY_CEILING: Final = 64 * 1024  # client bytes held while the target logs in
SCRAM_ITERATIONS_CEILING: Final = 100_000

_AUTH_OK: Final = 0
_AUTH_CLEARTEXT: Final = 3
_AUTH_MD5: Final = 5
_AUTH_SASL: Final = 10
_AUTH_SASL_CONTINUE: Final = 11
_AUTH_SASL_FINAL: Final = 12
_AUTH_NAMES: Final = {2: "Kerberos V5", 6: "SCM credentials", 7: "GSSAPI", 8: "GSSAPI", 9: "SSPI"}

_SCRAM: Final = "SCRAM-SHA-256"
_REFUSED_PREFIX: Final = "access: the target refused the broker's login for this grant: "
_REPLICATION_OFF: Final = frozenset({b"false", b"off", b"no", b"0"})

_U32 = struct.Struct("!I")
_U32X2 = struct.Struct("!II")


def _message(kind: bytes, body: bytes) -> bytes:
    return kind + _U32.pack(len(body) + 4) + body


def _cstring(text: str) -> bytes:
    return text.encode() + b"\0"


def error_response(
    message: str,
    *,
    code: str = "08P01",
    severity: str = "FATAL",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """An ErrorResponse the client prints (``code`` is the SQLSTATE; 08P01: protocol violation)."""
    body = b"S" + _cstring(severity) + b"V" + _cstring(severity) + b"C" + _cstring(code)
    body += b"M" + _cstring(message.replace("\0", ""))
    if detail:
        body += b"D" + _cstring(detail.replace("\0", ""))
    if hint:
        body += b"H" + _cstring(hint.replace("\0", ""))
    return _message(b"E", body + b"\0")


def cancel_message(pid: int, key: int) -> bytes:
    """The CancelRequest to send the target, on a connection of its own, for ``target_key``."""
    return _U32.pack(16) + _U32.pack(CANCEL_REQUEST) + _U32X2.pack(pid, key)


def cancel_key_matches(issued: tuple[int, int], presented: tuple[int, int]) -> bool:
    """Whether a client's CancelRequest carries the key the broker issued (constant time)."""
    return hmac.compare_digest(_U32X2.pack(*issued), _U32X2.pack(*presented))


def _fields(body: bytes) -> dict[str, str]:
    """An ErrorResponse's or NoticeResponse's fields, by their one-letter codes."""
    found: dict[str, str] = {}
    for part in body.split(b"\0"):
        if part:
            found[chr(part[0])] = part[1:].decode("utf-8", "replace")
    return found


class _Fail(Exception):
    """Internal: a refusal in the client's terms, raised as a WireError by the public methods."""

    def __init__(self, message: str, code: str = "08P01", hint: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.hint = hint


_CLIENT_STARTUP: Final = 0
_CANCEL: Final = 1
_TARGET_LOGIN: Final = 2
_TARGET_STARTUP: Final = 3
_DONE: Final = 4


class PostgresHandshake(Outgoing):
    """The broker's side of one channel's login: client leg and target leg (see the module)."""

    def __init__(
        self, login: TargetLogin, *, client_key: tuple[int, int] | None = None, allow_cleartext: bool = False
    ) -> None:
        for value in (login.user, login.password, login.database or ""):
            if "\0" in value:
                raise ValueError("a target login cannot contain NUL characters")
        super().__init__()
        self._login = login
        self._allow_cleartext = allow_cleartext
        self._state = _CLIENT_STARTUP
        self._client = bytearray()  # startup bytes being read; then the early bytes (leftovers)
        self._target = bytearray()
        self._target_seen = 0
        self._target_rest = b""
        self._negotiated: set[int] = set()
        self._held_notices: list[bytes] = []
        self._scram: scramp.ScramClient | None = None
        self._scram_final: scram.ClientFinal | None = None
        self._scram_done = False
        self._cancel: tuple[int, int] | None = None
        self._target_key: tuple[int, int] | None = None
        self._client_key = client_key or (secrets.randbelow(0x7FFFFFFE) + 1, secrets.randbits(32))
        self.parameters: dict[str, str] = {}
        """The client's startup parameters as it sent them (``user`` and ``database`` included)."""

    # -- the Handshake interface -------------------------------------------------------------

    def feed_client(self, data: bytes) -> None:
        if self._state == _CANCEL:
            return  # PostgreSQL reads nothing after a CancelRequest either
        self._client += data
        if self._state != _CLIENT_STARTUP:
            if len(self._client) > EARLY_CEILING:
                raise self._client_error(
                    _Fail(f"the client sent more than {EARLY_CEILING} bytes before the login finished")
                )
            return
        try:
            self._read_startup()
        except _Fail as fail:
            raise self._client_error(fail) from None

    def feed_target(self, data: bytes) -> None:
        if self._state == _DONE:
            self._target_rest += data
            return
        if self._state not in (_TARGET_LOGIN, _TARGET_STARTUP):
            raise WireError("the target spoke before the broker dialled it", self._generic_error())
        self._target_seen += len(data)
        if self._target_seen > LOGIN_CEILING:
            raise self._target_error(f"the target sent more than {LOGIN_CEILING} bytes during the login")
        self._target += data
        while self._state in (_TARGET_LOGIN, _TARGET_STARTUP) and len(self._target) >= 5:
            length = _U32.unpack_from(self._target, 1)[0]
            if length < 4 or length > MESSAGE_CEILING:
                raise self._target_error(f"the target sent a login message of {length} bytes")
            if len(self._target) < length + 1:
                return
            kind = self._target[0]
            body = bytes(self._target[5 : length + 1])
            del self._target[: length + 1]
            self._target_message(kind, body)
        if self._state == _DONE:
            self._target_rest = bytes(self._target)
            self._target.clear()

    @property
    def wants_target(self) -> bool:
        return self._state in (_TARGET_LOGIN, _TARGET_STARTUP, _DONE)

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def leftovers(self) -> tuple[bytes, bytes]:
        """Bytes past the login, taken (and cleared): the client's go through the tap and on to
        the target, the target's on to the client."""
        if self._state != _DONE:
            return b"", b""
        client, target = bytes(self._client), self._target_rest
        self._client.clear()
        self._target_rest = b""
        return client, target

    # -- what the broker maps ----------------------------------------------------------------

    @property
    def cancel_request(self) -> tuple[int, int] | None:
        """(pid, secret) when the client's connection is a CancelRequest: the broker looks the
        pair up among the ``client_key`` it issued, and sends ``cancel_message(*target_key)``
        to that channel's target. Nothing else happens on this connection."""
        return self._cancel

    @property
    def client_key(self) -> tuple[int, int]:
        """The (pid, secret) BackendKeyData the client gets instead of the target's."""
        return self._client_key

    @property
    def target_key(self) -> tuple[int, int] | None:
        """The target's own (pid, secret), once it sent it: what a cancel for this channel uses."""
        return self._target_key

    # -- client leg --------------------------------------------------------------------------

    def _read_startup(self) -> None:
        while self._state == _CLIENT_STARTUP and len(self._client) >= 4:
            length = _U32.unpack_from(self._client)[0]
            if self._client[0] == 0x16:
                raise _Fail(
                    "the client started TLS directly (sslnegotiation=direct): the tunnel is "
                    "already encrypted; connect with sslmode=disable or prefer"
                )
            if length < 8 or length > STARTUP_CEILING:
                raise _Fail(f"invalid startup packet length {length}")
            if len(self._client) < length:
                return
            message = bytes(self._client[:length])
            del self._client[:length]
            self._startup_message(message)
        if self._state == _CANCEL:
            self._client.clear()
        elif self._state != _CLIENT_STARTUP and len(self._client) > EARLY_CEILING:
            raise _Fail(f"the client sent more than {EARLY_CEILING} bytes before the login finished")

    def _startup_message(self, message: bytes) -> None:
        code = _U32.unpack_from(message, 4)[0]
        if code in (SSL_REQUEST, GSSENC_REQUEST):
            if len(message) != 8 or code in self._negotiated:
                raise _Fail("invalid encryption negotiation")
            self._negotiated.add(code)
            self._to_client += b"N"
        elif code == CANCEL_REQUEST:
            if len(message) != 16:
                raise _Fail("invalid cancel request length")
            pid, key = _U32X2.unpack_from(message, 8)
            self._cancel = (pid, key)
            self._state = _CANCEL
        elif code >> 16 == 3:
            self._startup(code & 0xFFFF, message[8:])
        else:
            raise _Fail(
                f"unsupported frontend protocol {code >> 16}.{code & 0xFFFF}: the broker speaks 3.0",
                code="0A000",
            )

    def _startup(self, minor: int, body: bytes) -> None:
        parts = body.split(b"\0")
        # name\0value\0 ... \0: splitting leaves an even number of parts, then two empty ones.
        if len(parts) < 2 or parts[-1] or parts[-2] or len(parts) % 2:
            raise _Fail("invalid startup packet layout: expected terminator as last byte")
        pairs = list(zip(parts[:-2:2], parts[1:-2:2], strict=True))
        if any(not name for name, _ in pairs):
            raise _Fail("invalid startup packet layout: an empty parameter name")
        forwarded: list[tuple[bytes, bytes]] = []
        declined: list[bytes] = []
        database: bytes | None = None
        for name, value in pairs:
            self.parameters[name.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
            if name == b"user":
                continue
            if name == b"database":
                database = value or None
            elif name.startswith(b"_pq_."):
                declined.append(name)
            elif name == b"replication" and value.lower() not in _REPLICATION_OFF:
                raise _Fail("access: replication connections are not part of a grant", code="42501")
            else:
                forwarded.append((name, value))
        wanted = self._login.database
        if wanted is not None and database is not None and database != wanted.encode():
            asked = database.decode("utf-8", "replace")
            raise _Fail(
                f'access: this grant is for database "{wanted}", not "{asked}"',
                code="42501",
                hint=f"Connect with dbname={wanted} (psql -d {wanted}).",
            )
        if minor > 0 or declined:
            negotiate = _U32X2.pack(PROTOCOL_3_0, len(declined)) + b"".join(name + b"\0" for name in declined)
            self._to_client += _message(b"v", negotiate)
        target_database = wanted.encode() if wanted is not None else database
        startup = b"user\0" + self._login.user.encode() + b"\0"
        if target_database is not None:
            startup += b"database\0" + target_database + b"\0"
        startup += b"".join(name + b"\0" + value + b"\0" for name, value in forwarded) + b"\0"
        self._to_target += _U32X2.pack(len(startup) + 8, PROTOCOL_3_0) + startup
        self._state = _TARGET_LOGIN

    def _client_error(self, fail: _Fail) -> WireError:
        return WireError(
            f"PostgreSQL client: {fail}", error_response(str(fail), code=fail.code, hint=fail.hint)
        )

    @staticmethod
    def _generic_error() -> bytes:
        return error_response("access: the broker could not log in to the target", code="08006")

    # -- target leg --------------------------------------------------------------------------

    def _target_error(self, reason: str, code: str = "08P01") -> WireError:
        """The target misbehaved (or asked for what the broker cannot do)."""
        return WireError(f"PostgreSQL target: {reason}", error_response(_REFUSED_PREFIX + reason, code=code))

    def _scrub(self, text: str) -> str:
        password = self._login.password
        return text.replace(password, "[redacted]") if password else text

    def _target_message(self, kind: int, body: bytes) -> None:
        if kind == 0x45:  # E: the target refused
            fields = _fields(body)
            message = self._scrub(fields.get("M", "no message"))
            code = fields.get("C", "28000")
            detail, hint = fields.get("D"), fields.get("H")
            raise WireError(
                f"PostgreSQL target refused the login: {code} {message}",
                error_response(
                    _REFUSED_PREFIX + message,
                    code=code,
                    detail=self._scrub(detail) if detail else None,
                    hint=self._scrub(hint) if hint else None,
                ),
            )
        if kind == 0x4E:  # N: a notice
            notice = _message(b"N", body)
            if self._state == _TARGET_STARTUP:
                self._to_client += notice
            else:
                self._held_notices.append(notice)
        elif self._state == _TARGET_LOGIN:
            if kind == 0x52:  # R
                self._authentication(body)
            elif kind != 0x76:  # v: NegotiateProtocolVersion; the broker asked for plain 3.0
                raise self._target_error(f"unexpected message {chr(kind)!r} during authentication")
        elif kind == 0x53:  # S: ParameterStatus
            self._to_client += _message(b"S", body)
        elif kind == 0x4B:  # K: BackendKeyData
            if len(body) != 8:
                raise self._target_error("BackendKeyData is not protocol 3.0's")
            self._target_key = _U32X2.unpack(body)
            self._to_client += _message(b"K", _U32X2.pack(*self._client_key))
        elif kind == 0x5A:  # Z: ReadyForQuery
            self._to_client += _message(b"Z", body)
            self._state = _DONE
        else:
            raise self._target_error(f"unexpected message {chr(kind)!r} after authentication")

    def _authentication(self, body: bytes) -> None:
        if len(body) < 4:
            raise self._target_error("a short authentication request")
        method = _U32.unpack_from(body)[0]
        data = body[4:]
        if method == _AUTH_OK:
            if self._scram is not None and not self._scram_done:
                raise self._target_error("the target ended SCRAM without proving it knows the password")
            self._to_client += _message(b"R", _U32.pack(_AUTH_OK))
            for notice in self._held_notices:
                self._to_client += notice
            self._held_notices.clear()
            self._state = _TARGET_STARTUP
        elif method == _AUTH_CLEARTEXT:
            if not self._allow_cleartext:
                raise self._target_error(
                    "it asks for the password in clear text (pg_hba 'password') on a leg that may "
                    "be unencrypted; configure scram-sha-256 for the broker's identities",
                    code="28000",
                )
            self._to_target += _message(b"p", _cstring(self._login.password))
        elif method == _AUTH_MD5:
            if len(data) != 4:
                raise self._target_error("an MD5 request without a 4-byte salt")
            user, password = self._login.user.encode(), self._login.password.encode()
            inner = hashlib.md5(password + user, usedforsecurity=False).hexdigest().encode()
            outer = hashlib.md5(inner + data, usedforsecurity=False).hexdigest()
            self._to_target += _message(b"p", _cstring("md5" + outer))
        elif method == _AUTH_SASL:
            self._sasl_start(data)
        elif method == _AUTH_SASL_CONTINUE:
            self._sasl_continue(data)
        elif method == _AUTH_SASL_FINAL:
            if self._scram is None or self._scram_final is None:
                raise self._target_error("SASLFinal without a SASL exchange")
            if not self._scram_final.server_proved(data.decode("utf-8", "replace")):
                raise self._target_error("its SCRAM proof is wrong", code="28000")
            self._scram_done = True
        else:
            name = _AUTH_NAMES.get(method, f"method {method}")
            raise self._target_error(
                f"it asks for {name} authentication; the broker logs in with a password "
                "(scram-sha-256, md5 or password in pg_hba)",
                code="28000",
            )

    def _sasl_start(self, data: bytes) -> None:
        if self._scram is not None:
            raise self._target_error("a second SASL exchange")
        mechanisms = [m.decode("utf-8", "replace") for m in data.split(b"\0") if m]
        if _SCRAM not in mechanisms:
            raise self._target_error(
                f"it offers SASL {', '.join(mechanisms) or 'with no mechanism'}; the broker does {_SCRAM}",
                code="28000",
            )
        try:
            # PostgreSQL ignores the name in SCRAM's messages (the startup's counts); scramp wants one.
            self._scram = scramp.ScramClient([_SCRAM], self._login.user, self._login.password)
            first = self._scram.get_client_first().encode()
        except scramp.ScramException as exc:  # e.g. a password SASLprep refuses
            raise self._target_error(f"SCRAM could not start ({exc})") from None
        self._to_target += _message(b"p", _cstring(_SCRAM) + _U32.pack(len(first)) + first)

    def _sasl_continue(self, data: bytes) -> None:
        if self._scram is None:
            raise self._target_error("SASLContinue without a SASL exchange")
        try:
            server_first = data.decode("utf-8")
            for attribute in server_first.split(","):
                if attribute.startswith("i=") and int(attribute[2:]) > SCRAM_ITERATIONS_CEILING:
                    raise self._target_error(
                        f"it asks for {attribute[2:]} SCRAM iterations (the broker does at most "
                        f"{SCRAM_ITERATIONS_CEILING})"
                    )
            self._scram.set_server_first(server_first)  # scramp checks the nonce, salt and count
            self._scram_final = scram.client_final(
                password=self._login.password,
                salt=bytes(self._scram.salt),
                iterations=int(self._scram.iterations),
                nonce=str(self._scram.nonce),
                client_first_bare=self._scram.client_first_bare,
                server_first=server_first,
            )
        except (scramp.ScramException, UnicodeDecodeError, ValueError) as exc:
            raise self._target_error(f"its SCRAM challenge is invalid ({exc})") from None
        self._to_target += _message(b"p", self._scram_final.message.encode())


def handshake(
    login: TargetLogin, *, client_key: tuple[int, int] | None = None, allow_cleartext: bool = False
) -> PostgresHandshake:
    """A login machine for one channel. ``client_key``: the BackendKeyData the client gets
    (default: random); ``allow_cleartext``: answer a target asking for the password in clear."""
    return PostgresHandshake(login, client_key=client_key, allow_cleartext=allow_cleartext)


def tap(*, pending_ceiling: int = PENDING_CEILING, text_ceiling: int = TEXT_CEILING) -> PostgresTap:
    """A statement tap for one channel's client-to-target bytes after the login."""
    return PostgresTap(pending_ceiling=pending_ceiling, text_ceiling=text_ceiling)


def _conforms(machine: PostgresHandshake, recorder: PostgresTap) -> tuple[Handshake, Tap]:
    return machine, recorder  # mypy checks the classes against base's interfaces
