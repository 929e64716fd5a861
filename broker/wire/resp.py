"""Redis (RESP2/RESP3): the broker logs in as the grant's identity; the client sends no password.

Login (``handshake``). Redis clients speak first and Redis never does, so the broker dials at
once (``wants_target`` is true from the start), sends ``AUTH <user> <password>`` (and
``SELECT <n>`` when the login names a database other than 0) and waits for ``+OK``. The client
has nothing to do: its first commands, ``HELLO 3`` among them (``redis-cli -3``), are held until
the login is done and then handed over in ``leftovers()[0]``; ``HELLO 3`` then switches the
connection to RESP3 for the identity the broker logged in as. A ``-WRONGPASS`` (or any other
error) to the broker's login is a ``WireError`` whose ``client_message`` is a RESP error
``-ERR access: the target refused the broker's login for this grant ...``.

Identity switches are refused (``tap``). After the login a client must never become someone
else, so the tap refuses, wherever they appear in the stream (first command or later):

* ``AUTH`` (any arguments);
* ``HELLO`` with an ``AUTH`` option;
* ``RESET``: Redis logs the connection out to the ``default`` user, which on many servers has
  no password and every right (and RESET is exempt from ACL checks).

A client configured with a password therefore fails with a clear error instead of being
quietly logged in as someone other than it asked for: connect with no password.

The mechanism: the channel passes every client chunk (``leftovers()[0]`` first) to
``Tap.client_bytes`` BEFORE forwarding it; ``client_bytes`` raises ``WireError`` (with a RESP
error for the client) when the chunk completes the name of a refused command (or the AUTH word
of a HELLO); the channel then does not forward that chunk, sends ``client_message`` and closes
both legs. Redis runs a command only once its last byte arrived, and that byte is in the
refused chunk or after it, so the refused command never runs. The statements of that chunk are
taken back (they were never sent) and a ``Statement("refused", "AUTH")`` is recorded instead.
A malformed stream (one Redis would answer with ``-ERR Protocol error`` and close) is refused
the same way, recorded as ``Statement("malformed", <what>)``: the tap parses strictly
(``\\r\\n`` exactly, no leading zeros), so a stream it accepts is one Redis reads the same way;
inline commands are split with Redis's own quoting rules (``sdssplitargs``), and command names
compare as Redis does (case-insensitive, up to a NUL byte), so ``"AU\\x54H"`` or ``AUTH\\0junk``
are still AUTH.

What the tap records: ``Statement("command", "<NAME> [SUB] key ...")``: the command name in
upper case, the subcommand for container commands (``CLIENT KILL``, ``OBJECT ENCODING``), and
the keys at the positions the key table gives (first argument, all arguments, every other one
for MSET, ``numkeys`` for EVAL/FCALL/ZUNION..., after ``STREAMS`` for XREAD). Never values,
unless ``values=True`` (then every argument, except for commands that can carry a secret:
AUTH, HELLO, ACL, CONFIG, MIGRATE). Keys that are not plain printable words are shown quoted
with escapes. Texts stop at ``text_limit`` characters; at most ``pending_limit`` statements wait
for ``take``, the rest are counted and reported by ``take`` as one ``Statement("dropped", ...)``.

Costs: the tap walks lengths. A bulk string is skipped by count (a 512 MiB value is never held);
it keeps only a command's name, subcommand and key prefixes (up to the text budget) and a few
bytes of the arguments it must read (``numkeys``, ``STREAMS``, HELLO's options). Buffers: a
header line 32 bytes, an inline command 64 KiB (Redis's own limit), client bytes held during the
login 1 MiB, a target reply during the login 64 KiB; past any of them, ``WireError``. Measured
on the shared 2-core box: about 6 us per pipelined ``GET`` (bytes or memoryview chunks of
64 KiB), under 1 us per 64 KiB chunk of a large value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .base import Handshake, Outgoing, Statement, Tap, TargetLogin, WireError

__all__ = ["RespHandshake", "RespTap", "handshake", "tap"]

REPLY_LIMIT = 64 * 1024  # a target reply line during the login
EARLY_CLIENT_LIMIT = 1024 * 1024  # client bytes held until the login is done
TEXT_LIMIT = 4096  # characters of one statement's text
PENDING_LIMIT = 1024  # statements waiting for take()
MAX_BULK = 512 * 1024 * 1024  # Redis's default proto-max-bulk-len
MAX_ARGS = 2**31 - 1  # Redis: INT_MAX arguments in one command
INLINE_LIMIT = 64 * 1024  # Redis's PROTO_INLINE_MAX_SIZE
HEADER_LIMIT = 32  # "*2147483647\r\n" and "$536870912\r\n" with room to spare
NAME_KEEP = 64  # bytes of a command name kept (names are short; longer ones are shown cut)
SUB_KEEP = 32
NUMBER_KEEP = 20

_NUMBER = re.compile(rb"0|-?[1-9][0-9]{0,18}")  # Redis's string2ll: no sign, no leading zero
_NEWLINE = re.compile(rb"\n")
_BULK_HEAD = re.compile(rb"\$(0|[1-9][0-9]{0,18})\r\n")
_ARRAY_HEAD = re.compile(rb"\*([1-9][0-9]{0,9})\r\n")


def _command(*args: bytes) -> bytes:
    """A command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def _printable(text: str, limit: int = 300) -> str:
    """Text safe inside a RESP simple error: printable ASCII only, one line, cut at ``limit``."""
    return "".join(c if " " <= c <= "~" else "?" for c in text[:limit])


def _error(message: str) -> bytes:
    return b"-ERR access: " + _printable(message, 1000).encode() + b"\r\n"


class _Refusal(WireError):
    """A command that would switch the connection's identity."""


def _protocol_error(what: str) -> WireError:
    return WireError(
        f"the client broke the Redis protocol: {what}",
        b"-ERR Protocol error: " + _printable(what).encode() + b"\r\n",
    )


# ---------------------------------------------------------------------------------------------
# Login


class RespHandshake(Outgoing):
    """Logs the broker in with ``AUTH user password`` (then ``SELECT n``); see the module doc."""

    def __init__(self, login: TargetLogin, *, early_limit: int = EARLY_CLIENT_LIMIT) -> None:
        database = login.database or "0"
        if not _NUMBER.fullmatch(database.encode()) or database.startswith("-"):
            raise ValueError(f"a Redis database is a number from 0, not {database!r}")
        self._database = database
        self._early_limit = early_limit
        super().__init__()
        self._to_target += _command(b"AUTH", login.user.encode(), login.password.encode())
        self._client = bytearray()  # client bytes held until done
        self._target = bytearray()  # target bytes not yet read
        self._step = "auth"  # "auth", then "select" when needed, then "done"
        self._failure: WireError | None = None

    @property
    def wants_target(self) -> bool:
        return True

    @property
    def done(self) -> bool:
        return self._step == "done"

    def leftovers(self) -> tuple[bytes, bytes]:
        out = (bytes(self._client), bytes(self._target))
        self._client.clear()
        self._target.clear()
        return out

    def feed_client(self, data: bytes) -> None:
        self._check()
        self._client += data
        if not self.done and len(self._client) > self._early_limit:
            self._fail(
                WireError(
                    f"the client sent more than {self._early_limit} bytes before the target was ready",
                    _error(
                        f"the client sent more than {self._early_limit} bytes before the broker had "
                        "logged in to the target; send less before the first reply, or retry"
                    ),
                )
            )

    def feed_target(self, data: bytes) -> None:
        self._check()
        self._target += data
        while not self.done:
            end = self._target.find(b"\r\n")
            if end < 0:
                if len(self._target) > REPLY_LIMIT:
                    self._fail(self._refused(f"a reply longer than {REPLY_LIMIT} bytes"))
                return
            line = bytes(self._target[:end])
            del self._target[: end + 2]
            self._reply(line)

    def _reply(self, line: bytes) -> None:
        if line[:1] == b"+":
            if self._step == "auth" and self._database != "0":
                self._step = "select"
                self._to_target += _command(b"SELECT", self._database.encode())
            else:
                self._step = "done"
            return
        said = (
            line[1:].decode("utf-8", "replace") if line[:1] == b"-" else f"an unexpected reply {line[:40]!r}"
        )
        if self._step == "auth":
            self._fail(self._refused(said))
        self._fail(
            WireError(
                f"the target refused database {self._database}: {_printable(said)}",
                _error(
                    f"the target refused database {self._database} for this grant ({said}); "
                    "ask an admin to check the service's database setting"
                ),
            )
        )

    def _refused(self, said: str) -> WireError:
        return WireError(
            f"the target refused the broker's login: {_printable(said)}",
            _error(
                f"the target refused the broker's login for this grant ({said}); the grant's identity "
                "may have ended: request access again, or ask an admin if it persists"
            ),
        )

    def _fail(self, error: WireError) -> None:
        self._failure = error
        raise error

    def _check(self) -> None:
        if self._failure is not None:
            raise self._failure


def handshake(login: TargetLogin) -> Handshake:
    """The login machine for one channel."""
    return RespHandshake(login)


# ---------------------------------------------------------------------------------------------
# Key positions


@dataclass(frozen=True, slots=True)
class _Keys:
    """Where a command's keys are: ``first..last`` every ``step`` (``last`` < 0 counts from the end,
    0 means none), or ``numkeys`` at an index with the keys after it, or after a ``STREAMS`` word."""

    first: int = 0
    last: int = 0
    step: int = 1
    numkeys_at: int = 0
    streams: bool = False


_ONE = _Keys(1, 1)
_ALL = _Keys(1, -1)
_TWO = _Keys(1, 2)
_NONE = _Keys()

_KEYS: dict[bytes, _Keys] = {}
for _names, _spec in (
    (
        "GET SET SETNX SETEX PSETEX GETSET GETDEL GETEX GETRANGE SETRANGE SUBSTR APPEND STRLEN INCR DECR "
        "INCRBY DECRBY INCRBYFLOAT TYPE TTL PTTL EXPIRE PEXPIRE EXPIREAT PEXPIREAT EXPIRETIME PEXPIRETIME "
        "PERSIST DUMP RESTORE HGET HSET HSETNX HMSET HMGET HDEL HEXISTS HGETALL HINCRBY HINCRBYFLOAT HKEYS "
        "HVALS HLEN HSTRLEN HSCAN HRANDFIELD LPUSH RPUSH LPUSHX RPUSHX LPOP RPOP LLEN LRANGE LINDEX LSET "
        "LREM LTRIM LINSERT LPOS SADD SREM SMEMBERS SISMEMBER SMISMEMBER SCARD SPOP SRANDMEMBER SSCAN ZADD "
        "ZREM ZRANGE ZRANGEBYSCORE ZREVRANGEBYSCORE ZRANGEBYLEX ZREVRANGEBYLEX ZREVRANGE ZCARD ZSCORE "
        "ZMSCORE ZINCRBY ZRANK ZREVRANK ZCOUNT ZLEXCOUNT ZPOPMIN ZPOPMAX ZREMRANGEBYSCORE ZREMRANGEBYRANK "
        "ZREMRANGEBYLEX ZSCAN ZRANDMEMBER XADD XLEN XRANGE XREVRANGE XDEL XTRIM XACK XPENDING XCLAIM "
        "XAUTOCLAIM XSETID SETBIT GETBIT BITCOUNT BITPOS BITFIELD BITFIELD_RO GEOADD GEODIST GEOHASH GEOPOS "
        "GEORADIUS GEORADIUS_RO GEORADIUSBYMEMBER GEORADIUSBYMEMBER_RO GEOSEARCH SORT SORT_RO PUBLISH "
        "SPUBLISH",
        _ONE,
    ),
    (
        "DEL UNLINK EXISTS MGET TOUCH WATCH SINTER SUNION SDIFF SINTERSTORE SUNIONSTORE SDIFFSTORE PFADD "
        "PFCOUNT PFMERGE SUBSCRIBE UNSUBSCRIBE PSUBSCRIBE PUNSUBSCRIBE SSUBSCRIBE SUNSUBSCRIBE",
        _ALL,
    ),
    ("MSET MSETNX", _Keys(1, -1, 2)),
    ("RENAME RENAMENX SMOVE LMOVE BLMOVE RPOPLPUSH BRPOPLPUSH COPY LCS GEOSEARCHSTORE ZRANGESTORE", _TWO),
    ("BLPOP BRPOP BZPOPMIN BZPOPMAX", _Keys(1, -2)),
    ("BITOP", _Keys(2, -1)),
    ("MIGRATE", _Keys(3, 3)),
    ("EVAL EVALSHA EVAL_RO EVALSHA_RO FCALL FCALL_RO BLMPOP BZMPOP", _Keys(numkeys_at=2)),
    ("ZUNION ZINTER ZDIFF ZINTERCARD SINTERCARD LMPOP ZMPOP", _Keys(numkeys_at=1)),
    ("ZUNIONSTORE ZINTERSTORE ZDIFFSTORE", _Keys(1, 1, numkeys_at=2)),
    ("XREAD XREADGROUP", _Keys(streams=True)),
):
    for _name in _names.split():
        _KEYS[_name.encode()] = _spec

# Container commands: the subcommand is part of the text; a few take a key after it.
_SUBCOMMANDS = frozenset(
    b"ACL CLIENT CLUSTER COMMAND CONFIG DEBUG FUNCTION LATENCY MEMORY MODULE OBJECT PUBSUB SCRIPT "
    b"SLOWLOG XGROUP XINFO".split()
)
_SUB_KEYS: dict[tuple[bytes, bytes], _Keys] = {
    (b"OBJECT", sub): _Keys(2, 2) for sub in (b"ENCODING", b"FREQ", b"IDLETIME", b"REFCOUNT")
}
_SUB_KEYS[(b"MEMORY", b"USAGE")] = _Keys(2, 2)
for _sub in (b"STREAM", b"GROUPS", b"CONSUMERS"):
    _SUB_KEYS[(b"XINFO", _sub)] = _Keys(2, 2)
for _sub in (b"CREATE", b"DESTROY", b"SETID", b"CREATECONSUMER", b"DELCONSUMER"):
    _SUB_KEYS[(b"XGROUP", _sub)] = _Keys(2, 2)

# Commands whose arguments may carry a secret: values=True never records their arguments.
_SECRET = frozenset((b"AUTH", b"HELLO", b"ACL", b"CONFIG", b"MIGRATE"))
# Commands that change the connection's identity: refused wherever they appear.
_REFUSED = {
    b"AUTH": "AUTH is refused: the broker has logged this connection in as the grant's identity; "
    "connect with no password",
    b"RESET": "RESET is refused: it would log this connection out of the grant's identity; "
    "open a new connection instead",
}
_HELLO_AUTH = (
    "HELLO with AUTH is refused: the broker has logged this connection in as the grant's identity; "
    "connect with no password (HELLO 3 alone works)"
)


def _word(arg: bytes) -> bytes:
    """How Redis compares a command name or option: case-insensitive, up to a NUL byte."""
    return arg.split(b"\0", 1)[0].upper()


_PLAIN = re.compile(rb"[!#-\[\]-~]+")  # printable ASCII but space, " and \\
_ESCAPES = {ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n", ord("\r"): "\\r", ord("\t"): "\\t"}


def _show(arg: bytes, cut: bool) -> str:
    """An argument for the audit text: as is when a plain printable word, else quoted with escapes."""
    if _PLAIN.fullmatch(arg):
        text = arg.decode("ascii")
    else:
        text = (
            '"'
            + "".join(_ESCAPES.get(b) or (chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}") for b in arg)
            + '"'
        )
    return text + "…" if cut else text


# ---------------------------------------------------------------------------------------------
# Inline commands: Redis's sdssplitargs, byte for byte


_SPACE = frozenset(b" \t\n\v\f\r")  # C isspace(), what sdssplitargs skips between arguments
_HEX = frozenset(b"0123456789abcdefABCDEF")
_BACKSLASH = {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}


def _splitargs(line: bytes) -> list[bytes] | None:
    """The arguments Redis reads from an inline command line; None for unbalanced quotes."""
    args: list[bytes] = []
    n = len(line)
    p = 0
    while True:
        while p < n and line[p] != 0 and line[p] in _SPACE:
            p += 1
        if p >= n or line[p] == 0:
            return args  # sdssplitargs stops at the end of the C string
        current = bytearray()
        inq = insq = False
        while True:
            c = line[p] if p < n else 0
            after = line[p + 1] if p + 1 < n else 0
            if inq:
                if c == ord("\\") and after == ord("x") and p + 3 < n and {line[p + 2], line[p + 3]} <= _HEX:
                    current.append(int(line[p + 2 : p + 4], 16))
                    p += 3
                elif c == ord("\\") and after:
                    p += 1
                    current.append(_BACKSLASH.get(after, after))
                elif c == ord('"'):
                    if after and after not in _SPACE:
                        return None  # a closing quote must be followed by a space or the end
                    p += 1
                    break
                elif not c:
                    return None  # unterminated quotes
                else:
                    current.append(c)
            elif insq:
                if c == ord("\\") and after == ord("'"):
                    p += 1
                    current.append(after)
                elif c == ord("'"):
                    if after and after not in _SPACE:
                        return None
                    p += 1
                    break
                elif not c:
                    return None
                else:
                    current.append(c)
            elif c in (ord(" "), ord("\n"), ord("\r"), ord("\t"), 0):
                break
            elif c == ord('"'):
                inq = True
            elif c == ord("'"):
                insq = True
            else:
                current.append(c)
            p += 1
        args.append(bytes(current))


# ---------------------------------------------------------------------------------------------
# The tap

_START, _ARRAY, _BULK, _DATA, _CR, _LF, _INLINE = range(7)


class RespTap:
    """Walks the client's commands and records them; refuses identity switches (see the module doc)."""

    def __init__(
        self,
        *,
        values: bool = False,
        text_limit: int = TEXT_LIMIT,
        pending_limit: int = PENDING_LIMIT,
        max_bulk: int = MAX_BULK,
    ) -> None:
        self._values = values
        self._text_limit = text_limit
        self._pending_limit = pending_limit
        self._max_bulk = max_bulk
        self._pending: list[Statement] = []
        self.dropped = 0  # statements past pending_limit since the last take()
        self._failure: WireError | None = None
        self.terminated = False  # the client sent QUIT
        self._state = _START
        self._line = bytearray()  # a header line or an inline command being read
        # the argument being read
        self._remaining = 0  # its bytes still to come
        self._keep = 0  # how many of them to keep
        self._arg = bytearray()  # the ones kept
        self._length = 0
        self._begin(0)  # the command being read

    # -- the interface

    def take(self) -> list[Statement]:
        out = self._pending
        if self.dropped:
            out.append(Statement("dropped", f"{self.dropped} commands not recorded (tap ceiling)"))
            self.dropped = 0
        self._pending = []
        return out

    def client_bytes(self, data: bytes | memoryview) -> None:
        if self._failure is not None:
            raise self._failure
        mark = (len(self._pending), self.dropped)
        try:
            self._walk(data)
        except WireError as error:
            # This chunk is not forwarded: what it completed never reached Redis.
            del self._pending[mark[0] :]
            self.dropped = mark[1]
            refused = isinstance(error, _Refusal)
            self._record(
                Statement("refused", _show(self._name, False))
                if refused
                else Statement("malformed", str(error))
            )
            self._failure = error
            raise

    # -- the walk

    def _walk(self, data: bytes | memoryview) -> None:
        n = len(data)
        pos = 0
        while pos < n:
            state = self._state
            if state == _DATA:
                take = min(self._remaining, n - pos)
                if self._keep > len(self._arg):
                    self._arg += data[pos : pos + min(take, self._keep - len(self._arg))]
                self._remaining -= take
                pos += take
                if not self._remaining:
                    self._state = _CR
            elif state == _BULK and not self._line and (fast := self._whole_bulk(data, pos)) > pos:
                pos = fast
            elif state in (_CR, _LF):
                want = 13 if state == _CR else 10
                if data[pos] != want:
                    raise _protocol_error("a bulk string not followed by CRLF")
                pos += 1
                if state == _CR:
                    self._state = _LF
                else:
                    self._state = _BULK
                    self._end_arg(bytes(self._arg))
            elif state == _START:
                self._name = b""
                head = _ARRAY_HEAD.match(data, pos)
                if head is not None and int(head.group(1)) <= MAX_ARGS:
                    self._begin(int(head.group(1)))
                    self._state = _BULK
                    pos = head.end()
                else:
                    self._state = _ARRAY if data[pos] == 42 else _INLINE  # "*"
            elif state == _INLINE:
                pos = self._read_line(data, pos, INLINE_LIMIT, "too big inline request")
                if self._line_done:
                    self._inline(bytes(self._line))
                    self._line.clear()
                    self._state = _START
            else:  # _ARRAY or _BULK: a header line
                pos = self._read_line(data, pos, HEADER_LIMIT, "a header line too long")
                if self._line_done:
                    line = bytes(self._line)
                    self._line.clear()
                    if state == _ARRAY:
                        self._array(line)
                    else:
                        self._bulk(line)

    def _whole_bulk(self, data: bytes | memoryview, pos: int) -> int:
        """The common case: a bulk string's header, payload and CRLF all in this chunk. Returns
        the position after it, or ``pos`` when it is not all here (the byte-wise path takes it)."""
        head = _BULK_HEAD.match(data, pos)
        if head is None:
            return pos  # a header cut by the chunk's end, or a bad one: the byte-wise path says which
        length = int(head.group(1))
        if length > self._max_bulk:
            raise _protocol_error("invalid bulk length")
        start = head.end()
        self._length = length
        self._keep = self._want(length)
        stop = start + length
        if stop + 2 > len(data):
            self._arg.clear()
            self._remaining = length
            self._state = _DATA if length else _CR
            return start
        if data[stop : stop + 2] != b"\r\n":
            raise _protocol_error("a bulk string not followed by CRLF")
        self._end_arg(bytes(data[start : start + min(self._keep, length)]))
        return stop + 2

    _line_done = False

    def _read_line(self, data: bytes | memoryview, pos: int, limit: int, what: str) -> int:
        """Add to the line up to a LF (included); sets ``_line_done``. Returns the new position."""
        end = min(len(data), pos + limit + 2 - len(self._line))
        newline = _NEWLINE.search(data, pos, end)  # re reads a memoryview in place
        found = -1 if newline is None else newline.start()
        stop = end if found < 0 else found + 1
        self._line += data[pos:stop]
        self._line_done = found >= 0
        if not self._line_done and len(self._line) > limit + 1:
            raise _protocol_error(what)
        return stop

    def _array(self, line: bytes) -> None:
        count = self._number(line, b"*", "invalid multibulk length")
        if count > MAX_ARGS:
            raise _protocol_error("invalid multibulk length")
        if count <= 0:
            self._state = _START  # Redis ignores an empty multibulk
            return
        self._begin(count)
        self._state = _BULK

    def _bulk(self, line: bytes) -> None:
        if line[:1] != b"$":
            raise _protocol_error(f"expected '$', got {line[:1]!r}")
        length = self._number(line, b"$", "invalid bulk length")
        if length < 0 or length > self._max_bulk:
            raise _protocol_error("invalid bulk length")
        self._length = length
        self._keep = self._want(length)
        self._arg.clear()
        self._remaining = length
        self._state = _DATA if length else _CR

    @staticmethod
    def _number(line: bytes, lead: bytes, what: str) -> int:
        if not line.endswith(b"\r\n") or line[:1] != lead or not _NUMBER.fullmatch(line, 1, len(line) - 2):
            raise _protocol_error(what)
        return int(line[1:-2])

    def _inline(self, line: bytes) -> None:
        body = line[:-1]
        if body.endswith(b"\r"):
            body = body[:-1]
        args = _splitargs(body)
        if args is None:
            raise _protocol_error("unbalanced quotes in request")
        if not args:
            return
        self._begin(len(args))
        for arg in args:
            self._length = len(arg)
            self._end_arg(arg[: self._want(len(arg))])

    # -- one command

    def _begin(self, argc: int) -> None:
        self._argc = argc
        self._index = 0  # the argument being read
        self._name = b""
        self._sub = b""
        self._spec = _NONE
        self._numkeys = -1  # EVAL's and the like, once read
        self._streams = -1  # where XREAD's STREAMS is, once read
        self._hello_option = 2  # where HELLO's next option is
        self._parts: list[str] = []
        self._budget = self._text_limit  # bytes of arguments still to keep for the text
        self._omitted = 0

    def _is_key(self, i: int) -> bool:
        spec = self._spec
        if spec.first and spec.first <= i <= (spec.last if spec.last > 0 else self._argc + spec.last):
            return (i - spec.first) % spec.step == 0
        if spec.numkeys_at and self._numkeys > 0:
            return spec.numkeys_at < i <= spec.numkeys_at + self._numkeys
        if spec.streams and self._streams > 0:
            return self._streams < i <= self._streams + (self._argc - self._streams - 1) // 2
        return False

    def _shown(self, i: int) -> bool:
        return self._is_key(i) or (self._values and i > 0 and self._name not in _SECRET)

    def _want(self, length: int) -> int:
        """How many bytes of argument ``_index`` (``length`` long) to keep."""
        i = self._index
        if i == 0:
            return NAME_KEEP
        keep = 0
        if self._shown(i):
            keep = min(length, self._budget)
            self._budget = max(0, self._budget - keep - 1)  # and a space
        if i == 1 and self._name in _SUBCOMMANDS:
            keep = max(keep, SUB_KEEP)
        elif i == self._spec.numkeys_at:
            keep = max(keep, NUMBER_KEEP)
        elif (self._spec.streams and self._streams < 0) or (self._name == b"HELLO" and i >= 2):
            keep = max(keep, 8)  # "STREAMS", "AUTH\0"
        return keep

    def _end_arg(self, arg: bytes) -> None:
        """Argument ``_index`` has ended; ``arg`` is the part of it kept."""
        i = self._index
        if i == 0:
            self._name = _word(arg)
            if self._name in _REFUSED:
                raise _Refusal(_REFUSED[self._name], _error(_REFUSED[self._name]))
            self._spec = _KEYS.get(self._name, _NONE)
            self._parts.append(_show(arg.upper(), self._length > len(arg)))
        else:
            if i == 1 and self._name in _SUBCOMMANDS:
                self._sub = _word(arg)
                self._spec = _SUB_KEYS.get((self._name, self._sub), _NONE)
                self._parts.append(_show(self._sub, self._length > len(arg)))
            elif self._name == b"HELLO" and i == self._hello_option:
                # Redis reads HELLO's options from the third argument: AUTH u p, SETNAME n.
                option = _word(arg)
                if option == b"AUTH":
                    raise _Refusal(_HELLO_AUTH, _error(_HELLO_AUTH))
                self._hello_option = i + 2 if option == b"SETNAME" else -1  # else: Redis says syntax error
            elif i == self._spec.numkeys_at:
                self._numkeys = int(arg) if _NUMBER.fullmatch(arg) else 0
            elif self._spec.streams and self._streams < 0 and _word(arg) == b"STREAMS":
                self._streams = i
            if self._shown(i) and not (i == 1 and self._name in _SUBCOMMANDS):
                if arg or not self._length:
                    self._parts.append(_show(arg, self._length > len(arg)))
                else:
                    self._omitted += 1
        self._index += 1
        if self._index == self._argc:
            self._finish()

    def _finish(self) -> None:
        if self._parts and self._parts[0].upper() == "QUIT":
            self.terminated = True
        body = " ".join(self._parts)
        more = f" …(+{self._omitted} more)" if self._omitted else ""
        if len(body) + len(more) > self._text_limit:
            body = body[: max(0, self._text_limit - len(more) - 1)] + "…"
        self._record(Statement("command", (body + more)[: self._text_limit]))
        self._state = _START

    def _record(self, statement: Statement) -> None:
        if len(self._pending) < self._pending_limit:
            self._pending.append(statement)
        else:
            self.dropped += 1


def tap(*, values: bool = False) -> Tap:
    """The statement recorder for one channel, after the login."""
    return RespTap(values=values)
