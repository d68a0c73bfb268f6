"""Server.shutdown() from any thread, bounded by its grace whatever the peers do,
and Ctrl-C on ``blockws serve``."""

from __future__ import annotations

import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import blockws
import blockws.workers
from blockws.server import DEFAULT_SHUTDOWN_GRACE

from .helpers import ROOT, raise_fd_limit

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.fixture
def thread_failures(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterator[list[Any]]:
    """What went wrong in any thread: uncaught exceptions and blockws's warnings and errors."""
    failures: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", failures.append)
    caplog.set_level(logging.WARNING, logger="blockws")
    yield failures
    failures += [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.WARNING]


def raw_client(port: int, rcvbuf: int | None = None) -> socket.socket:
    """A peer that completes the handshake and then never reads: not a blockws client."""
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    sock.sendall(HANDSHAKE)
    return sock


def masked_binary(payload: bytes) -> bytes:
    # A zero masking key leaves the payload as it is.
    return struct.pack("!BBQ", 0x82, 0x80 | 127, len(payload)) + b"\0\0\0\0" + payload


def read_to_the_end(sock: socket.socket) -> bytes:
    """Everything the server sent until it closed; fails after 5 s if it never does."""
    sock.settimeout(5)
    data = b""
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


def close_sent(data: bytes) -> int:
    """The code of the one frame a raw client got after the 101: the server's Close."""
    head, _, frames = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), data
    assert frames[0] == 0x88 and frames[1] == len(frames) - 2, frames
    return int(struct.unpack("!H", frames[2:4])[0])


class Reader:
    """A blockws client whose application reads: it answers the server's Close at once."""

    def __init__(self, url: str) -> None:
        self.ws = blockws.connect(url, timeout=10, compression=None, connect_gate=None)
        self.received: list[Any] = []
        self.thread = threading.Thread(target=self._read)
        self.thread.start()

    def _read(self) -> None:
        try:
            self.received.append(self.ws.recv())
        finally:
            self.ws.close()

    def ended(self) -> tuple[list[Any], int | None]:
        self.thread.join(10)
        return self.received, self.ws.close_code


def wait_until(condition: Any, timeout: float = 10) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


def assert_refused(port: int) -> None:
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


# -- from any thread ----------------------------------------------------------------


def stopping_handler(server: list[blockws.Server], outcome: list[Any]) -> Any:
    """Echo; "stop" shuts the server down from this handler, then says so on its own connection."""

    def handler(ws: blockws.WebSocket) -> None:
        for message in ws:
            if message != "stop":
                ws.sendall(message)
                continue
            start = time.monotonic()
            try:
                server[0].shutdown()
            except BaseException as exc:
                outcome.append(exc)
                raise
            outcome.append(time.monotonic() - start)
            ws.sendall("stopping")  # our own connection stays open until we return
            return

    return handler


def test_shutdown_from_inside_a_handler(run_server, thread_failures):
    server: list[blockws.Server] = []
    outcome: list[Any] = []
    running = run_server(stopping_handler(server, outcome), close_timeout=30, compression=None)
    server.append(running.server)
    other = Reader(running.url)
    with blockws.connect(running.url, timeout=10, compression=None) as ws:
        ws.sendall("stop")
        assert ws.recv() == "stopping"
        assert ws.recv() is None
        assert ws.close_code == 1001  # sent once the handler returned
    assert other.ended() == ([None], 1001)
    running.thread.join(5)
    assert not running.thread.is_alive()  # serve_forever() returned
    assert_refused(running.port)
    assert len(outcome) == 1 and isinstance(outcome[0], float), outcome
    wait_until(lambda: running.server.connections == [], 5)  # its handler's thread lets go of it
    running.stop()  # a second shutdown(): nothing left to do
    assert thread_failures == []


def test_two_handlers_shut_down_at_once(run_server, thread_failures):
    """Neither waits for the other (each is inside shutdown()): with peers that
    answer at once, both return long before the grace or the timeout."""
    server: list[blockws.Server] = []
    outcome: list[Any] = []
    running = run_server(stopping_handler(server, outcome), shutdown_grace=10, close_timeout=30)
    server.append(running.server)
    a = blockws.connect(running.url, timeout=20)
    b = blockws.connect(running.url, timeout=20)
    try:
        a.sendall("stop")
        b.sendall("stop")
        for ws in (a, b):
            assert ws.recv() in ("stopping", None)  # b's handler may see the shutdown first
            while ws.recv() is not None:
                pass
            assert ws.close_code == 1001
    finally:
        a.close()
        b.close()
    running.thread.join(5)
    assert not running.thread.is_alive()
    assert_refused(running.port)
    # serve_forever() returns once accepting stopped: a handler's shutdown() may still be closing.
    end = time.monotonic() + 10
    while not outcome and time.monotonic() < end:
        time.sleep(0.01)
    assert outcome and all(isinstance(seconds, float) and seconds < 5 for seconds in outcome), outcome
    assert thread_failures == []


def test_shutdown_from_two_other_threads_at_once_and_again(run_server, thread_failures):
    running = run_server(close_timeout=30)
    readers = [Reader(running.url) for _ in range(3)]
    errors: list[BaseException] = []

    def stop() -> None:
        try:
            running.server.shutdown()
        except BaseException as exc:  # pragma: no cover - the failure this test looks for
            errors.append(exc)

    stoppers = [threading.Thread(target=stop) for _ in range(2)]
    for t in stoppers:
        t.start()
    for t in stoppers:
        t.join(10)
    assert errors == []
    for reader in readers:
        assert reader.ended() == ([None], 1001)
    running.thread.join(5)
    assert not running.thread.is_alive()
    assert_refused(running.port)
    start = time.monotonic()
    running.server.shutdown()  # once more, after the others: at once
    assert time.monotonic() - start < 1
    assert thread_failures == []


def test_shutdown_before_serve_forever_makes_it_return():
    server = blockws.serve(lambda ws: None, "127.0.0.1", 0)
    server.shutdown()
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    thread.join(5)
    assert not thread.is_alive()


# -- bounded by the grace, whatever the peers do ----------------------------------------


@pytest.mark.slow
def test_shutdown_grace_bounds_peers_that_never_answer(run_server, thread_failures):
    """15 raw clients that never read (3 of them with an echo stuck in the
    server's sendall), 50 TCP connections that never sent a handshake, and 3
    blockws clients that read: with close_timeout 30 s, shutdown() takes the
    grace plus its one second for the handlers at most, the readers get a
    clean 1001 and every raw client is closed."""
    raise_fd_limit(600)
    grace = 0.5
    running = run_server(
        shutdown_grace=grace, close_timeout=30, open_timeout=30, compression=None, max_size=None, keepalive=None
    )
    port = running.port
    quiet = [raw_client(port) for _ in range(12)]
    stalled = [raw_client(port, rcvbuf=4096) for _ in range(3)]
    raw = quiet + stalled
    idle: list[socket.socket] = []
    try:
        for sock in stalled:
            # 8 MiB echoed to a peer that reads nothing: the handler blocks in sendall().
            sock.sendall(masked_binary(b"x" * (8 << 20)))
        readers = [Reader(running.url) for _ in range(3)]
        idle += [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        wait_until(lambda: len(running.server.connections) == 18 and len(running.server._handshaking) == 50)
        start = time.monotonic()
        running.server.shutdown()
        elapsed = time.monotonic() - start
        # The design's bound is grace + 1 s (the default timeout); far below close_timeout.
        assert elapsed < grace + 3, elapsed
        for reader in readers:
            assert reader.ended() == ([None], 1001)
        assert running.server.connections == []
        for sock in quiet:
            assert close_sent(read_to_the_end(sock)) == 1001
        for sock in stalled:
            read_to_the_end(sock)  # closed (or reset: its unread echo)
        for sock in idle:
            assert read_to_the_end(sock) == b""  # no 101
        assert_refused(port)
    finally:
        for sock in raw + idle:
            sock.close()
    running.thread.join(5)
    assert not running.thread.is_alive()
    assert thread_failures == []


def test_shutdown_grace_argument_and_checks(run_server):
    running = run_server(close_timeout=30, keepalive=None)
    assert running.server.shutdown_grace == DEFAULT_SHUTDOWN_GRACE
    sock = raw_client(running.port)
    try:
        wait_until(lambda: len(running.server.connections) == 1)
        start = time.monotonic()
        running.server.shutdown(grace=0.2)  # the argument wins over the server's
        assert time.monotonic() - start < 0.2 + 3
        assert close_sent(read_to_the_end(sock)) == 1001
    finally:
        sock.close()
    with pytest.raises(ValueError, match="shutdown_grace"):
        blockws.serve(lambda ws: None, "127.0.0.1", 0, shutdown_grace=-1)
    with pytest.raises(ValueError, match="grace"):
        running.server.shutdown(grace=-1)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="more than one worker needs os.fork")
def test_workers_take_shutdown_grace():
    """Checked once by the supervisor, like serve()'s other options, not by each worker."""
    with pytest.raises(ValueError, match="shutdown_grace"):
        blockws.workers.run(lambda ws: None, "127.0.0.1", 0, workers=2, shutdown_grace=-1)


# -- Ctrl-C on blockws serve -----------------------------------------------------------


@pytest.mark.slow
def test_ctrl_c_on_blockws_serve_is_bounded_whatever_the_clients_do():
    raise_fd_limit(600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "blockws", "serve", "--port", "0"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    raw: list[socket.socket] = []
    reader = None
    try:
        assert proc.stdout is not None and proc.stderr is not None
        url = proc.stdout.readline().split()[-1]
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        raw += [raw_client(port) for _ in range(15)]
        raw += [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
        # Accepted in order: once this one's handler runs, the 65 above were accepted.
        reader = Reader(url)
        for _ in range(16):
            assert proc.stderr.readline().startswith("connection from 127.0.0.1:")
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        elapsed = time.monotonic() - start
        assert proc.returncode == 0
        # The grace, its one second for the handlers, and time for the process to exit.
        assert elapsed < DEFAULT_SHUTDOWN_GRACE + 2.5, elapsed
        assert reader.ended() == ([None], 1001)
        stderr = proc.stderr.read()
        assert "Traceback" not in stderr, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if reader is not None:
            reader.ws.close()
        for sock in raw:
            sock.close()
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()
