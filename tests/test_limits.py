"""Every limit has a default, an option and a clear error; slow or flooding peers don't stop a server."""

from __future__ import annotations

import socket
import threading
import time

import pytest

import blockws
from blockws import http
from blockws.handshake import accept_key


def test_slowloris_does_not_block_legitimate_clients(run_server):
    server = run_server(open_timeout=2)
    idle = []
    try:
        for _ in range(300):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never finishes
            idle.append(s)
        start = time.monotonic()
        with blockws.connect(server.url, timeout=5) as ws:
            ws.sendall("hello")
            assert ws.recv() == "hello"
        assert time.monotonic() - start < 1.0
        # The server drops them after open_timeout.
        time.sleep(2.5)
        idle[0].settimeout(2)
        assert idle[0].recv(100) == b""
    finally:
        for s in idle:
            s.close()


def test_header_limits_have_clear_errors(run_server):
    server = run_server()
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\nX: " + b"a" * (http.MAX_LINE + 10) + b"\r\n\r\n")
        s.settimeout(5)
        answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 400")
        assert b"exceeds 8192 bytes" in answer
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n")
        s.settimeout(5)
        answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 400")
        assert b"more than 128 HTTP headers" in answer


def test_max_connections_refuses_with_503_and_recovers(run_server):
    server = run_server(max_connections=2)
    a = blockws.connect(server.url)
    b = blockws.connect(server.url)
    with pytest.raises(blockws.InvalidStatus) as info:
        blockws.connect(server.url)
    assert info.value.status == 503
    assert b"max_connections=2" in info.value.body
    a.close()
    time.sleep(0.2)
    with blockws.connect(server.url, timeout=5) as c:
        c.sendall("back")
        assert c.recv() == "back"
    b.close()


def test_open_timeout_names_the_step():
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="opening handshake"):
            blockws.connect(f"ws://127.0.0.1:{listener.getsockname()[1]}/", open_timeout=0.3)
        assert time.monotonic() - start < 2
    finally:
        listener.close()


def test_close_timeout_bounds_close_against_a_silent_peer():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    def fake_server() -> None:
        conn, _ = listener.accept()
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        key = [line.split(b": ")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"sec-websocket-key")][0]
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key.decode()).encode() + b"\r\n\r\n"
        )
        time.sleep(1.5)  # never answers the Close
        conn.close()

    t = threading.Thread(target=fake_server)
    t.start()
    try:
        ws = blockws.connect(f"ws://127.0.0.1:{port}/", close_timeout=0.3)
        start = time.monotonic()
        ws.close()
        assert time.monotonic() - start < 1.0
        assert ws.state is blockws.State.CLOSED
    finally:
        t.join()
        listener.close()


def test_fragment_count_limit_over_sockets(run_server):
    errors: list[BaseException] = []

    def handler(ws: blockws.WebSocket) -> None:
        try:
            ws.recv()
        except blockws.ConnectionClosedError as exc:
            errors.append(exc)

    server = run_server(handler, max_fragments=50)
    with blockws.connect(server.url, timeout=5, compression=None) as ws:
        for _ in range(60):
            ws.send(b"", fin=False)
        assert ws.recv() is None
        assert ws.close_code == 1009
        assert "max_fragments=50" in (ws.close_reason or "")
    server.stop()
    assert errors and errors[0].code == 1009
