"""A TCP proxy to PostgreSQL that a test can cut and restore: PostgreSQL as the
service sees it when it goes down and comes back, without stopping the real
server other tests use."""

from __future__ import annotations

import asyncio
import contextlib


class TcpProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        """Accepts connections (again on the same port, after `stop`)."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Refuses new connections and drops every open one, as a crash would."""
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
        try:
            await asyncio.gather(
                self._pipe(client_in, server_out), self._pipe(server_in, client_out)
            )
        finally:
            self._writers -= {client_out, server_out}

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        try:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            sink.transport.abort()
            with contextlib.suppress(Exception):
                await sink.wait_closed()
