"""A tunnel channel of a ``kubernetes`` service: ``proxy.KubeProxy`` between the relay and the API server.

Registered as ``tunnel.protocol.CHANNEL_KINDS["kubernetes"]`` when this module is imported (the
server does at its first tunnel). The channel opens as every channel does (the session and the
grant checked again, ``connection.open`` written, then the target dialled), here with TLS
verified against the service's ``ca_file`` (or the system's CAs) and, for a client-certificate
credential, that certificate; the bearer token is read at each open from ``token_file`` or
``token_env`` and never logged. Until an upgrade, every byte each way goes through the proxy:

- kubectl's DATA is credited back at once (the proxy holds at most a request's head and body);
  what the proxy has for the API server is written to it, what it has for kubectl is sent
  within the channel's window (held, with the API server's connection paused, past it);
- each exchange's audit record goes to the statement log (the session's ``statement_sink``, as a
  logged-in channel's statements do);
  a log that cannot take it ends the channel (fail closed);
- a head must arrive within ``HEAD_TIMEOUT`` of its first byte (408) and the API server must
  answer a forwarded head within ``RESPONSE_TIMEOUT`` (504); a refusal, a timeout or a
  ``Connection: close`` closes the channel once kubectl has what was sent.

After a ``101`` the channel is the base channel: bytes both ways, cut with the tunnel when the
grant ends. ``connection.close`` counts the channel's ``requests``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from access.broker.errors import Unavailable
from access.broker.kinds.login import TargetTls
from access.broker.kube.proxy import Forwarding, KubeProxy, ProxyError, status_response
from access.broker.tunnel.protocol import CHANNEL_KINDS, BrokerChannel
from access.broker.wire.base import Statement

if TYPE_CHECKING:
    from access.broker.kube.config import KubernetesConfig
    from access.broker.tunnel.protocol import TunnelProtocol

__all__ = ["HEAD_TIMEOUT", "RESPONSE_TIMEOUT", "KubeChannel", "KubeTls", "forwarding_for"]

HEAD_TIMEOUT = 10.0
RESPONSE_TIMEOUT = 60.0


@dataclass(frozen=True, slots=True)
class KubeTls(TargetTls):
    """The API server leg: verified TLS, with the broker's client certificate when it has one."""

    ssl_context: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext | None:
        return self.ssl_context


def _tls(service: str, block: KubernetesConfig) -> KubeTls:
    hint = "operators: check the service's kubernetes.ca_file, client_cert_file and client_key_file"
    try:
        context = ssl.create_default_context(cafile=block.ca_file)
        if block.client_cert_file is not None:
            context.load_cert_chain(block.client_cert_file, block.client_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise Unavailable(f"the broker cannot load its TLS files for {service}", hint=hint) from exc
    context.set_alpn_protocols(["http/1.1"])  # h11 speaks HTTP/1.1: never let the server pick h2
    return KubeTls("verify-full", block.ca_file, context)


def _token(service: str, block: KubernetesConfig) -> str | None:
    if block.token_file is not None:
        try:
            token = Path(block.token_file).read_text().strip()
        except OSError as exc:
            raise Unavailable(
                f"the broker cannot read its token for {service}",
                hint="operators: check kubernetes.token_file",
            ) from exc
    elif block.token_env is not None:
        token = os.environ.get(block.token_env, "").strip()
    else:
        return None
    if not token or any(c.isspace() or not c.isprintable() for c in token):
        raise Unavailable(
            f"the broker has no usable token for {service}",
            hint="operators: set kubernetes.token_file or token_env to the token of the broker's identity",
        )
    return token


def forwarding_for(
    service: str, target: str, block: KubernetesConfig, user: str, groups: tuple[str, ...]
) -> Forwarding:
    """What the broker adds to each request of ``user`` (in ``groups``) to ``service``.

    Raises:
        Unavailable: the token source cannot be read or holds no token.
    """
    token = _token(service, block)
    return Forwarding(
        host=target,
        authorization=None if token is None else f"Bearer {token}",
        user=user if block.impersonate else None,
        groups=groups if block.impersonate else (),
    )


class KubeChannel(BrokerChannel):
    """One kubectl connection: HTTP checked request by request, then bytes after an upgrade."""

    __slots__ = ("proxy", "requests", "stopped", "timer")

    session: TunnelProtocol

    def __init__(self, session: TunnelProtocol, channel_id: int) -> None:
        super().__init__(session, channel_id)
        self.proxy: KubeProxy | None = None  # None once upgraded (or before ``prepare``)
        self.stopped = False  # failed or timed out: nothing more is relayed either way
        self.requests = 0
        self.timer: asyncio.TimerHandle | None = None

    def prepare(self) -> None:
        """Worker thread: the service's block, the broker's credential and TLS for this channel."""
        session = self.session
        grant, ctx = session.grant, session.ctx
        assert grant is not None and ctx is not None
        service = session.broker.policy.service(grant.service)
        block = getattr(service, "kubernetes", None)
        if service is None or block is None:
            raise Unavailable(f"{grant.service} is not a kubernetes service in the policy now")
        self.target_tls = _tls(grant.service, block)
        forwarding = forwarding_for(grant.service, service.target, block, ctx.name, tuple(ctx.groups))
        settings = session.broker.settings
        self.proxy = KubeProxy(
            grant.scope, block.rules(grant.scope), forwarding, max_head=settings.http_max_head
        )

    # -- target -> client ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self.stopped:
            return  # the rest of a response we gave up on: never relayed unchecked
        proxy = self.proxy
        if proxy is None:
            super().data_received(data)
            return
        try:
            proxy.feed_target(data)
        except ProxyError as exc:
            self._fail(str(exc))
            return
        self._drain(proxy)

    # -- client -> target ------------------------------------------------------------------

    def deliver(self, data: bytes) -> None:
        proxy = self.proxy
        if proxy is None and not self.stopped:
            super().deliver(data)
            return
        self.consume(data)  # taken by the proxy at once (it bounds what it keeps): the credit is due
        if proxy is not None:  # else stopped: dropped, and the credit still comes back
            try:
                proxy.feed_client(data)
            except ProxyError as exc:
                self._fail(str(exc))
            else:
                self._drain(proxy)
        if self.unacked >= self.ack_mark and not self.write_paused and self.transport is not None:
            self._ack()

    # -- what the proxy produced -----------------------------------------------------------

    def _drain(self, proxy: KubeProxy) -> None:
        out = proxy.data_to_target()
        if out and self.transport is not None:
            self.transport.write(out)
        back = proxy.data_to_client()
        if back:
            super().data_received(back)  # within the window, else held with the target paused
        records = proxy.take_records()
        if records and not self._record(records):
            return
        if proxy.upgraded:
            self.proxy = None
            self._stop_timer()
            to_target, to_client = proxy.leftovers()
            if to_target and self.transport is not None:
                self.transport.write(to_target)
            if to_client:
                super().data_received(to_client)
            return
        if proxy.closing:
            self._stop_timer()
            self._close_after_sending()
            return
        self._arm(proxy)

    def _record(self, records: list[Statement]) -> bool:
        self.requests += len(records)
        session = self.session
        if session.grant is None or session.ctx is None:
            return False
        sink = session.statement_sink
        added = sink is not None and sink(self, records)
        if not added:
            self._fail("the statement log refused a batch", status=503)
        return added

    def _close_after_sending(self) -> None:
        """Close the API server's leg once kubectl has been sent what is for it (``held`` too)."""
        if self.held:
            self.eof_pending = True  # ``credit`` sends the rest, then closes the transport
        elif self.transport is not None:
            self.transport.close()

    def _fail(self, error: str, *, status: int = 502) -> None:
        """A broken stream or a refused batch: tell kubectl (when it can be told) and end."""
        if self.why is not None:
            return
        self.error = error[:500]
        self.why = "refused" if status == 503 else "error"
        self._stop_timer()
        proxy, self.proxy = self.proxy, None
        self.stopped = True
        if proxy is not None and not proxy.upgraded and proxy.exchange is None and self.active:
            message = (
                "access cannot record this request now; try again shortly"
                if status == 503
                else f"access: {error}"
            )
            super().data_received(status_response(status, message))
        self._close_after_sending()

    # -- deadlines -------------------------------------------------------------------------

    def _arm(self, proxy: KubeProxy) -> None:
        due = proxy.head_started or proxy.awaiting_response
        if due and self.timer is None:
            seconds = HEAD_TIMEOUT if proxy.head_started else RESPONSE_TIMEOUT
            self.timer = asyncio.get_running_loop().call_later(seconds, self._timed_out, proxy.head_started)
        elif not due:
            self._stop_timer()

    def _stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _timed_out(self, head: bool) -> None:
        self.timer = None
        if self.proxy is None or self.why is not None:
            return
        if head:
            message = f"access: the request head did not arrive within {HEAD_TIMEOUT:g} s"
            self.error = "request head timed out"
            self.why = "error"
            self.proxy = None
            self.stopped = True
            super().data_received(status_response(408, message))
            self._close_after_sending()
        else:
            self.error = f"the API server did not answer within {RESPONSE_TIMEOUT:g} s"
            self.why = "error"
            self.proxy = None
            self.stopped = True
            self._close_after_sending()

    def finishing(self, details: dict[str, Any]) -> None:
        self._stop_timer()
        proxy, self.proxy = self.proxy, None
        if proxy is not None:
            proxy.finish()
            records = proxy.take_records()
            if records:
                self._record(records)
        details["requests"] = self.requests
        self.session.statement_log.close(self.connection_id)


CHANNEL_KINDS["kubernetes"] = KubeChannel
