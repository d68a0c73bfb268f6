"""Faults over real sockets: resets, short reads and writes, silent peers — nothing lost, nobody hangs."""

from __future__ import annotations

import os
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import blockws
from blockws.handshake import accept_key

from .relay import Relay

# 250 in the normal run; BLOCKWS_RANDOM_MESSAGES=10000 for the long version (CI runs both).
RANDOM_MESSAGES = int(os.environ.get("BLOCKWS_RANDOM_MESSAGES", "250"))


@pytest.mark.slow
def test_one_byte_pieces_both_ways(echo_server):
    relay = Relay(echo_server.port, chunk=1)
    try:
        with blockws.connect(relay.url, timeout=10) as ws:
            for size in (0, 1, 125, 126, 127, 65535, 65536, 70000):
                message = os.urandom(size)
                ws.sendall(message)
                assert ws.recv() == message
            ws.sendall("é€𝄞" * 100)
            assert ws.recv() == "é€𝄞" * 100
    finally:
        relay.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], int]]:
    """A scripted server: ``raw_server(script)`` runs ``script(conn)`` for one connection."""
    listeners: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def start(script: Callable[[socket.socket], None]) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def run() -> None:
            conn, _ = listener.accept()
            with conn:
                script(conn)

        t = threading.Thread(target=run)
        t.start()
        threads.append(t)
        return int(listener.getsockname()[1])

    yield start
    for t in threads:
        t.join(10)
    for listener in listeners:
        listener.close()


def handshake(conn: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            raise ConnectionError("client left")
        head += chunk
    lines = head.split(b"\r\n")
    key = next(line.split(b":", 1)[1].strip() for line in lines if line.lower().startswith(b"sec-websocket-key"))
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_key(key.decode()).encode() + b"\r\n\r\n"
    )


def reset(conn: socket.socket) -> None:
    """Close with a RST instead of a FIN."""
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()


def test_reset_mid_frame(raw_server):
    def script(conn: socket.socket) -> None:
        conn.sendall(handshake(conn) + b"\x82\x7e\x10\x00" + b"x" * 100)  # 4096-byte frame, 100 sent
        time.sleep(0.2)
        reset(conn)

    port = raw_server(script)
    ws = blockws.connect(f"ws://127.0.0.1:{port}/", timeout=5)
    start = time.monotonic()
    with pytest.raises(blockws.ConnectionClosedError):
        ws.recv()
    assert time.monotonic() - start < 2
    assert ws.close_code == 1006
    ws.close()


def test_reset_mid_handshake(raw_server):
    def script(conn: socket.socket) -> None:
        response = handshake(conn)
        conn.sendall(response[:20])
        time.sleep(0.1)
        reset(conn)

    port = raw_server(script)
    with pytest.raises((blockws.InvalidHandshake, ConnectionError)):
        blockws.connect(f"ws://127.0.0.1:{port}/", open_timeout=5)


def test_peer_vanishes_during_close(raw_server):
    def script(conn: socket.socket) -> None:
        conn.sendall(handshake(conn))
        conn.recv(100)  # our Close
        reset(conn)

    port = raw_server(script)
    ws = blockws.connect(f"ws://127.0.0.1:{port}/", close_timeout=5)
    start = time.monotonic()
    ws.close()
    assert time.monotonic() - start < 2
    assert ws.state is blockws.State.CLOSED


def test_server_survives_garbage_and_broken_frames(run_server):
    server = run_server()
    # Unmasked client frame, then an unknown opcode: each connection fails alone.
    for frame in (b"\x81\x05hello", b"\x83\x80abcd", b"\xff" * 50):
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            s.settimeout(5)
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(4096)
            s.sendall(frame)
            rest = data.split(b"\r\n\r\n", 1)[1]
            while len(rest) < 4:
                chunk = s.recv(4096)
                if not chunk:
                    break
                rest += chunk
            assert rest[:1] == b"\x88"  # a Close frame
            code = struct.unpack("!H", rest[2:4])[0]
            assert code == 1002
    with blockws.connect(server.url, timeout=5) as ws:
        ws.sendall("still serving")
        assert ws.recv() == "still serving"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_randomized_partial_sends_lose_nothing(run_server):
    """Random sizes, random partial-send splits, random backpressure pauses: every accepted byte arrives once."""
    rng = random.Random(1234)
    received: list[Any] = []

    def handler(ws: blockws.WebSocket) -> None:
        while True:
            if rng.random() < 0.01:
                time.sleep(0.01)  # a slow reader now and then
            message = ws.recv()
            if message is None:
                return
            received.append(message)

    server = run_server(handler, max_size=None)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    ws = blockws.connect(server.url, sock=sock, timeout=0.05)
    sent: list[bytes] = []
    for _ in range(RANDOM_MESSAGES):
        size = rng.choice([0, 1, 10, 200, 5000, 70000]) + rng.randrange(100)
        message = rng.randbytes(size)
        view = memoryview(message)
        while True:
            piece = view[: rng.randrange(len(view) + 1)] if len(view) > 1 and rng.random() < 0.3 else view
            fin = len(piece) == len(view)
            try:
                n = ws.send(piece, fin=fin)
            except TimeoutError:
                continue
            view = view[n:]
            if not view and (fin and n == len(piece)):
                break
            if not view:
                # Everything given, but with fin=False: end the message.
                ws.sendall(b"")
                break
        sent.append(message)
    ws.settimeout(10)
    ws.close()
    server.stop()
    assert len(received) == len(sent)
    assert received == sent


UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def read_head(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed after {data!r}")
        data += chunk
    return data


def still_serving(url: str) -> None:
    with blockws.connect(url, timeout=5, open_timeout=5) as ws:
        ws.sendall("still serving")
        assert ws.recv() == "still serving"


def test_reset_reaching_the_server_mid_frame(run_server):
    opened = threading.Event()
    outcome: list[BaseException | object] = []

    def handler(ws: blockws.WebSocket) -> None:
        if ws.request.path != "/victim":
            return _echo_once(ws)
        opened.set()
        try:
            outcome.append(ws.recv())
        except BaseException as exc:
            outcome.append(exc)

    server = run_server(handler)
    bystander = blockws.connect(server.url, timeout=5)
    relay = Relay(server.port)
    try:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as s:
            s.sendall(UPGRADE.replace(b"GET / ", b"GET /victim "))
            read_head(s)
            assert opened.wait(5)
            # A masked 4096-byte binary frame, 100 bytes of it sent.
            s.sendall(b"\x82\xfe\x10\x00" + b"mask" + b"x" * 100)
            time.sleep(0.2)
            relay.reset()
        deadline = time.monotonic() + 5
        while not outcome and time.monotonic() < deadline:
            time.sleep(0.02)
        assert outcome and isinstance(outcome[0], blockws.ConnectionClosedError), outcome
        assert outcome[0].code == 1006
    finally:
        relay.close()
    bystander.sendall("bystander")  # its server thread is untouched
    assert bystander.recv() == "bystander"
    bystander.close()
    still_serving(server.url)


def test_reset_reaching_the_server_mid_handshake(run_server):
    server = run_server()
    relay = Relay(server.port)
    try:
        with socket.create_connection(("127.0.0.1", relay.port), timeout=5) as s:
            s.sendall(UPGRADE[:30])
            time.sleep(0.2)
            assert server.server._active == 1
            relay.reset()
            # The handshake thread sees the reset at once, not after open_timeout (it
            # goes idle, for the next connection: the server counts one connection less).
            deadline = time.monotonic() + 5
            while server.server._active and time.monotonic() < deadline:
                time.sleep(0.02)
            assert server.server._active == 0
    finally:
        relay.close()
    still_serving(server.url)


def test_plaintext_client_against_a_tls_server(run_server, tls):
    server_ctx, client_ctx = tls
    server = run_server(ssl_context=server_ctx)
    start = time.monotonic()
    with pytest.raises(blockws.InvalidStatus) as info:
        blockws.connect(f"ws://localhost:{server.port}/", open_timeout=5)
    assert time.monotonic() - start < 3, "the client waited for its open_timeout"
    assert info.value.status == 400 and b"use a wss:// URL" in info.value.body
    with blockws.connect(f"wss://localhost:{server.port}/", ssl_context=client_ctx, timeout=5) as ws:
        ws.sendall("TLS still served")
        assert ws.recv() == "TLS still served"


def test_tls_client_against_a_plaintext_server(run_server, tls):
    _, client_ctx = tls
    server = run_server()
    start = time.monotonic()
    with pytest.raises(ssl.SSLError):
        blockws.connect(f"wss://localhost:{server.port}/", ssl_context=client_ctx, open_timeout=5)
    assert time.monotonic() - start < 3, "the client waited for its open_timeout"
    still_serving(server.url)


@pytest.mark.slow
def test_a_client_that_does_not_read_blocks_only_its_own_thread(run_server):
    sent = [0]
    stuck = threading.Event()

    def flood(ws: blockws.WebSocket) -> None:
        if ws.request.path != "/flood":
            return _echo_once(ws)
        ws.settimeout(0.5)
        try:
            while True:
                ws.sendall(b"z" * 65536)
                sent[0] += 1
        except TimeoutError:
            stuck.set()  # the kernel buffers are full: the peer isn't reading
            ws.settimeout(5)
            try:
                while True:
                    ws.sendall(b"z" * 65536)
            except (blockws.ConnectionClosed, OSError):
                pass
        except (blockws.ConnectionClosed, OSError):
            pass

    server = run_server(flood, compression=None)
    slow = socket.socket()
    slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    slow.connect(("127.0.0.1", server.port))
    try:
        slow.sendall(UPGRADE.replace(b"GET / ", b"GET /flood "))
        assert stuck.wait(10), "the server never filled the buffers"
        for _ in range(3):
            start = time.monotonic()
            still_serving(server.url)
            assert time.monotonic() - start < 2
        assert sent[0] < 1000  # it stopped: nothing unbounded piles up in memory
    finally:
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        slow.close()


def _echo_once(ws: blockws.WebSocket) -> None:
    for message in ws:
        ws.sendall(message)


def test_close_after_the_peer_vanished_with_our_buffers_full_returns():
    """The Close queued behind a full write_limit, then the peer gone: the
    writes that follow fail at once, and close() returns instead of trying
    them again for ever (it used to spin at 100 % of a core)."""
    ours, theirs = socket.socketpair()
    accepted: list[blockws.WebSocket] = []
    handshake_done = threading.Event()

    def peer() -> None:
        accepted.append(blockws.accept(theirs, compression=None, keepalive=None))
        handshake_done.set()

    thread = threading.Thread(target=peer)
    thread.start()
    ws = blockws.connect("ws://localhost/", sock=ours, timeout=0.2, compression=None, keepalive=None)
    assert handshake_done.wait(5)
    thread.join(5)
    with pytest.raises(TimeoutError):
        while True:  # the peer doesn't read: fill its buffers, then ours
            ws.send(b"x" * 65536)
    ws.write_limit = ws.buffered_amount  # no room: the Close waits behind what is held
    accepted[0].abort()  # the peer is gone: every write now fails
    closing = threading.Thread(target=ws.close)
    closing.start()
    closing.join(5)
    assert not closing.is_alive()
    assert ws.close_code == 1006
