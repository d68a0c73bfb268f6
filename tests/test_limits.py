"""Every limit has a default, an option and a clear error; slow or flooding peers don't stop a server."""

from __future__ import annotations

import socket
import threading
import time

import pytest

import blockws
from blockws import Response, http
from blockws.handshake import accept_key

from .helpers import RecvErrors, at_scale, raise_fd_limit


@pytest.mark.slow
@pytest.mark.large
def test_slowloris_does_not_block_legitimate_clients(run_server):
    SLOWLORIS_SOCKETS = at_scale(1000)
    # Both ends of every socket live in this process, plus some slack.
    raise_fd_limit(2 * SLOWLORIS_SOCKETS + 512)
    # open_timeout outlasts the time it takes to open them all (seconds, on a
    # slow sandbox), so all of them are pending when the legitimate client comes.
    server = run_server(open_timeout=60)
    idle = []
    try:
        for _ in range(SLOWLORIS_SOCKETS):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never finishes
            idle.append(s)
        # Wait until the server has taken them all from its backlog: a thread waits on each.
        deadline = time.monotonic() + 20
        while threading.active_count() <= SLOWLORIS_SOCKETS and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() > SLOWLORIS_SOCKETS
        start = time.monotonic()
        with blockws.connect(server.url, timeout=5) as ws:
            ws.sendall("hello")
            assert ws.recv() == "hello"
        took = time.monotonic() - start
        print(f"\nslowloris: legitimate client served in {took * 1000:.1f} ms beside {SLOWLORIS_SOCKETS} idle sockets")
        assert took < 1.0
    finally:
        for s in idle:
            s.close()


@pytest.mark.slow
def test_unfinished_handshakes_are_dropped_after_open_timeout(run_server):
    server = run_server(open_timeout=0.5)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and never finishes
        start = time.monotonic()
        while s.recv(4096):  # EOF, not a timeout
            pass
        assert time.monotonic() - start < 5


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


def test_header_limit_options_over_sockets(run_server):
    strict = run_server(max_line=100, max_headers=5)
    for request, named in [
        (b"GET / HTTP/1.1\r\nX: " + b"a" * 200 + b"\r\n\r\n", b"(max_line=100)"),
        (b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 8 + b"\r\n", b"more than 5 HTTP headers (max_headers=5)"),
    ]:
        with socket.create_connection(("127.0.0.1", strict.port), timeout=5) as s:
            s.sendall(request)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 400") and named in answer
    # Raised above the default: a 10 kB header line gets through.
    roomy = run_server(max_line=16384)
    with blockws.connect(roomy.url, headers={"X-Big": "a" * 10_000}, timeout=5) as ws:
        ws.sendall("big header")
        assert ws.recv() == "big header"
    with pytest.raises(blockws.InvalidStatus) as info:
        blockws.connect(strict.url, headers={"X-Big": "a" * 10_000})
    assert info.value.status == 400
    # The client's options bound the server's answer.
    with pytest.raises(blockws.InvalidHandshake, match=r"\(max_headers=2\)"):
        blockws.connect(roomy.url, max_headers=2, open_timeout=5)
    chatty = run_server(process_request=lambda r: Response(403, headers={"X-Long": "b" * 200}))
    with pytest.raises(blockws.InvalidHandshake, match=r"\(max_line=100\)"):
        blockws.connect(chatty.url, max_line=100, open_timeout=5)


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


def test_max_connections_flood_does_not_pile_up_threads(run_server):
    cap = 5
    server = run_server(max_connections=cap)
    held = [blockws.connect(server.url, timeout=5) for _ in range(cap)]
    flood: list[socket.socket] = []
    try:
        baseline = threading.active_count()
        peak = baseline
        for i in range(200):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            if i % 2:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            # The others send nothing: a refusal must not wait for them.
            flood.append(s)
            peak = max(peak, threading.active_count())
        assert peak <= baseline + 2, f"{peak - baseline} threads appeared for refused connections"
        for s in flood[:10] + flood[-10:]:
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = s.recv(4096)
                assert chunk, f"closed before the 503: {answer!r}"
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 503 ")
            assert b"max_connections=5" in answer + s.recv(4096)
        # The held connections are still served.
        held[0].sendall("still here")
        assert held[0].recv() == "still here"
    finally:
        for s in flood:
            s.close()
        for ws in held:
            ws.close()
    for _ in range(50):  # the server counts a connection out just after its close
        try:
            ws = blockws.connect(server.url, timeout=5, open_timeout=10)
            break
        except blockws.InvalidStatus as exc:
            assert exc.status == 503
            time.sleep(0.1)
    with ws:
        ws.sendall("after the flood")
        assert ws.recv() == "after the flood"


def test_open_timeout_names_the_step():
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="opening handshake"):
            blockws.connect(f"ws://127.0.0.1:{listener.getsockname()[1]}/", open_timeout=0.3)
        assert time.monotonic() - start < 2
    finally:
        listener.close()


@pytest.mark.slow
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
    handler = RecvErrors()
    errors = handler.errors

    server = run_server(handler, max_fragments=50)
    with blockws.connect(server.url, timeout=5, compression=None) as ws:
        for _ in range(60):
            ws.send(b"", fin=False)
        assert ws.recv() is None
        assert ws.close_code == 1009
        assert "max_fragments=50" in (ws.close_reason or "")
    server.stop()
    assert errors and errors[0].code == 1009
