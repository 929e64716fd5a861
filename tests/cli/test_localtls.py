"""The local end of a kubernetes tunnel: a certificate kubectl can verify, and the run's token."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

from access.cli.localtls import local_tls, unauthorized


def _head(authorization: str | None) -> bytes:
    lines = ["GET /version HTTP/1.1", "Host: 127.0.0.1"] + (
        [f"Authorization: {authorization}"] if authorization else []
    )
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_only_the_runs_token_is_admitted(tmp_path: Path) -> None:
    tls = local_tls(tmp_path)
    assert tls.admits(_head(f"Bearer {tls.token}"))
    assert tls.admits(_head(f"bearer {tls.token}"))
    for wrong in (None, "Bearer", f"Basic {tls.token}", f"Bearer {tls.token}x", "Bearer " + "é" * 43):
        assert not tls.admits(_head(wrong)), wrong
    assert not tls.admits(b"not a request\r\n\r\n")
    assert local_tls(tmp_path).token != tls.token
    assert list(tmp_path.iterdir()) == []  # the key was on disk only while ssl loaded it
    assert b"401 Unauthorized" in unauthorized()


def test_the_certificate_verifies_for_127_0_0_1(tmp_path: Path) -> None:
    tls = local_tls(tmp_path)

    async def handshake() -> str | None:
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=tls.context)
        port = server.sockets[0].getsockname()[1]
        client = ssl.create_default_context(cadata=tls.cert_pem)
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="127.0.0.1"), 10
            )
            protocol = writer.get_extra_info("ssl_object").selected_alpn_protocol()
            writer.close()
            return protocol
        finally:
            server.close()

    assert asyncio.run(handshake()) is None  # verified (the client offered no ALPN)
