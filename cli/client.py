"""``BrokerClient``: the CLI's one way to talk to the broker (OAuth endpoints and the ``/v1`` API).

It owns TLS (system trust store, or a pinned CA file), the refusal of plain HTTP to
anything but loopback, token refresh with rotation, and the mapping of every failure to
``access.cli.errors``; an error the broker answered with carries the request's id (its
``X-Request-Id`` header), which ``render.error`` shows. ``transport`` lets tests run it
against the broker app in-process (any ``httpx.BaseTransport``) or against respx. httpx is
imported here, so commands import this module inside their function bodies, never at startup;
pydantic and the wire models (``access.shared.models``) only when an answer is parsed into
them: :meth:`BrokerClient.grant_list` hands ``-o json`` the broker's listing as it came, and
the import of pydantic and the building of its validators are a third of a command's start.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import quote, urlsplit

import httpx

from access.cli import config
from access.cli.errors import (
    BrokerUnreachable,
    CliError,
    Denied,
    Expired,
    NeedsLogin,
    NotFound,
    Unavailable,
    UsageError,
    from_wire,
)
from access.cli.tokens import (
    ENV_CLIENT_ID,
    Tokens,
    TokenStore,
    default_store,
    env_credentials,
    env_token,
    refresh_lock,
)
from access.shared.net import is_loopback_host
from access.shared.oauth import DEVICE_GRANT_TYPE, JWT_TOKEN_TYPE, TOKEN_EXCHANGE_GRANT_TYPE

if TYPE_CHECKING:
    from access.shared.models import AuditEntry, AuditPage, Grant, Principal, ServiceInfo

__all__ = [
    "CLIENT_ID",
    "MAX_REQUEST_ID",
    "REQUEST_ID_HEADER",
    "BrokerClient",
    "DeviceAuthorization",
    "GrantList",
    "normalise_url",
    "request_id",
]

CLIENT_ID = "access-cli"
TIMEOUT = httpx.Timeout(10.0, connect=5.0)
CA_HINT = "pass the CA that signed the broker's certificate with --ca-file or ACCESS_CA_FILE"

REQUEST_ID_HEADER = "X-Request-Id"  # the broker's id for each request, as its log names it
MAX_REQUEST_ID = 128  # what is shown of one: the header comes from the network (a proxy, maybe)

M = TypeVar("M")
# Which grants a listing holds: yours (active and pending), yours with the ended ones too,
# break-glass grants (everyone's for an audit reader), others' requests waiting for your review.
GrantList = Literal["mine", "all", "break_glass", "reviews"]
_GRANT_LISTS: dict[str, tuple[str, dict[str, str] | None]] = {
    "mine": ("/v1/grants", None),
    "all": ("/v1/grants", {"all": "true"}),
    "break_glass": ("/v1/grants", {"break_glass": "true"}),
    "reviews": ("/v1/reviews", None),
}
E = TypeVar("E", bound=CliError)


@dataclass(frozen=True)
class DeviceAuthorization:
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    expires_in: int
    interval: int


def normalise_url(url: str, *, insecure: bool = False) -> str:
    """``https://broker.example:8443/`` -> ``https://broker.example:8443``.

    Raises:
        UsageError: not an http(s) URL, or plain HTTP to a non-loopback host without ``insecure``.
    """
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"not a broker URL: {url!r}", "write it like https://access.example.com")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise UsageError(f"the broker URL {url!r} must not have credentials, a query or a fragment")
    if parts.scheme == "http" and not insecure and not is_loopback_host(parts.hostname):
        raise UsageError(
            f"refusing plain HTTP to {url}: tokens would cross the network unencrypted",
            "use https://, or pass --insecure if you accept that risk",
        )
    return f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def request_id(response: httpx.Response) -> str | None:
    """The broker's id for the request ``response`` answers (``X-Request-Id``), if it sent one."""
    return response.headers.get(REQUEST_ID_HEADER, "").strip()[:MAX_REQUEST_ID] or None


def _answered(error: E, response: httpx.Response) -> E:
    """``error``, with the id of the request the broker answered with it (to quote to its operator)."""
    error.request_id = error.request_id or request_id(response)
    return error


def _tls_failure(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return seen.verify_message or str(seen)
        if isinstance(seen, ssl.SSLError):
            return str(seen)
        seen = seen.__cause__ or seen.__context__
    text = str(exc)
    return text if "CERTIFICATE_VERIFY_FAILED" in text or "SSL" in text else None


class BrokerClient:
    """A client for one broker. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        base_url: str,
        *,
        ca_file: str | None = None,
        insecure: bool = False,
        transport: httpx.BaseTransport | None = None,
        token_store: TokenStore | None = None,
        notify: Callable[[str], None] | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.base_url = normalise_url(base_url, insecure=insecure)
        self.ca_file = ca_file
        self.insecure = insecure
        self._transport = transport
        self._store = token_store
        self._notify = notify
        self._now = now
        self._ssl: ssl.SSLContext | None = None
        self._http: httpx.Client | None = None
        # A sign-in from ACCESS_CLIENT_ID/ACCESS_CLIENT_SECRET: kept here, never stored, and
        # ended when this client closes. The tunnel reads it from a worker thread: the lock.
        self._memory: Tokens | None = None
        self._opened_from_env = False
        self._memory_lock = threading.Lock()

    @classmethod
    def from_config(
        cls,
        broker: str | None = None,
        ca_file: str | None = None,
        insecure: bool = False,
        notify: Callable[[str], None] | None = None,
        transport: httpx.BaseTransport | None = None,
        now: Callable[[], float] | None = None,
    ) -> BrokerClient:
        """A client for ``broker`` (flag or ACCESS_BROKER_URL), else the current profile's broker.

        The CA file and the insecure-HTTP choice of that broker's profile apply (flags add to
        them). ``transport`` and ``now`` are passed through (see ``access.cli.context.Globals``).

        Raises:
            UsageError: no broker is known, or the URL is not acceptable.
        """
        url = broker or config.current_broker()
        if not url:
            raise UsageError(
                "no broker configured",
                "run `access login --broker https://BROKER` or set ACCESS_BROKER_URL",
            )
        profile = config.profiles().get(normalise_url(url, insecure=True), {})
        ca_file = ca_file or profile.get("ca_file")
        insecure = insecure or bool(profile.get("insecure"))
        return cls(
            url, ca_file=ca_file, insecure=insecure, notify=notify, transport=transport, now=now or time.time
        )

    # -- plumbing ------------------------------------------------------------------------------

    @property
    def store(self) -> TokenStore:
        if self._store is None:
            self._store = default_store(self._notify)
        return self._store

    def ssl_context(self) -> ssl.SSLContext:
        """TLS settings for the broker: the pinned CA file when given, else the system trust store.

        Raises:
            UsageError: the CA file is missing or not a PEM certificate.
        """
        if self._ssl is None:
            try:
                self._ssl = ssl.create_default_context(cafile=self.ca_file)
            except FileNotFoundError as exc:
                raise UsageError(
                    f"CA file not found: {self.ca_file}", "check --ca-file / ACCESS_CA_FILE"
                ) from exc
            except (ssl.SSLError, OSError) as exc:
                raise UsageError(
                    f"cannot load the CA file {self.ca_file}: {exc}", "it must hold PEM certificates"
                ) from exc
        return self._ssl

    def _client(self) -> httpx.Client:
        if self._http is None:
            self._http = httpx.Client(
                base_url=self.base_url,
                verify=self.ssl_context(),
                timeout=TIMEOUT,
                transport=self._transport,
                follow_redirects=False,
                headers={"User-Agent": "access-cli", "Accept": "application/json"},
            )
        return self._http

    def close(self) -> None:
        """Close the connection; end the session signed in from the environment, if any."""
        with self._memory_lock:
            opened, self._memory = self._memory if self._opened_from_env else None, None
            self._opened_from_env = False
        if opened is not None and opened.refresh_token:
            with contextlib.suppress(CliError):  # it ends by itself at the session's end anyway
                self.revoke_token(opened.refresh_token)
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> BrokerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        form: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> httpx.Response:
        """One HTTP exchange. Raises BrokerUnreachable (naming the URL) on any transport failure."""
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            return self._client().request(method, path, data=form, json=body, params=params, headers=headers)
        except httpx.TimeoutException as exc:
            raise BrokerUnreachable(self.base_url, f"no answer in time ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            tls = _tls_failure(exc)
            if tls:
                raise BrokerUnreachable(self.base_url, f"TLS failed: {tls}", CA_HINT) from exc
            raise BrokerUnreachable(self.base_url, str(exc) or type(exc).__name__) from exc

    def _error(self, response: httpx.Response) -> CliError:
        """The CLI error for a failed response, with the id of the request if the broker sent one."""
        return _answered(self._error_of(response), response)

    def _error_of(self, response: httpx.Response) -> CliError:
        """The CLI error for a failed response: the broker's JSON error body, or the status."""
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("error"), dict):
            detail = data["error"]
            return from_wire(str(detail.get("code", "")), str(detail.get("message", "")), detail.get("hint"))
        if isinstance(data, dict) and isinstance(data.get("error"), str):
            text = str(data.get("error_description") or data["error"])
            return CliError(f"the broker refused: {text}", code=data["error"])
        status = response.status_code
        if status == 401:
            return NeedsLogin("the broker does not accept your token")
        if status == 404:
            return NotFound(
                f"{response.request.url.path} was not found on {self.base_url}",
                "is this the broker's URL? the CLI and broker versions may differ",
            )
        if status >= 500:
            return Unavailable(f"the broker at {self.base_url} answered HTTP {status}")
        return CliError(f"the broker at {self.base_url} answered HTTP {status}")

    def _parse(self, kind: type[M], data: Any) -> M:
        """``data`` validated as ``kind`` (a wire model, or a list of them)."""
        from pydantic import TypeAdapter, ValidationError

        try:
            return TypeAdapter(kind).validate_python(data)
        except ValidationError as exc:
            raise self._unexpected(f"{exc.error_count()} invalid field(s)") from exc

    def _unexpected(self, what: str) -> CliError:
        return CliError(
            f"unexpected answer from the broker at {self.base_url}: {what}",
            "the CLI and the broker may be different versions: upgrade the CLI",
        )

    # -- tokens --------------------------------------------------------------------------------

    def save_tokens(self, tokens: Tokens) -> None:
        self.store.save(self.base_url, tokens)

    def access_token(self, fresh: bool = False) -> str:
        """The access token to send: ACCESS_TOKEN, else the stored one, else a sign-in from
        ``ACCESS_CLIENT_ID``/``ACCESS_CLIENT_SECRET[_FILE]`` kept in memory for this command.

        The CLI never decides from its own clock that a token has expired (that clock may be
        wrong; the broker's is authoritative): it sends the token, and a 401 makes :meth:`_api`
        refresh once and retry. ``fresh``: the broker has just refused the current token (the
        tunnel's retry), so refresh first.

        Raises:
            NeedsLogin: no token, or the refresh failed (session ended, refresh token reused).
            BrokerUnreachable: the refresh could not reach the broker.
            UsageError: ``ACCESS_CLIENT_ID`` is set without a usable secret.
        """
        env = env_token()
        if env:
            return env
        tokens = self._tokens()
        return (self._refresh(tokens.access_token) if fresh else tokens).access_token

    def _tokens(self) -> Tokens:
        with self._memory_lock:
            if self._memory is not None:
                return self._memory
        stored = self.store.load(self.base_url)
        env_id = os.environ.get(ENV_CLIENT_ID, "").strip()
        credentials = env_credentials() if env_id and (stored is None or stored.client_id != env_id) else None
        if credentials is not None:
            # As gh with GH_TOKEN: the environment's identity wins, and nothing is stored.
            signed_in = self.client_credentials(*credentials)
            with self._memory_lock:
                self._memory = signed_in
                self._opened_from_env = True
            return signed_in
        if stored is None:
            raise NeedsLogin(f"not signed in to {self.base_url}")
        return stored

    def _refresh(self, refused: str) -> Tokens:
        """Tokens to replace the access token ``refused`` (the broker said 401 to it)."""
        with self._memory_lock:
            if self._memory is not None:
                if self._memory.access_token == refused:
                    self._memory = self._exchange(self._memory)
                return self._memory
        with refresh_lock():
            current = self.store.load(self.base_url)
            if current is None:
                raise NeedsLogin(f"not signed in to {self.base_url}")
            if current.access_token != refused:
                return current  # another access process refreshed while we waited for the lock
            try:
                fresh = self._exchange(current)
            except NeedsLogin:
                self.store.delete(self.base_url)  # the session is over: the tokens are useless now
                raise
            self.store.save(self.base_url, fresh)
            return fresh

    def _exchange(self, current: Tokens) -> Tokens:
        """Spend ``current``'s refresh token (it rotates) for new tokens.

        Raises:
            NeedsLogin: there is no refresh token, or the broker says the session is over.
        """
        if current.refresh_token is None:
            hint = (
                f"run `access login --client-id {current.client_id} --client-secret-file FILE`"
                if current.client_id
                else None
            )
            raise NeedsLogin(f"the broker no longer accepts your token for {self.base_url}", hint)
        response = self._send(
            "POST",
            "/oauth/token",
            form={
                "grant_type": "refresh_token",
                "refresh_token": current.refresh_token,
                "client_id": current.client_id or CLIENT_ID,
            },
        )
        if response.status_code != 200:
            error = self._error(response)
            if error.code in (
                "invalid_grant",
                "invalid_token",
                "unauthenticated",
            ) or response.status_code in (
                400,
                401,
            ):
                # The session is over (expired, logged out, or the refresh token was reused).
                ended = NeedsLogin(f"your session at {self.base_url} has ended ({error.message})")
                raise _answered(ended, response) from error
            raise error
        return Tokens.from_response(response.json(), self._now(), current.client_id)

    def _api(self, method: str, path: str, **kwargs: Any) -> Any:
        """An authenticated /v1 call; on 401 with our own tokens, refresh once and retry."""
        token = self.access_token()
        response = self._send(method, path, token=token, **kwargs)
        if response.status_code == 401 and env_token() is None:
            token = self._refresh(token).access_token
            response = self._send(method, path, token=token, **kwargs)
        if response.status_code >= 400:
            raise self._error(response)
        try:
            return response.json()
        except ValueError as exc:
            raise _answered(
                CliError(f"the broker at {self.base_url} sent a reply that is not JSON"), response
            ) from exc

    # -- OAuth ---------------------------------------------------------------------------------

    def _oauth(self, path: str, form: dict[str, str]) -> tuple[httpx.Response, dict[str, Any]]:
        """POST ``form`` to an OAuth endpoint: the response and its JSON object.

        Raises:
            CliError: the answer is not a JSON object (mapped by its status), or is an error in
                the broker's own shape (mapped by its code: Unavailable when the database is down).
        """
        response = self._send("POST", path, form=form)
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise self._error(response)
        if response.status_code != 200 and isinstance(data.get("error"), dict):
            # The broker's own error shape, not RFC 6749's (its database is down, say): its code
            # decides the exit code and its hint is shown, as for every other endpoint.
            raise self._error(response)
        return response, data

    def device_authorize(self, client_host: str | None, mfa: bool = False) -> DeviceAuthorization:
        """Start a device login (RFC 8628 section 3.1); ``mfa``: the sign-in on the page must
        present a second factor (step-up, ``access login --mfa``)."""
        form = {"client_id": CLIENT_ID}
        if client_host:
            form["client_host"] = client_host
        if mfa:
            form["mfa"] = "true"
        response, data = self._oauth("/oauth/device_authorization", form)
        if response.status_code != 200:
            text = data.get("error_description") or data.get("error")
            raise _answered(CliError(f"the broker refused to start a login: {text}"), response)
        try:
            return DeviceAuthorization(
                device_code=str(data["device_code"]),
                user_code=str(data["user_code"]),
                verification_uri=str(data["verification_uri"]),
                verification_uri_complete=data.get("verification_uri_complete"),
                expires_in=int(data.get("expires_in", 600)),
                interval=int(data.get("interval", 5)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            incomplete = CliError("the broker's device authorization response is incomplete")
            raise _answered(incomplete, response) from exc

    def poll_token(self, device_code: str) -> Tokens | str:
        """One poll of the token endpoint: tokens, or ``authorization_pending`` / ``slow_down``.

        Raises:
            Denied: the person pressed Deny (``access_denied``).
            Expired: the code ran out (``expired_token``).
            CliError: any other OAuth error (a reused device code: ``invalid_grant``).
        """
        response, data = self._oauth(
            "/oauth/token",
            {"grant_type": DEVICE_GRANT_TYPE, "device_code": device_code, "client_id": CLIENT_ID},
        )
        if response.status_code == 200:
            return Tokens.from_response(data, self._now())
        error = str(data.get("error", ""))
        if error in ("authorization_pending", "slow_down"):
            return error
        if error == "access_denied":
            denied = Denied(
                "the sign-in was denied on the verification page",
                "run `access login` again; if you did not press Deny, tell your security team",
            )
            raise _answered(denied, response)
        if error == "expired_token":
            expired = Expired("the code expired before it was approved", "run `access login` again")
            raise _answered(expired, response)
        failed = CliError(
            f"login failed: {data.get('error_description') or error}", "run `access login` again", code=error
        )
        raise _answered(failed, response)

    def client_credentials(self, client_id: str, secret: str) -> Tokens:
        """Sign in as a service account (OAuth client credentials).

        Raises:
            Denied: the broker refused the client id or secret.
        """
        response, data = self._oauth(
            "/oauth/token",
            {"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
        )
        if response.status_code == 200:
            return Tokens.from_response(data, self._now(), client_id)
        refused = Denied(
            f"the broker refused client {client_id!r}: {data.get('error_description') or data.get('error')}",
            "check the client id and the secret file (`access-broker service-accounts add` prints both once)",
            code=str(data.get("error", "")),
        )
        raise _answered(refused, response)

    def exchange_ci_token(self, subject_token: str) -> Tokens:
        """Exchange a CI system's identity token for a service account's token (RFC 8693).

        Raises:
            Denied: the broker refused the token (no trust rule matches it, wrong audience,
                expired, bad signature...): the message says which.
            Unavailable: the broker cannot check it now (the CI issuer's keys are unreachable,
                or too many failures from this address).
        """
        response, data = self._oauth(
            "/oauth/token",
            {
                "grant_type": TOKEN_EXCHANGE_GRANT_TYPE,
                "subject_token": subject_token,
                "subject_token_type": JWT_TOKEN_TYPE,
            },
        )
        if response.status_code == 200:
            return Tokens.from_response(data, self._now())
        error = str(data.get("error", ""))
        text = str(data.get("error_description") or error)
        if response.status_code in (429, 503):
            busy = Unavailable(f"the broker cannot take the CI token now: {text}", "try again in a minute")
            raise _answered(busy, response)
        refused = Denied(
            f"the broker refused the CI token: {text}",
            "the broker's ACCESS_BROKER_CI_ISSUERS rules decide which pipelines may sign in "
            "(docs/pipelines.md)",
            code=error,
        )
        raise _answered(refused, response)

    def revoke_token(self, token: str) -> None:
        """RFC 7009 revocation of a refresh or access token (ends its session)."""
        response, data = self._oauth("/oauth/revoke", {"token": token, "client_id": CLIENT_ID})
        if response.status_code != 200:
            text = data.get("error_description") or data
            raise _answered(CliError(f"the broker did not revoke the token: {text}"), response)

    # -- /v1 -----------------------------------------------------------------------------------

    def whoami(self) -> Principal:
        from access.shared.models import Principal

        return self._parse(Principal, self._api("GET", "/v1/whoami"))

    def logout(self, access_token: str) -> None:
        """End the session of ``access_token`` server-side (POST /v1/logout), without refreshing.

        A 401 means the session is already over, which is what was asked.
        """
        response = self._send("POST", "/v1/logout", token=access_token)
        if response.status_code >= 400 and response.status_code != 401:
            raise self._error(response)

    def services(self) -> list[ServiceInfo]:
        from access.shared.models import ServiceInfo

        return self._parse(list[ServiceInfo], self._api("GET", "/v1/services"))

    def request_grant(
        self, service: str, scope: str, ttl: str, reason: str = "", *, break_glass: bool = False
    ) -> Grant:
        """Ask for a grant. A service the broker does not know gets "did you mean" (see below).

        Raises:
            NotFound: no such service; the hint names the likeliest of those you may request.
        """
        from access.shared.models import Grant, GrantRequest

        request = GrantRequest(service=service, scope=scope, ttl=ttl, reason=reason, break_glass=break_glass)
        try:
            # Only a break-glass request says so: an ordinary one's body is what it always was.
            body = request.model_dump(mode="json", exclude=None if request.break_glass else {"break_glass"})
            data = self._api("POST", "/v1/grants", body=body)
        except NotFound as exc:
            raise self._unknown_service(exc, service) from None
        return self._parse(Grant, data)

    def _unknown_service(self, exc: NotFound, service: str) -> NotFound:
        """``exc`` with "did you mean" from ``access services``: never a name this user cannot list."""
        from access.shared.clihelp import close_matches
        from access.shared.terminal import name as shown_name

        if exc.code != "not_found":
            return exc  # not the broker's answer (a wrong URL): nothing to suggest
        try:
            names = [item.name for item in self.services()]
        except CliError:
            return exc
        matches = close_matches(service, names)
        if not matches:
            return exc
        shown = " or ".join(f"`{shown_name(match)}`" for match in matches)
        hint = f"did you mean {shown}? see `access services`"
        return NotFound(exc.message, hint, code=exc.code, request_id=exc.request_id)

    def grant_list(self, listing: GrantList) -> list[dict[str, Any]]:
        """A listing of grants (see :data:`GrantList`) as the broker sent it, unparsed: what
        ``-o json`` prints (the broker's values, unchanged). Only its shape is checked here.

        Raises:
            CliError: the answer is not a list of JSON objects.
        """
        path, params = _GRANT_LISTS[listing]
        data = self._api("GET", path, params=params)
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise self._unexpected("not a list of grants")
        return data

    def grants_of(self, listing: GrantList) -> list[Grant]:
        """A listing of grants (see :data:`GrantList`), parsed."""
        from access.shared.models import Grant

        return self._parse(list[Grant], self.grant_list(listing))

    def list_grants(self, include_ended: bool = False) -> list[Grant]:
        return self.grants_of("all" if include_ended else "mine")

    def break_glass_grants(self) -> list[Grant]:
        """Break-glass grants, ended ones too: everyone's for an audit reader, else your own."""
        return self.grants_of("break_glass")

    def get_grant(self, grant_id: str) -> Grant:
        from access.shared.models import Grant

        return self._parse(Grant, self._api("GET", f"/v1/grants/{quote(grant_id, safe='')}"))

    def revoke(self, grant_id: str) -> Grant:
        from access.shared.models import Grant

        return self._parse(Grant, self._api("POST", f"/v1/grants/{quote(grant_id, safe='')}/revoke"))

    def extend(self, grant_id: str, ttl: str) -> Grant:
        """More time for an active grant of yours: its expiry becomes now + ``ttl`` (the broker's clock)."""
        from access.shared.models import ExtendRequest, Grant

        body = ExtendRequest(ttl=ttl).model_dump(mode="json")
        path = f"/v1/grants/{quote(grant_id, safe='')}/extend"
        return self._parse(Grant, self._api("POST", path, body=body))

    def reviews(self) -> list[Grant]:
        """Others' requests waiting for my review (``GET /v1/reviews``), oldest first."""
        return self.grants_of("reviews")

    def approve(self, grant_id: str, comment: str = "") -> Grant:
        from access.shared.models import ApproveRequest, Grant

        body = ApproveRequest(comment=comment).model_dump(mode="json")
        return self._parse(
            Grant, self._api("POST", f"/v1/grants/{quote(grant_id, safe='')}/approve", body=body)
        )

    def deny(self, grant_id: str, reason: str) -> Grant:
        from access.shared.models import DenyRequest, Grant

        body = DenyRequest(reason=reason).model_dump(mode="json")
        return self._parse(Grant, self._api("POST", f"/v1/grants/{quote(grant_id, safe='')}/deny", body=body))

    def audit(
        self,
        *,
        service: str | None = None,
        actor: str | None = None,
        since: str | None = None,
        limit: int = 100,
        grant: str | None = None,
        action: str | None = None,
    ) -> list[AuditEntry]:
        filters = {"service": service, "actor": actor, "since": since, "grant": grant, "action": action}
        return self.audit_page(filters, limit=limit).entries

    def audit_page(
        self,
        filters: dict[str, str | None],
        *,
        limit: int = 100,
        after_seq: int | None = None,
        wait: float = 0,
    ) -> AuditPage:
        """A page of ``GET /v1/audit``; with ``after_seq``, the entries after it, oldest first,
        the broker waiting up to ``wait`` seconds for one (``access audit --follow``)."""
        params = {"limit": str(limit)}
        if after_seq is not None:
            params["after_seq"] = str(after_seq)
            params["wait"] = str(wait)
        params.update((key, value) for key, value in filters.items() if value)
        from access.shared.models import AuditPage

        return self._parse(AuditPage, self._api("GET", "/v1/audit", params=params))
