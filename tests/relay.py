"""A fault-injecting TCP relay for tests: sits between a client and a server.

Faults: ``blackhole()`` (stop forwarding, keep the sockets open: a dead peer),
``idle_drop=seconds`` (close connections idle for longer, like a proxy or a
NAT), ``chunk=n`` (forward in pieces of n bytes: short reads and writes),
``reset()`` (abort every connection with a RST on both sides, as a crashed
middlebox or a peer's kernel does).
"""

from __future__ import annotations

import selectors
import socket
import struct
import threading
import time


class Relay:
    def __init__(self, target_port: int, *, idle_drop: float | None = None, chunk: int | None = None) -> None:
        self.target = ("127.0.0.1", target_port)
        self.idle_drop = idle_drop
        self.chunk = chunk
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.forwarding = True
        self.dropped = 0
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = False
        self._reset_requested = False
        self._reset_done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def blackhole(self) -> None:
        """Stop reading and forwarding; connections stay open (a dead peer:
        what was sent stays in the buffers, and senders block once they fill)."""
        self.forwarding = False

    def reset(self, timeout: float = 5.0) -> None:
        """Close every relayed connection with a RST (SO_LINGER 0) and wait until done."""
        self._reset_done.clear()
        self._reset_requested = True
        self._wake_w.send(b"x")
        if not self._reset_done.wait(timeout):
            raise RuntimeError("the relay did not reset its connections")

    def close(self) -> None:
        self._stop = True
        self._wake_w.send(b"x")
        self._thread.join(5)
        self.listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self.listener, selectors.EVENT_READ, "accept")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        pairs: dict[socket.socket, socket.socket] = {}
        active: dict[socket.socket, float] = {}

        def abort(sock: socket.socket) -> None:
            for s in (sock, pairs.get(sock)):
                if s is not None:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            drop(sock)

        def drop(sock: socket.socket) -> None:
            other = pairs.pop(sock, None)
            for s in (sock, other):
                if s is not None:
                    pairs.pop(s, None)
                    active.pop(s, None)
                    try:
                        sel.unregister(s)
                    except (KeyError, ValueError):
                        pass
                    s.close()

        try:
            while not self._stop:
                if not self.forwarding:
                    time.sleep(0.02)
                    continue
                for key, _ in sel.select(0.05):
                    if key.data == "wake":
                        self._wake_r.recv(64)
                        continue
                    if key.data == "accept":
                        client, _ = self.listener.accept()
                        server = socket.create_connection(self.target)
                        pairs[client], pairs[server] = server, client
                        now = time.monotonic()
                        active[client] = active[server] = now
                        sel.register(client, selectors.EVENT_READ, "data")
                        sel.register(server, selectors.EVENT_READ, "data")
                        continue
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    try:
                        data = sock.recv(65536)
                    except OSError:
                        data = b""
                    if not data:
                        drop(sock)
                        continue
                    other = pairs[sock]
                    try:
                        if self.chunk:
                            for i in range(0, len(data), self.chunk):
                                other.sendall(data[i : i + self.chunk])
                        else:
                            other.sendall(data)
                    except OSError:
                        drop(sock)
                        continue
                    now = time.monotonic()
                    active[sock] = active[other] = now
                if self._reset_requested:
                    self._reset_requested = False
                    for sock in list(pairs):
                        if sock in pairs:
                            abort(sock)
                    self._reset_done.set()
                if self.idle_drop is not None:
                    now = time.monotonic()
                    for sock, last in list(active.items()):
                        if sock in active and now - last > self.idle_drop:
                            self.dropped += 1
                            drop(sock)
        finally:
            for sock in list(pairs):
                drop(sock)
            sel.close()
