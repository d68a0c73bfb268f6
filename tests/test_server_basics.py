"""The server as people use it: typed into nc, inside socketserver, over TLS, shut down."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
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


def test_a_malformed_header_line_is_logged_without_its_value(echo_server, caplog):
    caplog.set_level(logging.INFO, logger="blockws.server")
    secret = "t0ken-s3cret"
    with socket.create_connection(("127.0.0.1", echo_server.port), timeout=5) as sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: x\r\nAuthorization Bearer {secret}\r\n\r\n".encode())
        reply = read_until_eof(sock)  # the server closes once it has logged the failure
    assert reply.startswith(b"HTTP/1.1 400") and secret.encode() not in reply
    assert "handshake with" in caplog.text and "'Authorization'" in caplog.text  # which line, not what it said
    assert secret not in caplog.text


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


def echo(ws: blockws.WebSocket) -> None:
    for message in ws:
        ws.sendall(message)


class Echo(blockws.WebSocketHandler):
    def handle_websocket(self, ws: blockws.WebSocket) -> None:
        for message in ws:
            ws.sendall(message)


@pytest.mark.slow
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


def test_accept_a_process_request_that_raises(caplog):
    """A failure of the hook is a 500 (InvalidHandshake, chained); KeyboardInterrupt and SystemExit go through."""
    request = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    failure = LookupError("no such user")
    for raised in (failure, KeyboardInterrupt(), SystemExit(3)):

        def process_request(request: blockws.Request, raised: BaseException = raised) -> None:
            raise raised

        a, b = socket.socketpair()
        with a, b:
            a.sendall(request)
            expected = blockws.InvalidHandshake if raised is failure else type(raised)
            with pytest.raises(expected) as info:
                blockws.accept(b, process_request=process_request, open_timeout=5)
            if raised is failure:
                assert info.value.__cause__ is failure and "HTTP 500" in str(info.value)
                a.settimeout(5)
                assert a.recv(4096).startswith(b"HTTP/1.1 500 ")
            else:
                assert info.value is raised
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == ["process_request failed"]


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
    with pytest.raises(TypeError, match="keepalive must be"):
        blockws.serve(lambda ws: None, "127.0.0.1", 0, keepalive=20)  # seconds: KeepAlive(interval=20)


# -- where the server listens: IPv6, dual-stack, the caller's socket, a Unix socket


def _can_bind_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(
    not _can_bind_ipv6_loopback(), reason="no IPv6 here (socket.has_ipv6 is false or ::1 can't be bound)"
)
needs_dualstack = pytest.mark.skipif(
    not (_can_bind_ipv6_loopback() and socket.has_dualstack_ipv6()), reason="no dual-stack IPv6 sockets here"
)
needs_af_unix = pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets on this platform")


@contextlib.contextmanager
def serving(server: blockws.Server) -> Iterator[blockws.Server]:
    """Run ``server.serve_forever()`` in a thread for the block, then shut it down."""
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join(10)


def echo_once(url: str, **options: Any) -> Any:
    """Connect, have one message echoed, and return the client's view of the server's address."""
    with blockws.connect(url, open_timeout=5, timeout=5, **options) as ws:
        ws.sendall("ping?")
        assert ws.recv() == "ping?"
        return ws.remote_address


@needs_ipv6
def test_ipv6_loopback():
    with serving(blockws.serve(echo, "::1", 0)) as server:
        assert server.socket.family == socket.AF_INET6
        assert server.address[:2] == ("::1", server.port)
        assert echo_once(f"ws://[::1]:{server.port}/")[0] == "::1"
        with pytest.raises(ConnectionRefusedError):  # ::1 alone, not 127.0.0.1
            blockws.connect(f"ws://127.0.0.1:{server.port}/", open_timeout=5)


@needs_dualstack
def test_any_ipv6_address_is_dual_stack():
    with serving(blockws.serve(echo, "::", 0)) as server:
        assert echo_once(f"ws://[::1]:{server.port}/")[0] == "::1"
        assert echo_once(f"ws://127.0.0.1:{server.port}/")[0] == "127.0.0.1"


@needs_ipv6
def test_family_and_dualstack_options():
    # Dual-stack off: IPv6 clients only.
    with serving(blockws.serve(echo, "::", 0, dualstack_ipv6=False)) as server:
        echo_once(f"ws://[::1]:{server.port}/")
        with pytest.raises(ConnectionRefusedError):
            blockws.connect(f"ws://127.0.0.1:{server.port}/", open_timeout=5)
    # No host and AF_INET6: every IPv6 interface.
    with serving(blockws.serve(echo, family=socket.AF_INET6)) as server:
        assert server.address[0] == "::"
        echo_once(f"ws://[::1]:{server.port}/")
    with pytest.raises(ValueError, match="dualstack_ipv6 requires AF_INET6"):
        blockws.serve(echo, "127.0.0.1", 0, family=socket.AF_INET, dualstack_ipv6=True)
    with pytest.raises(ValueError, match="AF_INET or AF_INET6"):
        blockws.serve(echo, "127.0.0.1", 0, family=socket.AF_UNIX)


def test_no_host_is_still_every_ipv4_interface():
    with serving(blockws.serve(echo)) as server:
        assert server.socket.family == socket.AF_INET
        assert server.address == ("0.0.0.0", server.port)
        echo_once(f"ws://127.0.0.1:{server.port}/")
    # A name keeps its IPv4 address, whatever order the resolver likes.
    with serving(blockws.serve(echo, "localhost", 0)) as server:
        assert server.address[0] == "127.0.0.1"


def test_serve_on_a_socket_made_by_the_caller():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))  # bound, not yet listening: serve() does that
    with serving(blockws.serve(echo, sock=listener)) as server:
        assert server.socket is listener
        assert server.port == listener.getsockname()[1]
        echo_once(f"ws://127.0.0.1:{server.port}/")
    assert listener.fileno() == -1  # the server owned it


def test_sock_excludes_the_address_options():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        for options in ({"host": "127.0.0.1"}, {"port": 8765}, {"family": socket.AF_INET}, {"path": "x.sock"}):
            with pytest.raises(ValueError, match=f"sock given, so not {next(iter(options))}"):
                blockws.serve(echo, sock=listener, **options)
        with pytest.raises(ValueError, match="path given, so not host"):
            blockws.serve(echo, "localhost", path="x.sock")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            with pytest.raises(ValueError, match="SOCK_STREAM"):
                blockws.serve(echo, sock=udp)
        assert listener.fileno() != -1  # refused, not taken


def unix_client(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    return sock


@needs_af_unix
def test_unix_socket(tmp_path):
    path = str(tmp_path / "ws.sock")
    with serving(blockws.serve(echo, path=path, max_connections=1)) as server:
        assert server.address == path
        with pytest.raises(ValueError, match="a Unix socket server has no port"):
            server.port  # noqa: B018
        with blockws.connect("ws://localhost/chat", sock=unix_client(path), open_timeout=5, timeout=5) as ws:
            assert ws.remote_address == path
            ws.sendall(b"over a Unix socket")
            assert ws.recv() == b"over a Unix socket"
            # The accept loop's 503 works there too.
            with pytest.raises(blockws.InvalidStatus) as info:
                blockws.connect("ws://localhost/", sock=unix_client(path), open_timeout=5)
            assert info.value.status == 503
    assert not os.path.exists(path)


@needs_af_unix
def test_unix_socket_path_already_taken(tmp_path):
    # A file that isn't a socket is never removed.
    path = tmp_path / "data.txt"
    path.write_text("precious")
    with pytest.raises(FileExistsError, match="not a socket"):
        blockws.serve(echo, path=path)
    assert path.read_text() == "precious"
    # A stale socket, left by a server that died, is replaced.
    stale = str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(stale)
    with serving(blockws.serve(echo, path=stale)):
        echo_once("ws://localhost/", sock=unix_client(stale))
        # A live server's socket is not taken from it.
        with pytest.raises(OSError, match="a server is listening") as info:
            blockws.serve(echo, path=stale)
        assert info.value.errno == errno.EADDRINUSE
        echo_once("ws://localhost/", sock=unix_client(stale))


@needs_af_unix
def test_unix_socket_file_replaced_meanwhile_is_left_alone(tmp_path):
    path = str(tmp_path / "ws.sock")
    server = blockws.serve(echo, path=path)
    os.unlink(path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(path)  # someone else's now
        server.server_close()
        assert os.path.exists(path)


def test_unix_socket_on_a_platform_without_them(monkeypatch, tmp_path):
    monkeypatch.setattr(blockws.server, "_HAS_AF_UNIX", False)
    with pytest.raises(OSError, match="no Unix sockets") as info:
        blockws.serve(echo, path=str(tmp_path / "ws.sock"))
    assert info.value.errno == errno.EAFNOSUPPORT


# -- max_connections on a TLS server


def read_until_eof(sock: socket.socket) -> bytes:
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def test_503_on_a_tls_server_goes_over_tls(run_server, tls):
    server_ctx, client_ctx = tls
    server = run_server(max_connections=1, ssl_context=server_ctx)
    url = f"wss://localhost:{server.port}/"
    with blockws.connect(url, ssl_context=client_ctx, timeout=5) as held:
        # A client that says nothing yet must not stall the accept loop.
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
            with pytest.raises(blockws.InvalidStatus) as info:
                blockws.connect(url, ssl_context=client_ctx, open_timeout=5)
            assert info.value.status == 503
            assert b"max_connections=1" in info.value.body
            # Plain HTTP on the TLS port: never a plaintext answer.
            raw.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert b"HTTP/1.1" not in read_until_eof(raw)
        held.sendall("still served")
        assert held.recv() == "still served"
    for _ in range(50):  # the server counts the held connection out just after its close
        try:
            assert echo_once(url, ssl_context=client_ctx)
            break
        except blockws.InvalidStatus as exc:
            assert exc.status == 503
            time.sleep(0.1)


def test_handler_threads_are_reused_and_named_after_the_peer(run_server):
    """A connection's thread serves a later one (issue 27: starting a thread per connection was
    over half of a free-threaded server's CPU); a threading.local set by a handler stays on it."""
    seen: list[tuple[threading.Thread, str, Any]] = []
    local = threading.local()
    done = threading.Event()

    def handler(ws: blockws.WebSocket) -> None:
        me = threading.current_thread()
        seen.append((me, me.name, getattr(local, "value", None)))
        local.value = ws.recv()
        ws.send("ok")
        done.set()

    server = run_server(handler)
    for text in ("first", "second"):
        done.clear()
        with blockws.connect(server.url) as ws:
            ws.send(text)
            assert ws.recv() == "ok"
            port = ws.local_address[1]
        assert done.wait(5)
        # The handler returned, then the server closed the connection: the thread goes idle
        # after that, so the next connection may still find it busy for a moment.
        time.sleep(0.2)
        assert seen[-1][1] == f"blockws ('127.0.0.1', {port})"
    assert seen[0][0] is seen[1][0]  # the same thread
    assert [value for _, _, value in seen] == [None, "first"]  # documented: threading.local is per thread


def test_idle_handler_threads_end():
    from blockws.handlers import Pool

    ran = threading.Event()
    pool = Pool(idle_seconds=0.1)
    thread = pool.run(ran.set, "job")
    assert ran.wait(5)
    thread.join(5)  # ends on its own after 0.1 s idle
    assert not thread.is_alive()
    pool = Pool(idle_seconds=60)
    ran.clear()
    thread = pool.run(ran.set, "job")
    assert ran.wait(5)
    time.sleep(0.1)  # idle now
    pool.close()  # ends the idle threads at once
    thread.join(5)
    assert not thread.is_alive()
