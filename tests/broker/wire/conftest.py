"""The private PostgreSQL cluster (``tests.servers.pg_cluster``), and a tiny asyncio driver for the machines.

``PgDriver`` is what the tunnel will be, minus the tunnel: a loopback listener whose every
connection runs ``postgres.handshake`` against the cluster, then relays through a ``tap``.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from access.broker.wire import postgres
from access.broker.wire.base import Statement, TargetLogin, WireError
from tests.servers import BOUND, DATABASE, Cluster, pg_cluster

__all__ = ["BOUND", "DATABASE", "Channel", "Cluster", "PgDriver", "pg_cluster"]


@dataclass
class Channel:
    handshake: postgres.PostgresHandshake
    tap: postgres.PostgresTap


class PgDriver:
    """A loopback listener: each connection runs the handshake against the cluster, then relays."""

    def __init__(self, cluster: Cluster, login: TargetLogin, *, allow_cleartext: bool = False) -> None:
        self.cluster = cluster
        self.login = login
        self.allow_cleartext = allow_cleartext
        self.channels: list[Channel] = []
        self.errors: list[WireError] = []
        self.cancels: list[str] = []  # "forwarded" or "refused", one per CancelRequest served
        self.cancelled = asyncio.Condition()
        self.port = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> PgDriver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await asyncio.wait_for(self._server.wait_closed(), BOUND)

    def statements(self) -> list[Statement]:
        return [statement for channel in self.channels for statement in channel.tap.take()]

    def conninfo(self, **extra: str) -> str:
        params = {"host": "127.0.0.1", "port": str(self.port), "dbname": DATABASE, "user": "nobody",
                  "passfile": "/dev/null", "connect_timeout": "10", **extra}  # fmt: skip
        return " ".join(f"{key}={value}" for key, value in params.items())

    async def wait_cancels(self, count: int) -> list[str]:
        async with asyncio.timeout(BOUND), self.cancelled:
            await self.cancelled.wait_for(lambda: len(self.cancels) >= count)
        return self.cancels

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        machine = postgres.handshake(self.login, allow_cleartext=self.allow_cleartext)
        target: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            async with asyncio.timeout(BOUND):
                while not machine.done:
                    if machine.cancel_request is not None:
                        await self._cancel(machine.cancel_request)
                        return
                    writer.write(machine.data_to_client())
                    if machine.wants_target and target is None:
                        target = await asyncio.open_connection("127.0.0.1", self.cluster.port)
                    if target is not None:
                        target[1].write(machine.data_to_target())
                    if target is None:
                        data = await reader.read(65536)
                        if not data:
                            return
                        machine.feed_client(data)
                    else:
                        data = await target[0].read(65536)
                        if not data:
                            raise WireError("the target hung up during the login")
                        machine.feed_target(data)
            assert target is not None
            channel = Channel(machine, postgres.tap())
            self.channels.append(channel)
            to_target, to_client = machine.leftovers()
            writer.write(machine.data_to_client() + to_client)
            channel.tap.client_bytes(to_target)
            target[1].write(to_target)
            await asyncio.gather(
                self._pump(reader, target[1], channel.tap), self._pump(target[0], writer, None)
            )
        except WireError as exc:
            self.errors.append(exc)
            writer.write(exc.client_message)
        finally:
            for stream in (writer, *(target[1:] if target else ())):
                stream.close()
                with contextlib.suppress(OSError):
                    await asyncio.wait_for(stream.wait_closed(), BOUND)

    @staticmethod
    async def _pump(
        source: asyncio.StreamReader, sink: asyncio.StreamWriter, recorder: postgres.PostgresTap | None
    ) -> None:
        while data := await source.read(65536):
            if recorder is not None:
                recorder.client_bytes(data)
            sink.write(data)
            await sink.drain()
        sink.close()

    async def _cancel(self, presented: tuple[int, int]) -> None:
        outcome = "refused"
        for channel in self.channels:
            target_key = channel.handshake.target_key
            if target_key is not None and postgres.cancel_key_matches(
                channel.handshake.client_key, presented
            ):
                _, sink = await asyncio.open_connection("127.0.0.1", self.cluster.port)
                sink.write(postgres.cancel_message(*target_key))
                await sink.drain()
                sink.close()
                await asyncio.wait_for(sink.wait_closed(), BOUND)
                outcome = "forwarded"
        async with self.cancelled:
            self.cancels.append(outcome)
            self.cancelled.notify_all()
