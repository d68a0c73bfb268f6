"""Defects found by attacking the public API (issue 14), each kept as a regression test."""

from __future__ import annotations

import array
import os
import select
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

import blockws
from blockws import KeepAlive

from .helpers import LateReader

# A peer in its own process that completes the handshake, then sends Pings
# as fast as it can, never reads and never closes.
FLOODER = textwrap.dedent(
    """
    import socket, sys
    from blockws.frames import Opcode, encode_header
    from blockws.handshake import accept_key

    listener = socket.create_server(("127.0.0.1", 0))
    print(listener.getsockname()[1], flush=True)
    conn, _ = listener.accept()
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    head = b""
    while b"\\r\\n\\r\\n" not in head:
        head += conn.recv(4096)
    lines = head.split(b"\\r\\n")
    key = [line.split(b":", 1)[1].strip() for line in lines if line.lower().startswith(b"sec-websocket-key:")][0]
    conn.sendall(
        b"HTTP/1.1 101 Switching Protocols\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n"
        + b"Sec-WebSocket-Accept: " + accept_key(key.decode()).encode() + b"\\r\\n\\r\\n"
    )
    ping = encode_header(Opcode.PING, 125) + b"p" * 125
    try:
        while True:
            conn.sendall(ping * 64)
    except OSError:
        pass
    """
)


@pytest.fixture
def flooder() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", FLOODER],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert proc.stdout is not None
        yield f"ws://127.0.0.1:{proc.stdout.readline().strip()}/"
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]


@pytest.mark.slow
def test_deadlines_hold_while_a_peer_floods_pings(flooder):
    """recv(), ping() and close() keep their deadline although the socket
    never goes quiet (recv() was still blocked after 60 s, close() after 4 s);
    and the pongs the peer never reads stay bounded (48 MiB were queued)."""
    ws = blockws.connect(flooder, timeout=0.2, close_timeout=0.5, compression=None)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        ws.recv()
    assert time.monotonic() - start < 1.5
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        ws.ping()
    assert time.monotonic() - start < 1.5
    time.sleep(1)  # the keepalive thread reads the flood meanwhile
    # At most write_limit plus one control frame (the pongs beyond wait in the
    # protocol, where a newer pong replaces an unsent one): the bound write_limit documents.
    assert ws.buffered_amount <= ws.write_limit + 131
    start = time.monotonic()
    ws.close()
    assert time.monotonic() - start < 2.5
    assert ws.state is blockws.State.CLOSED


def test_a_blocking_send_after_a_partial_one_streams_through_the_bounded_buffer(run_server):
    """After a non-blocking send() accepted part of a message, a blocking
    sendall() of the rest holds no more than write_limit here (it used to
    copy the whole rest, 8 MB, into the buffer)."""
    handler = LateReader()
    server = run_server(handler, keepalive=None, max_size=None, compression=None)
    data = os.urandom(8_000_000)
    ws = blockws.connect(server.url, keepalive=None, compression=None)
    ws.settimeout(0)
    accepted = ws.send(data, fin=False)
    assert 0 < accepted < len(data)
    peak = 0
    sending = True

    def watch() -> None:
        nonlocal peak
        while sending:
            peak = max(peak, ws.buffered_amount)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    watcher.start()
    handler.reading.set()
    ws.settimeout(None)
    try:
        ws.sendall(data[accepted:])
    finally:
        sending = False
        watcher.join()
    ws.close()
    assert peak <= ws.write_limit + 14
    assert handler.received == [data]


def test_memoryviews_are_sent_as_their_bytes(echo_server):
    """A view of 4-byte items is 12 bytes, not 3 (the header said 3 and the
    peer failed on "invalid opcode"); a strided view is its bytes too."""
    words = array.array("I", [1, 2, 3])
    with blockws.connect(echo_server.url, timeout=5) as ws:
        assert ws.send(memoryview(words)) == 12
        assert ws.recv() == words.tobytes()
        ws.sendall(memoryview(words))
        assert ws.recv() == words.tobytes()
        assert ws.send(memoryview(b"abcdef")[::2]) == 3
        assert ws.recv() == b"ace"
        ws.settimeout(0)  # the partial-send path counts bytes too
        assert ws.send(memoryview(words)) == 12
        ws.settimeout(5)
        assert ws.recv() == words.tobytes()


def test_sendall_timeout_waiting_for_another_threads_message_says_nothing_was_accepted(echo_server):
    """The documented retry loop reads exc.accepted: it must be there (0)
    when the time ran out before the message could start."""
    with blockws.connect(echo_server.url, timeout=0.3) as ws:
        owner = threading.Thread(target=lambda: ws.send("begun, not finished", fin=False))
        owner.start()
        owner.join()
        with pytest.raises(TimeoutError) as info:
            ws.sendall("mine")
        assert info.value.accepted == 0  # type: ignore[attr-defined]


def test_pending_is_zero_while_only_part_of_a_message_is_here(run_server):
    """The README's select loop calls recv() when pending() says so: with
    only the first fragment here that would spin (recv() raising
    BlockingIOError round after round)."""
    go = threading.Event()

    def handler(ws: blockws.WebSocket) -> None:
        ws.send("first fragment, ", fin=False)
        go.wait(5)
        ws.sendall("the rest")
        ws.recv()

    server = run_server(handler)
    with blockws.connect(server.url) as ws:
        ws.setblocking(False)
        calls = 0
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # the README's loop
            if not ws.pending():
                select.select([ws], [], [], max(deadline - time.monotonic(), 0))
            try:
                calls += 1
                ws.recv()
            except BlockingIOError:
                pass
        assert calls < 10, f"{calls} recv() calls in 0.5 s: the loop spins"
        go.set()
        select.select([ws], [], [], 5)
        ws.settimeout(5)
        assert ws.recv() == "first fragment, the rest"
        assert ws.pending() == 0


def test_abort_and_a_lost_connection_release_what_they_hold(run_server, echo_server):
    """A connect gate's slot and the keepalive's hold on the connection go
    when it ends without close(): aborted, or lost (the next connect()
    used to time out; a KeepAlive kept 50 aborted connections and their
    descriptors)."""
    gate = blockws.ConnectGate(max_per_host=1)
    ws = blockws.connect(echo_server.url, connect_gate=gate, open_timeout=1)
    ws.abort()
    ws = blockws.connect(echo_server.url, connect_gate=gate, open_timeout=1)
    assert gate.open_connections("127.0.0.1") == 1

    def drop(ws: blockws.WebSocket) -> None:
        ws.recv()
        ws.abort()  # TCP goes away without a Close

    server = run_server(drop)
    ws.abort()
    lost = blockws.connect(server.url, connect_gate=gate, open_timeout=1, timeout=5)
    lost.sendall("go")
    with pytest.raises(blockws.ConnectionClosedError):
        lost.recv()
    assert gate.open_connections("127.0.0.1") == 0  # no close() called

    keepalive = KeepAlive()
    try:
        fds = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
        for _ in range(50):
            blockws.connect(echo_server.url, keepalive=keepalive).abort()
        deadline = time.monotonic() + 3  # the keepalive thread takes the removals in its own time
        while "connections=0" not in repr(keepalive) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "connections=0" in repr(keepalive)
        if fds is not None:
            assert len(os.listdir("/proc/self/fd")) < fds + 10
    finally:
        keepalive.close()


def test_a_lost_connection_is_closed_at_once(run_server):
    """The peer's TCP goes away without a Close: recv() reports 1006 and the
    socket is closed then, not at the application's close() (or never)."""

    def drop(ws: blockws.WebSocket) -> None:
        ws.recv()
        ws.abort()

    server = run_server(drop)
    ws = blockws.connect(server.url, timeout=5, keepalive=None)
    ws.sendall("go")
    with pytest.raises(blockws.ConnectionClosedError):
        ws.recv()
    assert ws.fileno() == -1 and ws.close_code == 1006
    assert ws.state is blockws.State.CLOSED


def test_bytes_held_after_a_partial_send_go_out_without_another_call(run_server):
    """Like bytes in a TCP send buffer: what send() accepted into user space
    reaches the peer once it reads, though the application makes no further
    call (it used to wait for the next one, or a keepalive ping)."""
    handler = LateReader()
    server = run_server(handler, keepalive=None, max_size=None, compression=None)
    data = os.urandom(8_000_000)  # more than the kernel's buffers on both sides
    ws = blockws.connect(server.url, max_size=None, compression=None)
    ws.settimeout(0)
    accepted = ws.send(data)
    assert 0 < accepted < len(data) and ws.buffered_amount > 0
    handler.reading.set()
    deadline = time.monotonic() + 5
    while ws.buffered_amount and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ws.buffered_amount == 0
    ws.settimeout(5)
    ws.sendall(data[accepted:])
    ws.close()
    assert handler.received == [data]


@pytest.mark.slow
def test_pending_while_another_thread_receives(run_server):
    """pending() (and the keepalive's count of what is held, the same
    code, asked without the recv lock) while another thread takes
    messages: it used to fail now and then with "deque mutated during
    iteration", which killed the keepalive thread."""
    count = 3_000

    def flood(ws: blockws.WebSocket) -> None:
        for _ in range(count):
            ws.send(b"m")
        ws.recv()

    server = run_server(flood, compression=None)
    errors: list[BaseException] = []
    done = threading.Event()
    with blockws.connect(server.url, compression=None, timeout=10) as ws:

        def ask() -> None:
            # For 0.3 s at most: asked without a pause, the count starts
            # again at each change and holds the receiving thread back.
            stop = time.monotonic() + 0.3
            try:
                while not done.is_set() and time.monotonic() < stop:
                    ws.pending()
            except BaseException as exc:  # reported below
                errors.append(exc)

        asker = threading.Thread(target=ask)
        asker.start()
        try:
            for _ in range(count):
                assert ws.recv() == b"m"
        finally:
            done.set()
            asker.join(10)
        ws.send("done")
    assert errors == []
