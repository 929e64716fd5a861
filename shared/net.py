"""Small network facts both sides decide the same way."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

__all__ = ["IPNetwork", "check_remote_url", "forwarded_client", "is_loopback_host"]


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``, ``[::1]``).

    Only names we can be sure of count: any other host name may resolve anywhere, so it is not
    loopback, and plain HTTP to it (CLI) or on it (broker) needs an explicit "insecure".
    """
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def forwarded_client(peer: str, forwarded_for: Sequence[str], trusted: Sequence[IPNetwork]) -> str:
    """The client's address: ``peer`` unless it is a trusted proxy, then from ``X-Forwarded-For``.

    The rightmost-untrusted rule: walk the ``X-Forwarded-For`` entries (``forwarded_for`` is every
    header line, in order) from the right, past every trusted proxy; the first address that is
    not one is the client. Entries left of it were written by that client and are never
    believed. When every entry is trusted, the leftmost is the client. An entry that is not an
    address (a proxy we trust wrote garbage) stops the walk at the proxy that handed it over.
    """
    if not trusted or not _within(peer, trusted):
        return peer
    entries = [entry.strip() for line in forwarded_for for entry in line.split(",") if entry.strip()]
    client = peer
    for entry in reversed(entries):
        address = _address(entry)
        if address is None:
            return client
        client = address
        if not _within(address, trusted):
            return address
    return client


def _address(entry: str) -> str | None:
    text = entry
    if text.startswith("["):  # "[2001:db8::1]:443"
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:  # "192.0.2.1:443"
        text = text.partition(":")[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def _within(address: str, networks: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in networks)


def check_remote_url(where: str, url: str) -> None:
    """Refuse a URL the broker would call that is not ``https://`` (``http://`` only to loopback).

    Used for webhooks and CI issuers: a URL with a user or password, or without a host, is
    refused too. ``where`` starts each message (``webhook 'ops'``).

    Raises:
        ValueError: the URL is not acceptable; the message says why.
    """
    try:
        parts = urlsplit(url)
        host, _port = parts.hostname or "", parts.port  # .port raises on a bad port
    except ValueError:
        raise ValueError(f"{where}: the url is not a valid URL") from None
    if not host:
        raise ValueError(f"{where}: the url has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{where}: the url must not carry a user or password")
    if parts.scheme == "https":
        return
    if parts.scheme == "http" and is_loopback_host(host):
        return  # a peer on this machine (a sidecar, a test): nothing crosses a network
    raise ValueError(f"{where}: the url must be https:// (http:// only to a loopback address)")
