"""Real network conditions for the retry tests: a server that starts late, a connection that breaks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from grpc import aio

from makima.server.app import App, start
from makima.server.config import Settings

_HEADERS_FRAME = 0x1


async def start_server(database_url: str, port: int, workspace: Path) -> App:
    """A second server on `port` over the database of the `server` fixture, so the `api` fixture's
    key works on it; like another replica of the service that can stop and start again."""
    return await start(
        Settings(
            listen=f"127.0.0.1:{port}",
            database_url=database_url,
            workspace_root=workspace,
            shutdown_grace=0.5,
            keep_alive_seconds=1.0,
            timeline_recheck_seconds=0.2,
        )
    )


@asynccontextmanager
async def server_without_makima() -> AsyncIterator[int]:
    """A real gRPC server that offers no makima service (like an older or a different server on the
    address); yields its port."""
    server = aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


class AnswerDroppingProxy:
    """A TCP proxy in front of a gRPC server that breaks its first `drops` connections at the moment
    the server starts to answer a call (its first HTTP/2 HEADERS frame on a stream): the server has
    done the work, the client only sees the connection die, as when a network fails mid-call."""

    def __init__(self, target_port: int, *, drops: int = 1) -> None:
        self.target_port = target_port
        self.drops_left = drops
        self.connections = 0
        self.dropped = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> int:
        """Listen on a free port and return it."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        drop = self.drops_left > 0
        if drop:
            self.drops_left -= 1
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        pumps = [
            asyncio.create_task(self._copy(client_reader, server_writer)),
            asyncio.create_task(self._copy_frames(server_reader, client_writer, drop=drop)),
        ]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        client_writer.transport.abort()
        server_writer.transport.abort()

    @staticmethod
    async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            return

    async def _copy_frames(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, drop: bool) -> None:
        """Server to client, frame by frame (the server side of HTTP/2 starts with frames, no preface)."""
        try:
            while True:
                header = await reader.readexactly(9)
                payload = await reader.readexactly(int.from_bytes(header[:3], "big"))
                stream_id = int.from_bytes(header[5:9], "big") & 0x7FFFFFFF
                if drop and header[3] == _HEADERS_FRAME and stream_id != 0:
                    self.dropped += 1
                    return
                writer.write(header + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            return
