"""A TCP proxy to PostgreSQL that a test can cut and restore: PostgreSQL as the
service sees it when it goes down and comes back, without stopping the real
server other tests use. It can also hold what a client sends from a given
message on, as a stopped backend or a congested network does, and deliver it later."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0
        self._hold_marker: bytes | None = None
        self._released = asyncio.Event()
        #: Set when a client's bytes are held.
        self.holding = asyncio.Event()
        #: The local port of the held connection to the server (its backend's client_port).
        self.held_port = 0
        #: The local ports of every connection to the server, in the same sense.
        self.server_ports: set[int] = set()

    def hold_from(self, marker: bytes) -> None:
        """Holds what one client sends, from the first chunk that contains `marker`,
        until `release`; even a client that closed meanwhile has it delivered then.
        Other connections flow meanwhile."""
        self._hold_marker = marker
        self._released = asyncio.Event()
        self.holding = asyncio.Event()

    def release(self) -> None:
        self._hold_marker = None
        self._released.set()

    async def start(self) -> None:
        """Accepts connections (again on the same port, after `stop`)."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuses new connections and drops every open one, as a crash would."""
        self.release()
        if self._server:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def _relay(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter):
        try:
            server_in, server_out = await asyncio.open_connection(*self._target)
        except OSError:
            client_out.transport.abort()
            return
        self._writers |= {client_out, server_out}
        self.server_ports.add(server_out.get_extra_info("sockname")[1])
        try:
            await asyncio.gather(
                self._pipe(client_in, server_out, holds=True), self._pipe(server_in, client_out)
            )
        finally:
            self._writers -= {client_out, server_out}

    async def _pipe(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, holds: bool = False
    ) -> None:
        try:
            while data := await source.read(65536):
                if holds and self._hold_marker is not None and self._hold_marker in data:
                    self._hold_marker = None
                    self.held_port = sink.get_extra_info("sockname")[1]
                    self.holding.set()
                    await self._released.wait()
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.close()  # after what was written, as a peer's end of the connection
            with contextlib.suppress(Exception):
                await sink.wait_closed()
