"""Small pieces several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import resource
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import blockws
from blockws.handshake import accept_key


class LateReader:
    """A server handler that reads nothing until ``reading`` is set, then collects every message.

    With a client that doesn't stop sending, this is a peer applying backpressure
    (serve it with ``keepalive=None``: a keepalive reads up to 1 MiB for a
    handler that doesn't).
    """

    def __init__(self) -> None:
        self.reading = threading.Event()
        self.received: list[Any] = []

    def __call__(self, ws: blockws.WebSocket) -> None:
        self.reading.wait(10)
        self.received.extend(ws)


class RecvErrors:
    """A server handler that records the ConnectionClosedError its first recv() raises."""

    def __init__(self) -> None:
        self.errors: list[blockws.ConnectionClosedError] = []

    def __call__(self, ws: blockws.WebSocket) -> None:
        try:
            ws.recv()
        except blockws.ConnectionClosedError as exc:
            self.errors.append(exc)


class SilentPeer:
    """A raw TCP server that completes the opening handshake, then reads and
    drops whatever comes and never answers the Close: a closing handshake
    with it can only time out. Each connection stays open until the client
    closes it, or ``eof=True``: until the client's Close arrives, then it
    closes TCP without a Close. Use it as a context manager."""

    def __init__(self, eof: bool = False) -> None:
        self.eof = eof
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.handshakes = 0
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # the listener was shut down
            thread = threading.Thread(target=self._serve, args=(conn,))
            self._threads.append(thread)
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                data = conn.recv(4096)
                if not data:
                    return
                head += data
            lines = head.split(b"\r\n")
            key = next(
                line.split(b":", 1)[1].strip() for line in lines if line.lower().startswith(b"sec-websocket-key:")
            )
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept_key(key.decode()).encode() + b"\r\n\r\n"
            )
            self.handshakes += 1
            while data := conn.recv(4096):
                if self.eof and data[:1] == b"\x88":  # the client's Close (a frame of its own)
                    return

    def __enter__(self) -> SilentPeer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes accept()
        self._accepting.join(5)
        self.listener.close()
        for thread in self._threads:
            thread.join(5)


def send_in_parts(ws: blockws.WebSocket, data: bytes, on_timeout: Any) -> list[int]:
    """Send ``data`` with partial ``send()`` calls; call ``on_timeout(counts)`` when one
    accepts nothing. Returns how much each call accepted (each checked to be 1 to all)."""
    view = memoryview(data)
    counts: list[int] = []
    while view:
        try:
            n = ws.send(view)
        except TimeoutError:
            on_timeout(counts)
            continue
        assert 0 < n <= len(view)
        counts.append(n)
        view = view[n:]
    return counts


def raise_fd_limit(needed: int) -> None:
    """Raise the soft limit of open files to ``needed`` (skip the test if the hard limit is lower)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# Set from pytest's --large option: the tests marked large run at full scale
# only then (CI has a step for it), a tenth of it in the everyday run.
LARGE = False


def at_scale(full: int) -> int:
    """``full`` with --large, else a tenth of it."""
    return full if LARGE else max(1, full // 10)


# The Windows code path (no select.poll, no MSG_DONTWAIT), which conftest.py
# sets up on this machine when BLOCKWS_TEST_NO_POLL is set.
FALLBACK_PATH = bool(os.environ.get("BLOCKWS_TEST_NO_POLL"))

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


@contextlib.contextmanager
def running(command: list[str], pattern: str, stream: str = "stdout") -> Iterator[str]:
    """Run ``command`` (this checkout's blockws on its path) until the ``with`` ends.

    Yields group 1 of ``pattern``, searched line by line in what the
    program prints on ``stream`` ("stdout" or "stderr"): its URL.
    """
    pipe = {stream: subprocess.PIPE}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, text=True, env=env, **pipe)  # type: ignore[call-overload]
    out = process.stdout if stream == "stdout" else process.stderr
    try:
        lines = []
        for line in out:
            lines.append(line)
            match = re.search(pattern, line)
            if match:
                break
        else:
            raise AssertionError(f"{command} exited ({process.wait()}) without printing {pattern!r}: {lines}")
        yield match.group(1)
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        out.close()


def run_example_server(name: str, *args: str) -> contextlib.AbstractContextManager[str]:
    """``python examples/NAME ARGS`` on port 0: the URL of its page (``http://127.0.0.1:PORT/``)."""
    return running([sys.executable, str(EXAMPLES / name), "0", *args], r" on (http://127\.0\.0\.1:\d+/)$")


def http_get(url: str) -> tuple[int, str]:
    """A plain HTTP GET of an ``http://host:port/path`` URL: the status and the body."""
    host_port, _, path = url.removeprefix("http://").partition("/")
    host, _, port = host_port.partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        connection.request("GET", "/" + path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def pings_while_reading(ws: blockws.WebSocket, seconds: float) -> int:
    """How many Pings the peer sends in ``seconds`` while we read (and so
    answer them at once); the connection must stay open and send nothing else."""
    pings = 0

    def count(direction: str, header: Any, payload: bytes) -> None:
        nonlocal pings
        if direction == "<" and header.opcode == blockws.Opcode.PING:
            pings += 1

    ws.trace = count
    ws.settimeout(0.05)
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            with contextlib.suppress(TimeoutError):
                message = ws.recv()
                raise AssertionError(f"unexpected {message!r}")
    finally:
        ws.trace = None
        ws.settimeout(5)
    return pings
