"""blockws.wsgi_app and blockws.accept_http inside real web servers, with real peers.

Servers (tests/webservers.py): Werkzeug threaded with DispatcherMiddleware,
Flask (a route declared twice) on Werkzeug, gunicorn gthread and sync
(subprocesses), http.server with accept_http; waitress for the error.
Peers: the websockets package's sync client and blockws's client.
BLOCKWS_EMBED_MESSAGES sets how many messages each exchange sends (100).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Union
from urllib.parse import parse_qs, urlsplit

import pytest
import websockets.exceptions
import websockets.sync.client

import blockws
from blockws.frames import Opcode, apply_mask, encode_close, encode_header, parse_close, parse_header

from .helpers import raise_fd_limit
from .relay import Relay
from .webservers import SEEN, Gunicorn, WebServer, get, start_in_process, wait_seen

N_MESSAGES = int(os.environ.get("BLOCKWS_EMBED_MESSAGES", "100"))

SERVERS = ["werkzeug", "flask", "gunicorn-gthread", "gunicorn-sync", "http.server"]
PEERS = ["blockws", "websockets"]

Message = Union[str, bytes]


# -- servers -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gunicorn_gthread(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    # 120 threads: the concurrency test holds 100 WebSockets at once.
    server = Gunicorn("gthread", tmp_path_factory.mktemp("gthread"), threads=120)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gunicorn_sync(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gunicorn]:
    server = Gunicorn("sync", tmp_path_factory.mktemp("sync"))
    yield server
    server.stop()


@pytest.fixture
def start() -> Iterator[Callable[..., WebServer]]:
    """``start(name, request=None, **options)``: a server of the site (the gunicorn ones: the
    module's, through ``request``; they take no options)."""
    servers: list[WebServer] = []

    def starter(name: str, request: pytest.FixtureRequest | None = None, **options: Any) -> WebServer:
        if name.startswith("gunicorn"):
            assert request is not None and not options
            server: WebServer = request.getfixturevalue(name.replace("-", "_"))
            return server
        server = start_in_process(name, **options)
        servers.append(server)
        return server

    yield starter
    for server in servers:
        server.stop()


@pytest.fixture(params=SERVERS)
def server(request: pytest.FixtureRequest, start: Callable[..., WebServer]) -> WebServer:
    return start(request.param, request)


def key() -> str:
    return uuid.uuid4().hex


def gunicorn_log(server: WebServer) -> str:
    assert server.log is not None
    return server.log.read_text()


# -- peers -------------------------------------------------------------------------------


class Peer:
    """A client of one of the libraries, behind one interface."""

    def __init__(self, library: str, url: str, compression: str | None = "deflate", **options: Any) -> None:
        self.library = library
        self.ws: Any
        self.stack = contextlib.ExitStack()
        if library == "blockws":
            self.ws = self.stack.enter_context(blockws.connect(url, compression=compression, timeout=10, **options))
        else:
            connection = websockets.sync.client.connect(
                url, compression=compression, ping_interval=None, open_timeout=10, close_timeout=5, **options
            )
            self.ws = self.stack.enter_context(connection)

    def deflate(self) -> bool:
        if self.library == "blockws":
            return any("permessage-deflate" in extension for extension in self.ws.extensions)
        return "permessage-deflate" in (self.ws.response.headers.get("Sec-WebSocket-Extensions") or "")

    def send(self, message: Message) -> None:
        if self.library == "blockws":
            self.ws.sendall(message)
        else:
            self.ws.send(message)

    def recv(self) -> Message:
        message = self.ws.recv(timeout=10) if self.library == "websockets" else self.ws.recv()
        assert message is not None
        return message  # type: ignore[no-any-return]

    def recv_close_code(self) -> int:
        """Wait for the server's Close: its code."""
        if self.library == "blockws":
            try:
                assert self.ws.recv() is None  # a clean close
            except blockws.ConnectionClosedError as exc:
                assert exc.code == self.ws.close_code
            return int(self.ws.close_code)
        with pytest.raises(websockets.exceptions.ConnectionClosed) as info:
            self.ws.recv(timeout=10)
        assert info.value.rcvd is not None
        return info.value.rcvd.code

    def close(self) -> None:
        self.stack.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def random_messages(n: int, seed: int) -> list[Message]:
    """``n`` messages, text and binary mixed, 0 to 200 KB, mostly small (about 10 KB on average).

    The first two are the extremes: empty, and 200 KB.
    """
    rng = random.Random(seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,\n\u00e9\u20ac\u4e2d\U0001f600"
    text = "".join(rng.choices(alphabet, k=250_000))
    messages: list[Message] = []
    for i in range(n):
        roll = rng.random()
        if i < 2:
            size = 200_000 * i
        elif roll < 0.7:
            size = rng.randrange(0, 1000)
        elif roll < 0.93:
            size = rng.randrange(1000, 20_000)
        else:
            size = rng.randrange(20_000, 200_001)
        if rng.random() < 0.5:
            messages.append(rng.randbytes(size))
        else:
            start = rng.randrange(0, len(text) - size + 1)
            messages.append(text[start : start + size])
    return messages


def echo_all(peer: Peer, messages: list[Message], window: int = 256 * 1024) -> None:
    """Send every message, at most ``window`` bytes in flight; each echo byte-exact and in order."""
    in_flight: deque[tuple[int, Message]] = deque()
    size = 0

    def check_one() -> None:
        nonlocal size
        i, expected = in_flight.popleft()
        size -= len(expected)
        got = peer.recv()
        assert type(got) is type(expected), f"message {i}: {type(got).__name__} for {type(expected).__name__}"
        assert got == expected, f"message {i} ({len(expected)} long) came back different ({len(got)} long)"

    for i, message in enumerate(messages):
        while in_flight and size + len(message) > window:
            check_one()
        peer.send(message)
        in_flight.append((i, message))
        size += len(message)
    while in_flight:
        check_one()


# -- the exchange matrix -----------------------------------------------------------------


@pytest.mark.parametrize("deflate", [True, False], ids=["deflate", "no-deflate"])
@pytest.mark.parametrize("peer", PEERS)
def test_echo_random_messages(server: WebServer, peer: str, deflate: bool) -> None:
    messages = random_messages(N_MESSAGES, seed=zlib.crc32(f"{server.name} {peer} {deflate}".encode()))
    with Peer(peer, server.url(), compression="deflate" if deflate else None) as client:
        assert client.deflate() is deflate
        echo_all(client, messages)
    assert get(server.port, "/")[0] == 200
    if not server.in_process:
        # The write after the WebSocket (on a shut-down socket) fails
        # quietly: the only tracebacks are those of the handler that fails on purpose.
        log = gunicorn_log(server)
        assert "Error handling request" not in log
        assert log.count("Traceback") == log.count("RuntimeError: the handler failed on purpose"), log


# -- HTTP on the same port ---------------------------------------------------------------


def test_plain_http_before_and_after_and_426(server: WebServer) -> None:
    assert get(server.port, "/")[::2] == (200, b"ok")
    with Peer("blockws", server.url()) as client:
        client.send("hello")
        assert client.recv() == "hello"
    status, headers, body = get(server.port, "/")
    assert (status, body) == (200, b"ok")
    status, headers, body = get(server.port, "/ws")
    assert status == 426
    assert headers["upgrade"].lower() == "websocket"


def test_http_connection_still_usable_after_426(server: WebServer) -> None:
    if not server.keeps_alive:
        # Werkzeug and gunicorn's sync worker close every HTTP connection
        # after one request: nothing to keep.
        pytest.skip(f"{server.name} closes the connection after each request")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", "/ws")
        response = conn.getresponse()
        response.read()
        assert response.status == 426
        assert (response.getheader("Upgrade") or "").lower() == "websocket"
        assert not response.will_close
        sock = conn.sock
        conn.request("GET", "/")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"ok")
        assert conn.sock is sock  # the same connection
    finally:
        conn.close()


# -- closing -----------------------------------------------------------------------------


@pytest.mark.parametrize("peer", PEERS)
def test_client_closes_handler_sees_1000(server: WebServer, peer: str) -> None:
    k = key()
    with Peer(peer, server.url(f"/ws/record?key={k}")) as client:
        client.send("x")
        assert client.recv() == "x"
    assert wait_seen(server, k) == "1000"


@pytest.mark.parametrize("peer", PEERS)
def test_handler_returns_client_gets_1000(server: WebServer, peer: str) -> None:
    with Peer(peer, server.url("/ws/bye")) as client:
        assert client.recv() == "bye"
        assert client.recv_close_code() == 1000


@pytest.mark.parametrize("peer", PEERS)
def test_handler_raises_client_gets_1011(server: WebServer, peer: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="blockws.server")
    with Peer(peer, server.url("/ws/fail")) as client:
        assert client.recv() == "failing"
        assert client.recv_close_code() == 1011
    # The server keeps serving.
    with Peer(peer, server.url()) as client:
        client.send("next")
        assert client.recv() == "next"
    if server.in_process:
        failures = [r for r in caplog.records if r.name == "blockws.server" and r.exc_info]
        assert failures and failures[0].getMessage() == "connection handler failed"
        assert "failed on purpose" in str(failures[0].exc_info[1])  # type: ignore[index]
    else:
        deadline = time.monotonic() + 5
        while "failed on purpose" not in gunicorn_log(server) and time.monotonic() < deadline:
            time.sleep(0.02)
        log = gunicorn_log(server)
        assert "connection handler failed" in log and "RuntimeError: the handler failed on purpose" in log


# -- a first frame glued to the handshake --------------------------------------------------


def read_frame(sock: socket.socket, data: bytes) -> tuple[int, bytes, bytes]:
    """The next (unmasked) frame from ``data`` + what ``sock`` delivers: opcode, payload, the rest."""
    while True:
        header = parse_header(data, 0)
        if header is not None and len(data) >= header.size + header.length:
            end = header.size + header.length
            return header.opcode, data[header.size : end], data[end:]
        chunk = sock.recv(65536)
        assert chunk, f"EOF inside a frame: {data!r}"
        data += chunk


def test_first_frame_glued_to_the_handshake(server: WebServer) -> None:
    request = (
        f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    payload = b"sent with the handshake, in one segment"
    mask = os.urandom(4)
    frame = encode_header(Opcode.TEXT, len(payload), mask=mask) + apply_mask(payload, mask)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(request + frame)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 "), head
        opcode, echoed, rest = read_frame(sock, rest)
        assert (opcode, echoed) == (Opcode.TEXT, payload)
        close = encode_close(1000)
        sock.sendall(encode_header(Opcode.CLOSE, len(close), mask=mask) + apply_mask(close, mask))
        opcode, reply, rest = read_frame(sock, rest)
        assert opcode == Opcode.CLOSE and parse_close(reply)[0] == 1000
        assert sock.recv(65536) == b"" and rest == b""  # then EOF: nothing more from the server


# -- keepalive on the server side ----------------------------------------------------------


@pytest.fixture
def server_keepalive() -> Iterator[blockws.KeepAlive]:
    keepalive = blockws.KeepAlive(interval=0.25, timeout=0.5)
    yield keepalive
    keepalive.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["werkzeug", "http.server"])
def test_keepalive_keeps_an_idle_connection_through_a_proxy(
    start: Callable[..., WebServer], server_keepalive: blockws.KeepAlive, name: str
) -> None:
    server = start(name, keepalive=server_keepalive)
    relay = Relay(server.port, idle_drop=0.8)
    try:
        # The websockets client answers pings in its own thread and pings
        # nothing itself: only the server's pings keep the relay busy.
        with Peer("websockets", f"ws://127.0.0.1:{relay.port}/ws") as client:
            time.sleep(1.4)  # idle: well past the relay's limit (and 5 ping intervals)
            client.send("still here")
            assert client.recv() == "still here"
        assert relay.dropped == 0
    finally:
        relay.close()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["werkzeug", "http.server"])
def test_keepalive_fails_a_blackholed_connection(
    start: Callable[..., WebServer], server_keepalive: blockws.KeepAlive, name: str
) -> None:
    server = start(name, keepalive=server_keepalive)
    relay = Relay(server.port)
    k = key()
    try:
        client = blockws.connect(f"ws://127.0.0.1:{relay.port}/ws/wait?key={k}", keepalive=None, timeout=5)
        relay.blackhole()
        # The handler waits in recv(), without a timeout: only its keepalive can end it.
        deadline = time.monotonic() + 5
        while k not in SEEN and time.monotonic() < deadline:
            time.sleep(0.02)
        assert k in SEEN, "the handler still waits in recv()"
        code, seconds = SEEN[k].split()
        assert code == "1011"
        assert float(seconds) < server_keepalive.interval + server_keepalive.timeout + 3  # (a loaded machine)
    finally:
        relay.close()
    client.close()


# -- many at once --------------------------------------------------------------------------


def worker_threads(server: Gunicorn) -> int:
    return len(os.listdir(f"/proc/{server.worker_pid()}/task"))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["werkzeug", "gunicorn-gthread"])
def test_100_concurrent_connections(start: Callable[..., WebServer], request: pytest.FixtureRequest, name: str) -> None:
    raise_fd_limit(1024)
    server = start(name, request)
    before = threading.active_count()
    clients: list[blockws.WebSocket] = []
    try:
        for i in range(100):
            clients.append(blockws.connect(server.url(), timeout=10, keepalive=None))
            clients[-1].sendall(f"hello {i}")
        # All open at once, each with its own thread in the server.
        for i, ws in enumerate(clients):
            assert ws.recv() == f"hello {i}"
        if isinstance(server, Gunicorn):
            threads = worker_threads(server)
            assert 100 < threads <= 120 + 5
        else:
            assert threading.active_count() <= before + 100 + 5
        for round_ in range(3):  # all of them at once, text and binary
            sent: list[Message] = [os.urandom(1000 * round_) if i % 2 else f"{round_} {i}" for i in range(100)]
            for ws, message in zip(clients, sent):
                ws.sendall(message)
            assert [ws.recv() for ws in clients] == sent
    finally:
        for ws in clients:
            ws.close()
    for ws in clients:
        assert ws.close_code == 1000
    if isinstance(server, Gunicorn):
        assert worker_threads(server) <= 120 + 5


# -- a server that lends no socket -----------------------------------------------------------


@pytest.fixture
def waitress_server() -> Iterator[int]:
    import waitress  # type: ignore[import-untyped]
    from waitress import wasyncore

    from .webservers import dispatcher_app

    server: Any = waitress.create_server(dispatcher_app(), host="127.0.0.1", port=0)
    thread = threading.Thread(target=server.run, name="waitress", daemon=True)
    thread.start()
    yield server.effective_port
    # Closed from the loop's own thread, which then ends; the task threads don't by themselves.
    server.trigger.pull_trigger(lambda: wasyncore.close_all(server._map))
    thread.join(10)
    server.task_dispatcher.shutdown()


@pytest.mark.slow  # stopping waitress's task threads takes half a second
def test_waitress_upgrade_is_a_500_and_the_reason_is_logged(
    waitress_server: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="waitress")
    start_time = time.monotonic()
    with pytest.raises(blockws.InvalidStatus) as info:
        blockws.connect(f"ws://127.0.0.1:{waitress_server}/ws", open_timeout=5)
    assert time.monotonic() - start_time < 2
    assert "500" in str(info.value)
    messages = [str(r.exc_info[1]) for r in caplog.records if r.name.startswith("waitress") and r.exc_info]
    assert any("waitress" in m and "does not lend the client's socket" in m for m in messages), messages
    status, headers, _ = get(waitress_server, "/ws")
    assert status == 426
    # Without Upgrade: waitress rejects the header (hop-by-hop), and can't upgrade anyway.
    assert "upgrade" not in headers
    assert get(waitress_server, "/")[::2] == (200, b"ok")


# -- process_request's answer, whichever server sends it ------------------------------------

#: serve() and the two embeddings that answer through another server.
ANSWERING = ["serve", "werkzeug", "http.server"]

UPGRADE_HEADERS = (
    "Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


@pytest.fixture
def start_answering(start: Callable[..., WebServer], run_server: Callable[..., Any]) -> Callable[..., int]:
    """``start_answering(name, **options)``: serve() or a web server of the site; its port."""

    def starter(name: str, **options: Any) -> int:
        if name == "serve":
            from .webservers import route

            return int(run_server(route, **options).port)
        return start(name, **options).port

    return starter


def raw_answer(port: int, request: str) -> tuple[bytes, bytes]:
    """Send ``request`` on a connection of its own: the answer's head and its body, as bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request.encode("latin-1"))
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"no whole answer: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
        assert length, head
        while len(body) < int(length.group(1)):
            chunk = sock.recv(65536)
            assert chunk, f"the body ends early: {body!r}"
            body += chunk
        return head, body


@pytest.fixture
def thread_failures(monkeypatch: pytest.MonkeyPatch) -> list[BaseException | None]:
    """The exceptions that end a thread unhandled (threading.excepthook) during the test."""
    failures: list[BaseException | None] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: failures.append(args.exc_value))
    return failures


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("name", ANSWERING)
def test_process_request_cannot_inject_a_header_line(
    start_answering: Callable[..., int],
    name: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    thread_failures: list[BaseException | None],
) -> None:
    # The documented pattern: a redirect built from the request.
    def process_request(request: blockws.Request) -> blockws.Response:
        return blockws.Response.redirect("wss://example.com" + parse_qs(urlsplit(request.path).query)["next"][0])

    port = start_answering(name, process_request=process_request)
    target = "/ws?next=/x%0d%0aSet-Cookie:%20s=evil"
    head, body = raw_answer(port, f"GET {target} HTTP/1.1\r\n{UPGRADE_HEADERS}\r\n")
    assert head.startswith(b"HTTP/1.1 500 "), head
    assert b"evil" not in head + body
    assert not [line for line in head.split(b"\r\n") if line.lower().startswith(b"set-cookie")], head
    errors = errors_logged(caplog)
    assert [r.name for r in errors] == ["blockws.server"], errors
    assert "header Location" in errors[0].getMessage() and "evil" not in caplog.text
    assert "Traceback" not in capfd.readouterr().err
    assert thread_failures == []


@pytest.mark.parametrize("name", ANSWERING)
def test_a_response_that_cant_be_sent_is_a_500_logged_once(
    start_answering: Callable[..., int],
    name: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    thread_failures: list[BaseException | None],
) -> None:
    secret = "s3cret-cookie"
    bad = blockws.Response(403, headers={"Set-Cookie": f"token={secret}\r\nX-Injected: 1"})
    port = start_answering(name, process_request=lambda request: bad)
    head, body = raw_answer(port, f"GET /ws HTTP/1.1\r\n{UPGRADE_HEADERS}\r\n")
    assert head.startswith(b"HTTP/1.1 500 "), head
    assert b"X-Injected" not in head and secret.encode() not in head + body
    errors = errors_logged(caplog)
    assert [r.name for r in errors] == ["blockws.server"], errors
    assert "header Set-Cookie" in errors[0].getMessage()
    assert secret not in caplog.text  # the value of a header is never logged
    assert "Traceback" not in capfd.readouterr().err
    assert thread_failures == []


@pytest.mark.parametrize("name", ANSWERING)
def test_a_process_request_that_raises_is_a_500_logged_once(
    start_answering: Callable[..., int],
    name: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    thread_failures: list[BaseException | None],
) -> None:
    def process_request(request: blockws.Request) -> None:
        raise RuntimeError("process_request failed on purpose")

    port = start_answering(name, process_request=process_request)
    head, body = raw_answer(port, f"GET /ws HTTP/1.1\r\n{UPGRADE_HEADERS}\r\n")
    assert head.startswith(b"HTTP/1.1 500 "), head
    errors = errors_logged(caplog)
    assert [(r.name, r.getMessage()) for r in errors] == [("blockws.server", "process_request failed")], errors
    assert errors[0].exc_info and "on purpose" in str(errors[0].exc_info[1])
    assert "Traceback" not in capfd.readouterr().err
    assert thread_failures == []


@pytest.mark.parametrize("name", ["werkzeug", "http.server"])
def test_a_head_request_gets_the_426_headers_without_the_body(start: Callable[..., WebServer], name: str) -> None:
    server = start(name)
    get_head, get_body = raw_answer(server.port, "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert get_head.startswith(b"HTTP/1.1 426 ") and get_body
    # A GET / behind the HEAD: on a server that keeps the connection, the
    # next bytes after the HEAD's head are its answer, not a body.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"HEAD /ws HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 426 "), head
    length = f"content-length: {len(get_body)}".encode()
    assert length in head.lower().split(b"\r\n"), head
    assert rest == b"" or rest.startswith(b"HTTP/1.1 200 "), rest
