"""A Python server under test, in a process of its own; run by run.py.

    python bench/server_worker.py KIND

KIND is blockws, websockets-sync, websockets-asyncio or raw (a
socketserver.ThreadingTCPServer echoing bytes: the raw-TCP ceiling). Each is
an echo server on 127.0.0.1 with compression off and no message size limit.
Prints {"port": PORT, "pid": PID} when it listens; exits when stdin closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import socketserver
import sys
import threading
from collections.abc import Callable
from typing import Any

from procs import BACKLOG, HOST

Ready = Callable[[int], None]


def serve_blockws(ready: Ready) -> None:
    import blockws

    def echo(ws: Any) -> None:
        for message in ws:
            ws.send(message)

    server = blockws.serve(echo, HOST, 0, compression=None, max_size=None, backlog=BACKLOG)
    ready(server.port)
    server.serve_forever()


def serve_websockets_sync(ready: Ready) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.server import serve

    def echo(ws: Any) -> None:
        # A client that drops its connection is routine here (blockws's server says so at INFO level).
        with contextlib.suppress(ConnectionClosed):
            for message in ws:
                ws.send(message)

    # Extra keyword arguments go to socket.create_server.
    with serve(echo, HOST, 0, compression=None, max_size=None, backlog=BACKLOG) as server:
        ready(server.socket.getsockname()[1])
        server.serve_forever()


def serve_websockets_asyncio(ready: Ready) -> None:
    from websockets.asyncio.server import serve
    from websockets.exceptions import ConnectionClosed

    async def echo(ws: Any) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for message in ws:
                await ws.send(message)

    async def main() -> None:
        async with serve(echo, HOST, 0, compression=None, max_size=None, backlog=BACKLOG) as server:
            ready(next(iter(server.sockets)).getsockname()[1])
            await asyncio.Future()  # until the process exits

    asyncio.run(main())


class _RawEcho(socketserver.BaseRequestHandler):
    request: socket.socket

    def handle(self) -> None:
        sock = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as every WebSocket library does
        while data := sock.recv(65536):
            sock.sendall(data)


class _RawServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = BACKLOG


def serve_raw(ready: Ready) -> None:
    with _RawServer((HOST, 0), _RawEcho) as server:
        ready(server.server_address[1])
        server.serve_forever()


SERVERS: dict[str, Callable[[Ready], None]] = {
    "blockws": serve_blockws,
    "websockets-sync": serve_websockets_sync,
    "websockets-asyncio": serve_websockets_asyncio,
    "raw": serve_raw,
}


def _exit_when_stdin_closes() -> None:
    sys.stdin.read()
    os._exit(0)  # no graceful shutdown: the measurements are over


def main() -> None:
    if len(sys.argv) != 2 or sys.argv[1] not in SERVERS:
        sys.exit(f"usage: server_worker.py {'|'.join(SERVERS)}")

    def ready(port: int) -> None:
        print(json.dumps({"port": port, "pid": os.getpid()}), flush=True)

    threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
    SERVERS[sys.argv[1]](ready)


if __name__ == "__main__":
    main()
