"""Per-grant Redis ACL users (Redis 6+), made and ended with the broker's admin credential.

Names carry the tag. Redis ACL users have no comment field, and a side key would live in the
keyspace (evicted, flushed by FLUSHALL, and readable or writable by any grant with ``~*``), so the
name itself encodes the grant and the broker::

    access_<principal slug>_<6 random>.<grant id>.<broker id>
    e.g. access_alice_k3x9q2.g-0123456789abcdef.broker-eu1

``ours()`` lists ``ACL USERS`` that start with ``access_`` and reads the tag back from the name,
so a reconcile recognises our users even when the broker's store lost them (a name that starts
with ``access_`` but does not parse is listed with no grant and no broker: not ours to end
unless an admin says so). Grant and broker ids are checked to ``[A-Za-z0-9_-]{1,64}``.

``create``: one ``ACL SETUSER <name> reset resetchannels <rules...> #<sha256 of the password> on``,
which Redis applies all or nothing. The password (``secrets.token_urlsafe(32)``) goes to Redis
only as its SHA-256 (what Redis keeps anyway), so it never crosses the wire, MONITOR or the
slow log here; the broker presents it once, in the wire machine's ``AUTH``. A retry for a grant
that already has a user of this broker resets that user (new password, the spec's rules)
instead of making a second one.

Rules come from the policy and are checked token by token before anything is sent: command
rules (``+get``, ``-@dangerous``, ``+@read``, ``+client|id``, ``allcommands``, ``nocommands``),
key rules (``~pattern``, ``%R~``/``%W~``/``%RW~pattern``, ``allkeys``, ``resetkeys``), channel
rules (``&pattern``, ``allchannels``, ``resetchannels``) and Redis 7 selectors made of those
(``(+get ~cache:*)``). Everything that touches the login is refused: ``on``/``off``, ``nopass``,
``>``/``<`` passwords, ``#``/``!`` hashes, ``reset``, ``resetpass``; so is any token with a
space or NUL outside a selector. Broad rules such as ``allcommands`` or ``~*`` pass: they are
the policy's explicit words, and Redis has no coarser hole than them.

``end``: ``ACL SETUSER <name> off`` (no new logins), ``CLIENT KILL USER <name>`` (its live
connections), ``ACL DELUSER <name>``; a user that is already gone is a success, and only names
of ours (``access_...``) are ever ended.

Not here, on purpose: Redis has no per-user connection limit (the broker keeps the spec's
``connection_limit`` at each channel's open: ``identities.logins.check_connection_limit``) and
no user expiry (the broker's expiry loop calls ``end``). Users are made
at runtime and never ``ACL SAVE``d: a restarted Redis has none of them left, which fails closed.

Every wait is bounded: connect and reply timeouts, no retries.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
from datetime import datetime

from access.broker.errors import BrokerError, InvalidRequest, TargetUnreachable

from .base import Identity, IdentitySpec, OurIdentity

__all__ = ["RedisProvisioner", "check_rule"]

PREFIX = "access_"
_TAG = re.compile(r"[A-Za-z0-9_-]{1,64}")
_NAME = re.compile(r"access_([a-z0-9]{1,16})_([a-z0-9]{6})\.([A-Za-z0-9_-]{1,64})\.([A-Za-z0-9_-]{1,64})")
_RANDOM = string.ascii_lowercase + string.digits

_COMMAND_RULE = re.compile(r"[+-]@?[A-Za-z0-9_.:-]+(\|[A-Za-z0-9_.:-]+)?")
_KEY_RULE = re.compile(r"(%(R|W|RW))?~[^\s\x00]+")
_CHANNEL_RULE = re.compile(r"&[^\s\x00]+")
_WORDS = frozenset(
    ("allkeys", "resetkeys", "allchannels", "resetchannels", "allcommands", "nocommands", "clearselectors")
)


def check_rule(rule: str) -> str:
    """One ACL rule from the policy, returned as is, or InvalidRequest saying why not."""
    if rule.startswith("(") and rule.endswith(")"):
        inner = rule[1:-1].split(" ")
        if not rule[1:-1].strip() or any(_check_simple(token, selector=True) for token in inner if token):
            raise _bad_rule(rule)
        return rule
    if _check_simple(rule, selector=False):
        raise _bad_rule(rule)
    return rule


def _check_simple(token: str, *, selector: bool) -> bool:
    """True when ``token`` is NOT an allowed privilege rule."""
    if token.lower() in _WORDS:
        return selector and token.lower() == "clearselectors"
    return not (
        _COMMAND_RULE.fullmatch(token) or _KEY_RULE.fullmatch(token) or _CHANNEL_RULE.fullmatch(token)
    )


def _bad_rule(rule: str) -> InvalidRequest:
    return InvalidRequest(
        f"the Redis ACL rule {rule!r} is not a privilege the policy may grant",
        hint="use command rules (+@read, -flushall), key patterns (~cache:*), channel patterns "
        "(&events:*) or selectors of them; passwords, nopass, on/off and reset are the broker's",
    )


class RedisProvisioner:
    """Redis ACL users for grants, over the broker's admin connection to one Redis."""

    def __init__(
        self,
        *,
        host: str,
        port: int = 6379,
        broker_id: str,
        admin_user: str | None = None,
        admin_password: str | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 3.0,
    ) -> None:
        if not _TAG.fullmatch(broker_id):
            raise ValueError(f"a broker id is 1 to 64 of A-Z a-z 0-9 _ -, not {broker_id!r}")
        import redis  # here, not at the top: a broker without a Redis service never needs it (~0.1 s)
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._where = f"{host}:{port}"
        self._broker_id = broker_id
        self._client = redis.Redis(
            host=host,
            port=port,
            username=admin_user,
            password=admin_password,
            socket_timeout=timeout,
            socket_connect_timeout=connect_timeout,
            retry=Retry(NoBackoff(), 0),
        )

    def close(self) -> None:
        self._client.close()

    def identity_name(self, spec: IdentitySpec) -> str:
        if not _TAG.fullmatch(spec.grant_id):
            raise InvalidRequest(f"a grant id is 1 to 64 of A-Z a-z 0-9 _ -, not {spec.grant_id!r}")
        slug = re.sub(r"[^a-z0-9]", "", spec.principal.lower().partition("@")[0])[:16] or "user"
        random = "".join(secrets.choice(_RANDOM) for _ in range(6))
        return f"{PREFIX}{slug}_{random}.{spec.grant_id}.{self._broker_id}"

    def create(self, spec: IdentitySpec) -> Identity:
        rules = [check_rule(rule) for rule in spec.privileges]
        name = next(
            (
                found.name
                for found in self.ours()
                if found.grant_id == spec.grant_id and found.broker_id == self._broker_id
            ),
            None,
        ) or self.identity_name(spec)
        password = secrets.token_urlsafe(32)
        digest = hashlib.sha256(password.encode()).hexdigest()
        self._call("ACL", "SETUSER", name, "reset", "resetchannels", *rules, f"#{digest}", "on")
        return Identity(name=name, password=password, grant_id=spec.grant_id)

    def end(self, name: str) -> None:
        if not name.startswith(PREFIX) or re.search(r"[\s\x00]", name):
            raise InvalidRequest(f"{name!r} is not an identity of ours: only access_ users are ended")
        if self._call("ACL", "GETUSER", name) is not None:
            self._call("ACL", "SETUSER", name, "off")
            try:
                self._call("CLIENT", "KILL", "USER", name)
            except InvalidRequest as error:  # deleted meanwhile (another replica's end)
                if "no such user" not in str(error).lower():
                    raise
        self._call("ACL", "DELUSER", name)

    def extend(self, name: str, expires_at: datetime) -> None:
        """Nothing to move: a Redis ACL user has no expiry of its own (the broker ends it)."""

    def ours(self) -> list[OurIdentity]:
        found: list[OurIdentity] = []
        users = self._call("ACL", "USERS")
        for raw in users if isinstance(users, list) else ():
            name = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            if not name.startswith(PREFIX):
                continue
            match = _NAME.fullmatch(name)
            found.append(
                OurIdentity(name, match.group(3), match.group(4)) if match else OurIdentity(name, None, None)
            )
        return found

    def _call(self, *args: str) -> object:
        """One admin command; Redis's refusals and silences as the broker's errors."""
        import redis

        try:
            return self._client.execute_command(*args)  # type: ignore[no-untyped-call]
        except redis.AuthenticationError as error:
            raise BrokerError(
                f"Redis at {self._where} refused the broker's admin login: {error}",
                hint="check the admin user and password configured for this service",
            ) from error
        except (redis.ConnectionError, redis.TimeoutError) as error:
            raise TargetUnreachable(
                f"Redis at {self._where} did not answer the broker's admin connection: {error}",
                hint="check that the target is up and reachable from the broker",
            ) from error
        except redis.exceptions.NoPermissionError as error:
            raise BrokerError(
                f"the broker's admin user may not run {args[0]} {args[1]} on Redis at {self._where}",
                hint="give the admin user +acl and +client|kill (or +@admin)",
            ) from error
        except redis.ResponseError as error:
            raise InvalidRequest(
                f"Redis at {self._where} refused {args[0]} {args[1]}: {error}",
                hint="check the service's ACL rules in the policy",
            ) from error
