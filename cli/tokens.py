"""Token storage: the OS keyring, or a 0600 file where there is none; ``ACCESS_TOKEN`` wins over both.

Pipelines sign in from the environment: ``ACCESS_CLIENT_ID`` with ``ACCESS_CLIENT_SECRET`` or
``ACCESS_CLIENT_SECRET_FILE`` (:func:`env_credentials`); the secret is never stored and never
passed on to programs that ``access exec`` runs (:func:`child_environment`).

Tokens are kept per broker URL (keyring service ``access``, username = broker URL; in the
file, a JSON object keyed by broker URL). Headless Linux often has no usable keyring
backend: then tokens go to ``$XDG_CONFIG_HOME/access/tokens.json``, created with mode 0600,
and the CLI says so once. A token file that group or others can read is refused rather than
used: someone else may have copied it, and silently fixing the mode would hide that.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from access.cli import config
from access.cli.errors import CliError, UsageError

__all__ = [
    "ENV_CLIENT_ID",
    "ENV_CLIENT_SECRET",
    "ENV_CLIENT_SECRET_FILE",
    "ENV_TOKEN",
    "FileStore",
    "KeyringStore",
    "TokenStore",
    "Tokens",
    "child_environment",
    "ci_token",
    "default_store",
    "env_credentials",
    "env_secret",
    "env_token",
    "installed_backends",
    "keyring_may_work",
    "read_secret_file",
    "refresh_lock",
]

ENV_TOKEN = "ACCESS_TOKEN"  # noqa: S105 - a variable name, not a secret
ENV_CLIENT_ID = "ACCESS_CLIENT_ID"
ENV_CLIENT_SECRET = "ACCESS_CLIENT_SECRET"  # noqa: S105 - a variable name
ENV_CLIENT_SECRET_FILE = "ACCESS_CLIENT_SECRET_FILE"  # noqa: S105 - a variable name
KEYRING_SERVICE = "access"
TOKEN_FILE = "tokens.json"  # noqa: S105 - a file name
_NOTE_KEY = "token_file_note_shown"
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


@dataclass(frozen=True)
class Tokens:
    access_token: str
    # Epoch seconds, the local clock at receipt plus expires_in: shown, never used to decide
    # that the token has expired (the broker's 401 decides; the local clock may be wrong).
    expires_at: float
    refresh_token: str | None = None
    client_id: str | None = None  # a service account's (client credentials); refreshes send it

    @classmethod
    def from_response(cls, body: dict[str, Any], now: float, client_id: str | None = None) -> Tokens:
        """Tokens from an RFC 6749 token response.

        Raises:
            CliError: the response has no access token.
        """
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise CliError(
                "the broker's token response has no access token", "report this to the broker's operator"
            )
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else 300.0
        refresh = body.get("refresh_token")
        return cls(
            token, now + lifetime, refresh if isinstance(refresh, str) and refresh else None, client_id
        )

    @classmethod
    def from_json(cls, data: Any) -> Tokens | None:
        if not isinstance(data, dict) or not isinstance(data.get("access_token"), str):
            return None
        try:
            return cls(
                access_token=data["access_token"],
                expires_at=float(data.get("expires_at", 0)),
                refresh_token=data.get("refresh_token") or None,
                client_id=data.get("client_id") or None,
            )
        except (TypeError, ValueError):
            return None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def env_token() -> str | None:
    """``ACCESS_TOKEN`` when set: used as-is, never refreshed and never stored."""
    value = os.environ.get(ENV_TOKEN, "").strip()
    return value or None


def read_secret_file(path: str, what: str = "client secret") -> str:
    """A client secret (or ``what``) from ``path`` (``-`` for stdin). Secrets never come from argv.

    Accepted: files of ours or root's (Kubernetes secret volumes are root's, 0644; Docker
    secrets 0444) that only their owner can change. Refused: a file that group or others can
    write (someone may have swapped the secret), or one owned by another user.

    Raises:
        UsageError: the file is missing, empty, writable by others or another user's.
    """
    if path == "-":
        secret = sys.stdin.readline().strip()
    else:
        try:
            info = os.stat(path)
            secret = Path(path).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise UsageError(f"cannot read the {what} file {path}: {reason}") from exc
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UsageError(
                f"refusing to read {path}: other users can change it (mode {stat.filemode(info.st_mode)})",
                f"run `chmod go-w {path}`; if someone may have changed or read it, rotate the {what}",
            )
        if hasattr(os, "getuid") and info.st_uid not in (os.getuid(), 0):
            raise UsageError(
                f"refusing to read {path}: it belongs to another user (uid {info.st_uid})",
                "use a file of yours (or root's), mode 0600 or 0400",
            )
    if not secret:
        raise UsageError(f"the {what} file {path} is empty")
    return secret


def ci_token(token_file: str | None, token_env: str | None) -> str:
    """The CI identity token of ``access login --oidc-token-file/--oidc-token-env``.

    Read from a file (as a client secret file is: ``-`` for stdin, refused if others can change
    it) or from the environment variable named; surrounding whitespace is dropped. The token
    never comes from argv, and never goes to a log.

    Raises:
        UsageError: both or neither given, the variable's name is not one, it is unset or
            empty, or the file is missing, empty or refused.
    """
    if (token_file is None) == (token_env is None):
        raise UsageError("give one of --oidc-token-file and --oidc-token-env")
    if token_file is not None:
        return read_secret_file(token_file, "identity token")
    assert token_env is not None
    if not _ENV_NAME.match(token_env):
        raise UsageError(
            f"--oidc-token-env takes the name of an environment variable, not {token_env[:40]!r}",
            "e.g. --oidc-token-env CI_JOB_JWT (the token itself never goes on the command line)",
        )
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise UsageError(
            f"the environment variable {token_env} is unset or empty",
            "set it to the CI system's identity token (docs/pipelines.md shows how)",
        )
    return token


def env_secret() -> str | None:
    """The client secret from ``ACCESS_CLIENT_SECRET_FILE`` or ``ACCESS_CLIENT_SECRET``, or None.

    Raises:
        UsageError: both are set (which one was meant?), or the file is not acceptable.
    """
    secret = os.environ.get(ENV_CLIENT_SECRET, "").strip()
    secret_file = os.environ.get(ENV_CLIENT_SECRET_FILE, "").strip()
    if secret and secret_file:
        raise UsageError(
            f"both {ENV_CLIENT_SECRET} and {ENV_CLIENT_SECRET_FILE} are set", "unset one of them"
        )
    return read_secret_file(secret_file) if secret_file else secret or None


def env_credentials() -> tuple[str, str] | None:
    """``(client id, secret)`` from ``ACCESS_CLIENT_ID`` and ``ACCESS_CLIENT_SECRET`` or
    ``ACCESS_CLIENT_SECRET_FILE``; None when ``ACCESS_CLIENT_ID`` is unset.

    Raises:
        UsageError: the id has no secret, both secret variables are set, or the file is refused.
    """
    client_id = os.environ.get(ENV_CLIENT_ID, "").strip()
    if not client_id:
        return None
    secret = env_secret()
    if secret is None:
        raise UsageError(
            f"{ENV_CLIENT_ID} is set but neither {ENV_CLIENT_SECRET} nor {ENV_CLIENT_SECRET_FILE}",
            f"set {ENV_CLIENT_SECRET_FILE} to the secret's file (or unset {ENV_CLIENT_ID})",
        )
    return client_id, secret


def child_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """``environ`` without the client secret: programs the CLI starts never see it."""
    return {k: v for k, v in environ.items() if k != ENV_CLIENT_SECRET}


class TokenStore(Protocol):
    description: str

    def load(self, broker_url: str) -> Tokens | None: ...
    def save(self, broker_url: str, tokens: Tokens) -> None: ...
    def delete(self, broker_url: str) -> None: ...


class FileStore:
    """``tokens.json``: a JSON object of broker URL -> tokens, mode 0600."""

    def __init__(self, path: Path, notify: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.description = str(path)
        self._notify = notify

    def _read(self) -> dict[str, Any]:
        try:
            info = self.path.stat()
        except FileNotFoundError:
            return {}
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise UsageError(
                f"refusing to use {self.path}: other users can read it (mode {stat.filemode(info.st_mode)})",
                f"run `chmod 600 {self.path}`, then `access login` again if someone may have copied it",
            )
        if hasattr(os, "getuid") and info.st_uid != os.getuid():
            raise UsageError(
                f"refusing to use {self.path}: it belongs to another user", f"remove {self.path}"
            )
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CliError(
                f"cannot read {self.path}: {exc}", f"remove {self.path} and run `access login`"
            ) from exc
        return data if isinstance(data, dict) else {}

    def load(self, broker_url: str) -> Tokens | None:
        return Tokens.from_json(self._read().get(broker_url))

    def save(self, broker_url: str, tokens: Tokens) -> None:
        data = self._read()
        data[broker_url] = tokens.to_json()
        config.write_private(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")
        if self._notify is not None and not config.load().get(_NOTE_KEY):
            self._notify(f"no OS keyring is available: tokens are kept in {self.path} (mode 0600)")
            config.update(**{_NOTE_KEY: True})

    def delete(self, broker_url: str) -> None:
        data = self._read()
        if data.pop(broker_url, None) is None:
            return
        if data:
            config.write_private(self.path, json.dumps(data, indent=2, sort_keys=True) + "\n")
        else:
            self.path.unlink(missing_ok=True)


class KeyringStore:
    """The OS keyring (macOS Keychain, Secret Service, Windows Credential Locker) via ``keyring``."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self.description = f"the OS keyring ({type(backend).__name__})"

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # keyring backends raise many types (KeyringError, DBus, OSError)
            raise CliError(
                f"the OS keyring failed: {exc}",
                "unlock the keyring, or set PYTHON_KEYRING_BACKEND=keyring.backends.null.Keyring "
                "to keep tokens in a 0600 file instead",
            ) from exc

    def load(self, broker_url: str) -> Tokens | None:
        with self._errors():
            raw = self._backend.get_password(KEYRING_SERVICE, broker_url)
        if not raw:
            return None
        try:
            return Tokens.from_json(json.loads(raw))
        except ValueError:
            return None

    def save(self, broker_url: str, tokens: Tokens) -> None:
        with self._errors():
            self._backend.set_password(KEYRING_SERVICE, broker_url, json.dumps(tokens.to_json()))

    def delete(self, broker_url: str) -> None:
        if self.load(broker_url) is None:
            return
        with self._errors():
            self._backend.delete_password(KEYRING_SERVICE, broker_url)


# PYTHON_KEYRING_BACKEND values that name no keyring at all (the e2e tests and pipelines set them).
_NO_KEYRING = frozenset({"keyring.backends.fail.Keyring", "keyring.backends.null.Keyring"})
# Where a D-Bus session bus may be found: Secret Service, KWallet and libsecret all talk to it
# (an X11 or Wayland display can start one).
_BUS_VARIABLES = ("DBUS_SESSION_BUS_ADDRESS", "DISPLAY", "WAYLAND_DISPLAY")


def installed_backends() -> list[str]:
    """The modules of every keyring backend the installed packages declare (keyring's own too)."""
    from importlib.metadata import entry_points

    return [point.value for point in entry_points(group="keyring.backends")]


def keyring_may_work(
    environ: Mapping[str, str] = os.environ,
    platform: str = sys.platform,
    backends: Callable[[], list[str]] = installed_backends,
) -> bool:
    """False only where keyring could find no usable backend: decided without importing it.

    Importing keyring and letting it choose (it imports every backend it ships, macOS's on
    Linux too, and scans the installed packages for more) costs more than the rest of an API
    command's start. So keyring is asked only when it may answer: ``PYTHON_KEYRING_BACKEND``
    or keyring's config file names a backend (other than fail or null), the platform has a
    keyring of its own (macOS, Windows), a D-Bus session bus may be reachable, or a package
    other than keyring declares backends (``backends``).
    """
    if "PYTHON_KEYRING_BACKEND" in environ:
        return environ["PYTHON_KEYRING_BACKEND"] not in _NO_KEYRING
    if platform in ("darwin", "win32"):
        return True
    # keyring's config file, where keyring.util.platform_ looks for it on Linux and other Unixes.
    config_home = environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    if Path(config_home, "python_keyring", "keyringrc.cfg").exists():
        return True
    runtime = environ.get("XDG_RUNTIME_DIR")
    if any(environ.get(name) for name in _BUS_VARIABLES) or (runtime and Path(runtime, "bus").exists()):
        return True
    return any(not module.startswith("keyring.") for module in backends())


def _usable_keyring() -> Any | None:
    """The keyring backend, or None when there is no usable one (fail, null, empty chainer, errors)."""
    try:
        # Once keyring is loaded (a test set its backend), asking it costs nothing.
        if "keyring" not in sys.modules and not keyring_may_work():
            return None
        import keyring
        from keyring.backends import chainer, fail, null

        backend = keyring.get_keyring()
        if isinstance(backend, fail.Keyring | null.Keyring):
            return None
        if isinstance(backend, chainer.ChainerBackend) and not backend.backends:
            return None
        # A backend can exist and still not work (no D-Bus session, locked collection): probe it.
        backend.get_password(KEYRING_SERVICE, "__probe__")
    except Exception:  # any failure here means "no usable keyring": fall back to the file
        return None
    return backend


def default_store(notify: Callable[[str], None] | None = None) -> TokenStore:
    """The OS keyring when one works; otherwise the 0600 token file (``notify`` says so once)."""
    backend = _usable_keyring()
    if backend is not None:
        return KeyringStore(backend)
    return FileStore(config.config_dir() / TOKEN_FILE, notify)


@contextlib.contextmanager
def refresh_lock() -> Iterator[None]:
    """Serialise token refreshes across ``access`` processes.

    Refresh tokens rotate and the broker revokes the whole session when a used one is
    presented again, so two processes refreshing at once (a long ``access connect`` and an
    ``access grants`` in another shell) would sign the user out. Under this lock, the second
    process re-reads the store and finds the first one's fresh tokens.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no flock; the race is narrow and only costs a login
        yield
        return
    directory = config.config_dir()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(directory / "refresh.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
