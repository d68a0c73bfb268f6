"""The server as people use it: typed into nc, inside socketserver, over TLS, shut down."""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
import time
from typing import Any

import pytest

import blockws


def raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(request)
        data = b""
        while b"\n\n" not in data.replace(b"\r\n", b"\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def test_handshake_typed_into_nc_with_bare_lf(echo_server):
    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=5) as s:
        s.sendall(
            b"GET / HTTP/1.1\nHost: x\nUpgrade: WebSocket\nConnection: upgrade\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\nSec-WebSocket-Version: 13\n\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
        # And talk: a masked text frame built by hand comes back unmasked.
        key = b"\x00\x00\x00\x00"
        s.sendall(b"\x81\x82" + key + b"hi")
        reply = head.split(b"\r\n\r\n", 1)[1]
        while len(reply) < 4:
            reply += s.recv(4096)
        assert reply[:4] == b"\x81\x02hi"


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"426"),
        (b"POST / HTTP/1.1\r\nHost: x\r\n\r\n", b"405"),
        (
            b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
            b"426",
        ),
        (b"\x16\x03\x01garbage\r\n\r\n", b"400"),
    ],
)
def test_non_websocket_requests_get_a_status_and_the_server_stays_up(echo_server, request_, status):
    assert raw_exchange(echo_server.port, request_).startswith(b"HTTP/1.1 " + status)
    with blockws.connect(echo_server.url, timeout=5) as ws:
        ws.sendall("up")
        assert ws.recv() == "up"


def test_origins_and_subprotocols(run_server):
    server = run_server(origins=["https://ok.example", None], subprotocols=["a", "b"])
    with blockws.connect(server.url, origin="https://ok.example", subprotocols=["b", "a"]) as ws:
        assert ws.subprotocol == "b"
    with blockws.connect(server.url, subprotocols=["z"]) as ws:
        assert ws.subprotocol is None
    with pytest.raises(blockws.InvalidStatus) as info:
        blockws.connect(server.url, origin="https://evil.example")
    assert info.value.status == 403


def test_bad_subprotocol_list_fails_at_serve_not_in_a_handshake():
    with pytest.raises(ValueError, match="invalid subprotocol name 'a, b'"):
        blockws.serve(lambda ws: None, "127.0.0.1", 0, subprotocols=["a, b"])
    with pytest.raises(ValueError, match="unsupported compression 'gzip'"):
        blockws.serve(lambda ws: None, "127.0.0.1", 0, compression="gzip")


def test_long_header_line_refused_while_it_arrives(run_server):
    """A line past max_line gets its 400 at once: the server doesn't wait for the head's end."""
    server = run_server(max_line=100)
    reply = raw_exchange(server.port, b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 200)  # no line end, no blank line
    assert reply.startswith(b"HTTP/1.1 400") and b"max_line=100" in reply


def test_process_request_rejects_with_a_body(run_server):
    def process_request(request: blockws.Request) -> blockws.Response | None:
        if request.headers.get("X-Token") != "secret":
            return blockws.Response(403, body=b"no token\n")
        return None

    server = run_server(process_request=process_request)
    with pytest.raises(blockws.InvalidStatus) as info:
        blockws.connect(server.url)
    assert (info.value.status, info.value.body) == (403, b"no token\n")
    with blockws.connect(server.url, headers={"X-Token": "secret"}):
        pass


def test_shutdown_closes_connections_with_1001(run_server):
    server = run_server()
    ws = blockws.connect(server.url, timeout=5)
    # A client that reads and closes, so it answers the server's Close at
    # once (one that doesn't holds shutdown() for the close timeout).
    received: list[object] = []

    def read_then_close() -> None:
        received.append(ws.recv())
        ws.close()

    reader = threading.Thread(target=read_then_close)
    reader.start()
    start = time.monotonic()
    server.stop()
    reader.join(5)
    assert received == [None]
    assert ws.close_code == 1001
    assert time.monotonic() - start < 5
    ws.close()


def test_handler_exception_closes_with_1011(run_server):
    def handler(ws: blockws.WebSocket) -> None:
        raise RuntimeError("bug in the application")

    server = run_server(handler)
    with blockws.connect(server.url, timeout=5) as ws:
        assert ws.recv() is None
        assert ws.close_code == 1011
    with blockws.connect(server.url, timeout=5) as ws:  # still serving
        assert ws.recv() is None


class Echo(blockws.WebSocketHandler):
    def handle_websocket(self, ws: blockws.WebSocket) -> None:
        for message in ws:
            ws.sendall(message)


def test_websocket_handler_in_socketserver():
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        with blockws.connect(f"ws://127.0.0.1:{server.server_address[1]}/", timeout=5) as ws:
            ws.sendall("through socketserver")
            assert ws.recv() == "through socketserver"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_accept_on_a_socketpair():
    a, b = socket.socketpair()
    got: list[Any] = []

    def serve_one() -> None:
        with blockws.accept(b) as ws:
            got.append(ws.recv())

    t = threading.Thread(target=serve_one)
    t.start()
    with blockws.connect("ws://localhost/unix", sock=a, timeout=5) as ws:
        ws.sendall("over a socketpair")
    t.join(5)
    assert got == ["over a socketpair"]


def test_tls_both_sides(run_server, tls):
    server_ctx, client_ctx = tls
    server = run_server(ssl_context=server_ctx)
    with blockws.connect(f"wss://localhost:{server.port}/", ssl_context=client_ctx, timeout=5) as ws:
        for message in ["secure", b"\x00" * 100_000, "é" * 5000]:
            ws.sendall(message)
            assert ws.recv() == message
        assert ws.ping() < 1
    with pytest.raises(ssl.SSLCertVerificationError):
        blockws.connect(f"wss://localhost:{server.port}/")  # the system CAs don't know ours
    with blockws.connect(f"wss://localhost:{server.port}/", ssl_context=client_ctx) as ws:
        ws.sendall("still serving")
        assert ws.recv() == "still serving"


def test_unknown_options_fail_at_once():
    with pytest.raises(TypeError):
        blockws.serve(lambda ws: None, "127.0.0.1", 0, max_sise=10)
