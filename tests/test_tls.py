"""TLS under the threading model: one reader thread and senders, abort() while reading."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from websockets.sync.server import serve as ws_serve

import blockws


def _ws_echo(ws: Any) -> None:
    for message in ws:
        ws.send(message)


@pytest.mark.parametrize("timeout", [None, 10.0])
def test_one_reader_and_one_sender_thread_over_tls(tls, timeout):
    """A thread sends while another receives, against an independent
    single-threaded TLS peer: OpenSSL must never read and write one SSL
    object at once (that failed with 1006 "EOF occurred in violation of
    protocol" within a second)."""
    server_ctx, client_ctx = tls
    messages = [bytes([i % 256]) * 2_000 for i in range(3000)]
    errors: list[BaseException] = []
    with ws_serve(_ws_echo, "localhost", 0, ssl=server_ctx, compression=None, max_size=None) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"wss://localhost:{server.socket.getsockname()[1]}/"
        with blockws.connect(url, ssl_context=client_ctx, timeout=timeout, compression=None) as ws:

            def send() -> None:
                try:
                    for message in messages:
                        ws.sendall(message)
                except BaseException as exc:  # reported by the main thread
                    errors.append(exc)

            sender = threading.Thread(target=send)
            sender.start()
            received = [ws.recv() for _ in messages]
            sender.join(10)
        server.shutdown()
    assert not errors
    assert received == messages


@pytest.mark.slow
def test_abort_over_tls_never_hands_ciphertext_to_recv(run_server, tls):
    """abort() while the peer streams: the reader ends with the abort's code,
    and every message it got is one the peer sent (after SSLSocket.shutdown()
    a read returned raw TLS records, parsed as frames: 1002 or garbage)."""
    server_ctx, client_ctx = tls

    def stream(ws: blockws.WebSocket) -> None:
        i = 0
        try:
            while True:
                ws.sendall(bytes([i % 256]) * 50_000)
                i += 1
        except (blockws.ConnectionClosed, OSError):
            pass

    server = run_server(stream, ssl_context=server_ctx, compression=None)
    for _ in range(15):
        ws = blockws.connect(f"wss://localhost:{server.port}/", ssl_context=client_ctx, compression=None)
        outcome: list[Any] = []

        def read(ws: blockws.WebSocket = ws, outcome: list[Any] = outcome) -> None:
            try:
                while True:
                    message = ws.recv()
                    assert isinstance(message, bytes) and message == message[:1] * 50_000
            except blockws.ConnectionClosedError as exc:
                outcome.append(exc.code)
            except BaseException as exc:
                outcome.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        time.sleep(0.05)
        ws.abort(4000)
        reader.join(10)
        assert outcome == [4000] and ws.close_code == 4000
        ws.close()


def test_pings_while_the_keepalive_thread_reads_over_tls(run_server, tls):
    """ping() writes while the keepalive thread reads what arrives: both on
    one SSL object (ping timed out, or the connection failed, 1 run in 4)."""
    server_ctx, client_ctx = tls

    def chatter(ws: blockws.WebSocket) -> None:
        for message in ws:
            ws.sendall(message)
            ws.sendall(message)

    server = run_server(chatter, ssl_context=server_ctx)
    with blockws.connect(f"wss://localhost:{server.port}/", ssl_context=client_ctx, timeout=5) as ws:
        for i in range(200):
            ws.sendall(f"message {i}")
            assert ws.ping() < 5
            assert ws.recv() == ws.recv() == f"message {i}"


def _echo_many(url: str, client_ctx: Any) -> list[int | None]:
    """Two connections, each echoing a small and a large message: their close codes."""
    codes = []
    for _ in range(2):
        with blockws.connect(url, ssl_context=client_ctx) as ws:
            ws.sendall("hi")
            assert ws.recv() == "hi"
            ws.sendall(b"z" * 500_000)
            assert ws.recv() == b"z" * 500_000
        codes.append(ws.close_code)
    return codes


def test_wsgi_app_over_werkzeug_tls(tls, caplog):
    """Werkzeug lends its SSLSocket: the connection runs on it (TLS in
    non-blocking mode), and Werkzeug's own write after the end fails
    quietly (nothing logged as an error)."""
    from werkzeug.serving import make_server

    server_ctx, client_ctx = tls
    server = make_server("127.0.0.1", 0, blockws.wsgi_app(_ws_echo), threaded=True, ssl_context=server_ctx)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        assert _echo_many(f"wss://localhost:{server.server_port}/ws", client_ctx) == [1000, 1000]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


def test_accept_http_over_tls(tls):
    import http.server

    server_ctx, client_ctx = tls

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            with blockws.accept_http(self) as ws:
                _ws_echo(ws)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = server_ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        assert _echo_many(f"wss://localhost:{server.server_port}/ws", client_ctx) == [1000, 1000]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
