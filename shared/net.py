"""Small network facts both sides decide the same way."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback_host"]


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
