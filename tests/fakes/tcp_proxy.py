"""A TCP proxy on 127.0.0.1 that breaks connections on demand (network fault injection).

It sits between a client under test and a real local server (a fake platform API, or the
PostgreSQL test server) and, depending on :attr:`FaultyProxy.mode`, forwards bytes or fails
the way networks do:

* ``pass``   — forward both ways;
* ``reset``  — the next bytes a client sends make the proxy cut that connection with a TCP
  RST (``ECONNRESET`` / "server disconnected" on the client); new connections still open;
* ``stall``  — requests are swallowed and nothing ever comes back (the client times out);
* ``refuse`` — every open connection is cut at once and new ones are reset on accept (a
  server that went away: "connection refused/reset" on every attempt).

Switching modes is immediate and needs no sleeping; tests switch back to ``pass`` to end the
outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field
from typing import Literal

Mode = Literal["pass", "reset", "stall", "refuse"]


@dataclass(eq=False)  # hashed by identity: kept in a set
class _Link:
    """One proxied connection: the client side and the upstream side."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    stalled: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), not a polite FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultyProxy:
    """Forwards ``127.0.0.1:<port>`` to ``host:port`` and injects connection faults."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.mode: Mode = "pass"
        self.port = 0
        self.accepted = 0  # connections accepted
        self.cut = 0  # connections cut by a fault
        self.swallowed = 0  # chunks of request bytes dropped while stalled
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> FaultyProxy:
        """Listen on a free port of 127.0.0.1."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` (for HTTP clients)."""
        return f"http://127.0.0.1:{self.port}"

    def set_mode(self, mode: Mode) -> None:
        """Change behaviour now; ``refuse`` also cuts every open connection."""
        self.mode = mode
        if mode == "refuse":
            self.cut_all()

    def cut_all(self) -> None:
        """Reset every open connection (pooled keep-alive and database connections too)."""
        for link in list(self._links):
            self._cut(link)

    async def close(self) -> None:
        """Stop listening and cut whatever is still open."""
        self.cut_all()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    # ------------------------------------------------------------------ internals

    def _cut(self, link: _Link) -> None:
        if link not in self._links:
            return
        self._links.discard(link)
        self.cut += 1
        _rst(link.client)
        link.upstream.transport.abort()
        current = asyncio.current_task()
        for task in link.tasks:
            if task is not current:
                task.cancel()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self.mode == "refuse":
            self.cut += 1
            _rst(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _rst(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        link.tasks = [
            asyncio.create_task(self._pump(link, reader, up_writer, outbound=True)),
            asyncio.create_task(self._pump(link, up_reader, writer, outbound=False)),
        ]

    async def _pump(
        self,
        link: _Link,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        outbound: bool,
    ) -> None:
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                if outbound and self.mode in ("reset", "refuse"):
                    self._cut(link)
                    return
                if outbound and self.mode == "stall":
                    link.stalled = True
                if link.stalled:
                    self.swallowed += int(outbound)
                    continue  # nothing goes through a stalled connection again
                writer.write(chunk)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if link in self._links and not link.stalled:
                self._links.discard(link)
                with contextlib.suppress(OSError):
                    link.client.close()
                    link.upstream.close()
