"""Loopback, decided once for the broker's bind address and the CLI's broker URL."""

from __future__ import annotations

import pytest

from access.shared.net import is_loopback_host


@pytest.mark.parametrize("host", ["localhost", "LocalHost", "127.0.0.1", "127.8.9.10", "::1", "[::1]"])
def test_loopback(host: str) -> None:
    assert is_loopback_host(host)


@pytest.mark.parametrize(
    "host", ["0.0.0.0", "::", "10.0.0.1", "broker.example", "localhost.example", "127.0.0.1.nip.io", ""]
)
def test_not_loopback(host: str) -> None:
    assert not is_loopback_host(host)
