"""What ``access-broker serve`` checks before it serves, and what it tells the operator when not.

The one place where start-up failures become messages: a missing or unreadable file that a
setting names (TLS certificate and key, policy, token and audit keys, the data directory), an
address that cannot be listened on, a replica whose issuer or keys differ from the ones its
database was started with. Each becomes :class:`~access.broker.errors.Misconfigured` naming the
thing, the setting (flag and environment variable) and what to do; ``serve`` prints it and
exits 1. Nothing here serves requests.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from access.broker.errors import Misconfigured
from access.broker.keys import key_id, load_key, load_or_create_key
from access.broker.runtime import Broker
from access.broker.settings import Settings
from access.broker.store import broker_meta

__all__ = ["Setting", "about_file", "claim_identity", "forget_identity", "listen", "preflight"]


@dataclass(frozen=True)
class Setting:
    """How an operator sets something: ``--flag / ACCESS_BROKER_NAME`` (or only the variable)."""

    env: str
    flag: str | None = None

    def __str__(self) -> str:
        return f"{self.flag} / {self.env}" if self.flag else self.env


log = logging.getLogger(__name__)

DATA_DIR = Setting("ACCESS_BROKER_DATA_DIR", "--data-dir")
POLICY = Setting("ACCESS_BROKER_POLICY", "--policy")
TLS_CERT = Setting("ACCESS_BROKER_TLS_CERT", "--tls-cert")
TLS_KEY = Setting("ACCESS_BROKER_TLS_KEY", "--tls-key")
SIGNING_KEY = Setting("ACCESS_BROKER_SIGNING_KEY_FILE")
AUDIT_KEY = Setting("ACCESS_BROKER_AUDIT_KEY_FILE")
PREVIOUS_SIGNING_KEYS = Setting("ACCESS_BROKER_PREVIOUS_SIGNING_KEY_FILES")
PREVIOUS_AUDIT_KEYS = Setting("ACCESS_BROKER_PREVIOUS_AUDIT_KEY_FILES")
HOST = Setting("ACCESS_BROKER_HOST", "--host")
PORT = Setting("ACCESS_BROKER_PORT", "--port")
PUBLIC_URL = Setting("ACCESS_BROKER_PUBLIC_URL", "--public-url")
DATABASE_URL = Setting("ACCESS_BROKER_DATABASE_URL", "--database-url")


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ENOENT:
        return "no such file or directory"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied to the broker's user (uid {os.geteuid()})"
    if exc.errno == errno.EISDIR:
        return "is a directory, not a file"
    if exc.errno == errno.ENOTDIR:
        return "a part of the path is not a directory"
    if exc.errno == errno.EEXIST:
        return "exists and is not a directory"
    return (exc.strerror or str(exc)).lower()


@contextmanager
def about_file(what: str, path: Path, setting: Setting) -> Iterator[None]:
    """Turn a failure to use ``path`` into a message naming it, its setting and what to do.

    Raises:
        Misconfigured: the block raised ``OSError``, ``ssl.SSLError`` or ``ValueError``.
    """
    try:
        yield
    except Misconfigured:
        raise
    except ssl.SSLError as exc:
        raise Misconfigured(
            f"{what} {path}: {exc.reason or exc}",
            hint=f"give a PEM file with {setting}",
        ) from exc
    except OSError as exc:
        raise Misconfigured(
            f"{what} {path}: {_reason(exc)}",
            hint=f"create it, fix its permissions, or point {setting} at the right one",
        ) from exc
    except ValueError as exc:  # the message of keys.py and policy loading names the file
        raise Misconfigured(f"{what}: {exc}", hint=f"fix the file or point {setting} at another") from exc


def _readable(path: Path) -> None:
    with path.open("rb") as fh:
        fh.read(1)


def _check_data_dir(path: Path) -> None:
    with about_file("data directory", path, DATA_DIR):
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
        mode = path.stat().st_mode & 0o777
    if mode & 0o022:
        raise Misconfigured(
            f"data directory {path} is writable by group or others (mode {mode:03o}): whoever can "
            "write there can replace the broker's keys and database",
            hint=f"run `chmod 700 {path}`, or point {DATA_DIR} at a private directory",
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise Misconfigured(
            f"data directory {path}: {_reason(PermissionError(errno.EACCES, ''))}",
            hint=f"make it the broker user's (`chown`), or point {DATA_DIR} at a directory it owns",
        )


def _check_tls(cert: Path, key: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    with about_file("TLS certificate", cert, TLS_CERT):
        try:
            x509.load_pem_x509_certificates(cert.read_bytes())
        except ValueError as exc:
            raise ValueError(f"{cert} holds no PEM certificate (-----BEGIN CERTIFICATE-----)") from exc
    with about_file("TLS private key", key, TLS_KEY):
        try:
            serialization.load_pem_private_key(key.read_bytes(), password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{key} holds no unencrypted PEM private key") from exc
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        mismatch = exc.reason == "KEY_VALUES_MISMATCH"
        raise Misconfigured(
            f"TLS private key {key} does not belong to the certificate {cert}"
            if mismatch
            else f"cannot use TLS certificate {cert} with private key {key}: {exc.reason or exc}",
            hint=f"give the certificate's own key ({TLS_CERT}, {TLS_KEY})",
        ) from exc


def preflight(settings: Settings) -> None:
    """Check every file a setting names before anything starts.

    Raises:
        Misconfigured: a file or the data directory cannot be used; the message says which.
    """
    _check_data_dir(settings.data_dir)
    database = sa.engine.make_url(settings.resolved_database_url)
    if database.get_backend_name() == "sqlite" and database.database not in (None, "", ":memory:"):
        folder = Path(database.database).parent
        with about_file("the SQLite database's directory", folder, DATABASE_URL):
            folder.mkdir(parents=True, exist_ok=True)
    if settings.policy is not None:
        with about_file("policy file", settings.policy, POLICY):
            _readable(settings.policy)
    if settings.tls_cert is not None and settings.tls_key is not None:
        _check_tls(settings.tls_cert, settings.tls_key)
    with about_file("token signing key", settings.resolved_signing_key_file, SIGNING_KEY):
        load_or_create_key(settings.resolved_signing_key_file)
    with about_file("audit signing key", settings.resolved_audit_key_file, AUDIT_KEY):
        load_or_create_key(settings.resolved_audit_key_file)
    for path in settings.previous_signing_key_files:
        with about_file("older token signing key", path, PREVIOUS_SIGNING_KEYS):
            load_key(path)
    for path in settings.previous_audit_key_files:
        with about_file("older audit signing key", path, PREVIOUS_AUDIT_KEYS):
            load_key(path)


def listen(host: str, port: int) -> socket.socket:
    """The listening socket on ``host:port``.

    Raises:
        Misconfigured: the address is in use, not this machine's, privileged or unresolvable.
    """
    from access.broker.admin.common import bind_socket

    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        return bind_socket(host, port)
    except OSError as exc:
        reason, hint = _listen_failure(exc, host, port)
        raise Misconfigured(f"cannot listen on {where}: {reason}", hint=hint) from exc


def _listen_failure(exc: OSError, host: str, port: int) -> tuple[str, str]:
    """What went wrong binding ``host:port``, and what to do about it."""
    if isinstance(exc, socket.gaierror):
        return f"the host name {host} does not resolve", f"give an address of this machine with {HOST}"
    known = {
        errno.EADDRINUSE: (
            "another process is already listening there",
            f"stop it (`ss -ltnp 'sport = :{port}'` shows which), or choose another port with {PORT}",
        ),
        errno.EADDRNOTAVAIL: (
            f"{host} is not an address of this machine",
            f"give one of its addresses, or 0.0.0.0 / :: for all of them, with {HOST}",
        ),
        errno.EACCES: (
            "ports below 1024 need privileges",
            f"choose a port of 1024 or more with {PORT}, or grant CAP_NET_BIND_SERVICE",
        ),
    }
    return known.get(exc.errno or 0, (_reason(exc), f"check {HOST} and {PORT}"))


def claim_identity(broker: Broker, *, stable_issuer: bool) -> None:
    """Record this broker's issuer and key fingerprints on its database, or check them.

    Replicas accept each other's tokens only with the same issuer and token key, and verify
    each other's checkpoints and tags only with the same audit key: a replica that differs from
    what the database recorded refuses to start. ``stable_issuer`` is False for a broker on a
    port picked at start with no public URL: its issuer is neither recorded nor checked.

    Raises:
        Misconfigured: the issuer or a key differs; the message names both values.
        Unavailable: the database could not be reached.
    """
    mine = broker_meta.Identity(
        issuer=broker.base_url if stable_issuer else None,
        token_key_id=key_id(broker.token_key),
        audit_key_id=key_id(broker.audit_key),
    )
    for _ in range(2):  # a replica starting at the same moment may record first: then compare
        try:
            with broker.transaction() as conn:
                recorded = broker_meta.read(conn)
                if recorded is None:
                    broker_meta.insert(conn, mine, broker.clock.now())
                    return
                if recorded.issuer is None and mine.issuer is not None:
                    broker_meta.set_issuer(conn, mine.issuer, broker.clock.now())
        except sa.exc.IntegrityError:
            continue
        break
    else:  # pragma: no cover - the row appeared and vanished twice
        raise Misconfigured("could not record this broker's identity", hint="start it again")
    _compare(broker, recorded, mine)
    if (recorded.token_key_id, recorded.audit_key_id) != (mine.token_key_id, mine.audit_key_id):
        # A rotation: the recorded keys are older keys of this broker's rings; record the new ones,
        # so a replica that knows only the old ones is refused from now on.
        with broker.transaction() as conn:
            broker_meta.set_keys(conn, mine.token_key_id, mine.audit_key_id, broker.clock.now())
        log.warning(
            "keys rotated: this broker signs with token key %s and audit key %s (before: %s, %s)",
            mine.token_key_id,
            mine.audit_key_id,
            recorded.token_key_id,
            recorded.audit_key_id,
        )


def _compare(broker: Broker, recorded: broker_meta.Identity, mine: broker_meta.Identity) -> None:
    settings = broker.settings
    differences = []
    if recorded.issuer is not None and mine.issuer is not None and recorded.issuer != mine.issuer:
        differences.append(
            f"issuer (public URL): this broker {mine.issuer}, the database's {recorded.issuer} ({PUBLIC_URL})"
        )
    # The recorded key may be one of this broker's older keys (a rotation under way, docs/deploy.md).
    if recorded.token_key_id not in {key_id(key) for key in broker.token_ring}:
        differences.append(
            f"token signing key: this broker's {settings.resolved_signing_key_file} is {mine.token_key_id}"
            f"{_older(broker.previous_token_keys)}, the database's is {recorded.token_key_id} ({SIGNING_KEY})"
        )
    if recorded.audit_key_id not in {key_id(key) for key in broker.audit_ring}:
        differences.append(
            f"audit signing key: this broker's {settings.resolved_audit_key_file} is {mine.audit_key_id}"
            f"{_older(broker.previous_audit_keys)}, the database's is {recorded.audit_key_id} ({AUDIT_KEY})"
        )
    if differences:
        raise Misconfigured(
            "this broker differs from the replicas that share its database, which would not accept "
            "its tokens or checkpoints: " + "; ".join(differences),
            hint="start every replica with the same public URL and key files (docs/broker.md, "
            "Replicas); to change them on purpose, stop every replica, run "
            "`access-broker migrate --forget-identity`, then start them all",
        )


def _older(keys: tuple[Ed25519PrivateKey, ...]) -> str:
    return f" (older keys: {', '.join(key_id(key) for key in keys)})" if keys else ""


def forget_identity(broker: Broker) -> None:
    """Drop the recorded issuer and key fingerprints (``migrate --forget-identity``), so the
    next ``serve`` records its own: how every replica moves to a new URL or new keys at once.

    Raises:
        Unavailable: the database could not be reached.
    """
    with broker.transaction() as conn:
        broker_meta.forget(conn)
