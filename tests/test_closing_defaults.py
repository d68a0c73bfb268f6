"""Defaults that lose nothing: keepalive on by default, a peer's Close answered for
an application that doesn't read, a bounded Server.shutdown(), recv_fragments()
left part-way, and the platform fallbacks (no select.poll, no MSG_DONTWAIT)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.sync.server import serve as ws_serve

import blockws
from blockws import KeepAlive
from blockws.frames import FrameHeader, Opcode, encode_close, encode_header
from blockws.handshake import accept_key

from .helpers import raise_fd_limit


def keepalive_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "blockws keepalive"]


@pytest.mark.slow
def test_send_only_client_answers_a_pinging_websockets_server():
    """The server pings every 0.3 s and gives up after 0.5 s without a pong;
    the client only sends. Its default keepalive answers the pings, so every
    message arrives (with keepalive=None the server drops the client)."""
    received: list[Any] = []
    ended: list[Any] = []

    def handler(ws: Any) -> None:
        try:
            for message in ws:
                received.append(message)
        except WsConnectionClosed:
            pass
        ended.append(ws.close_code)

    server = ws_serve(handler, "127.0.0.1", 0, ping_interval=0.3, ping_timeout=0.5, compression=None)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}/"
        with blockws.connect(url, compression=None) as ws:
            for i in range(12):  # 2.4 s: 8 pings
                ws.sendall(f"message {i}")
                time.sleep(0.2)
        deadline = time.monotonic() + 5
        while not ended and time.monotonic() < deadline:
            time.sleep(0.01)
        assert received == [f"message {i}" for i in range(12)]
        assert ended == [1000]
    finally:
        server.shutdown()
        thread.join(10)


def test_one_keepalive_thread_for_one_and_for_a_hundred_connections(echo_server):
    raise_fd_limit(600)
    first = blockws.connect(echo_server.url, compression=None)
    conns = [first]
    try:
        # Server and client connections of this process share the one thread.
        assert len(keepalive_threads()) == 1
        assert KeepAlive.shared().thread in keepalive_threads()
        conns += [blockws.connect(echo_server.url, compression=None, connect_gate=None) for _ in range(99)]
        assert len(keepalive_threads()) == 1
    finally:
        for ws in conns:
            ws.close()


def test_keepalive_none_opts_out(run_server):
    """A client that doesn't read (it only waits) answers the server's ping
    only through its keepalive thread: by default it does, with
    keepalive=None it can't."""
    answered: list[bool] = []

    def handler(ws: blockws.WebSocket) -> None:
        # A Ping that arrives with the 101 response is read with it and
        # answered by connect() itself: ping once the handshake is over.
        time.sleep(0.2)
        ws.settimeout(0.5)
        try:
            ws.ping()
            answered.append(True)
        except TimeoutError:
            answered.append(False)

    server = run_server(handler)
    for keepalive in (None, True):
        with blockws.connect(server.url, keepalive=keepalive):
            deadline = time.monotonic() + 3
            while len(answered) < 1 + (keepalive is True) and time.monotonic() < deadline:
                time.sleep(0.02)
    assert answered == [False, True]


def test_a_sender_notices_the_servers_close(run_server):
    """The server closes while the client only sends: within the keepalive's
    close_grace the Close is answered and send() raises ConnectionClosedOK,
    instead of accepting data nobody will read. recv() then reports the end."""
    closing = threading.Event()

    def handler(ws: blockws.WebSocket) -> None:
        assert ws.recv() == "first"
        closing.set()
        ws.close(1001, "going away")

    server = run_server(handler)
    keepalive = KeepAlive(close_grace=0.3)
    ws = blockws.connect(server.url, keepalive=keepalive, timeout=5)
    try:
        ws.sendall("first")
        assert closing.wait(5)
        start = time.monotonic()
        with pytest.raises(blockws.ConnectionClosedOK) as info:
            while time.monotonic() - start < 5:
                ws.sendall("more")
                time.sleep(0.02)
        assert time.monotonic() - start < 0.3 + 3  # the grace, a margin for a loaded machine (the loop: 5)
        assert info.value.code == 1001
        assert ws.recv() is None and ws.close_code == 1001
    finally:
        ws.close()
        keepalive.close()


def test_close_answered_for_an_application_that_does_not_read():
    """A raw peer sends Close and waits: the answer (echoing the code) comes
    within close_grace although the application never calls recv()."""
    listener = socket.create_server(("127.0.0.1", 0))
    answer: list[bytes] = []

    def peer() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            lines = head.split(b"\r\n")
            key = [line.split(b":", 1)[1].strip() for line in lines if line.lower().startswith(b"sec-websocket-key")][0]
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept_key(key.decode()).encode() + b"\r\n\r\n"
            )
            payload = encode_close(4002, "bye")
            conn.sendall(encode_header(Opcode.CLOSE, len(payload)) + payload)
            start = time.monotonic()
            data = b""
            while len(data) < 2 + 4 + 2:
                chunk = conn.recv(100)
                if not chunk:
                    break
                data += chunk
            answer.append(data)
            answer.append(str(time.monotonic() - start).encode())

    thread = threading.Thread(target=peer)
    thread.start()
    keepalive = KeepAlive(close_grace=0.2)
    try:
        ws = blockws.connect(f"ws://127.0.0.1:{listener.getsockname()[1]}/", keepalive=keepalive, compression=None)
        thread.join(5)
        data, elapsed = answer
        assert data[0] == 0x88 and data[1] == 0x80 | 2  # a masked Close with a code only
        code = int.from_bytes(bytes(b ^ data[2 + i % 4] for i, b in enumerate(data[6:8])), "big")
        assert code == 4002
        assert 0.2 <= float(elapsed) < 1.5
        assert ws.recv() is None and (ws.close_code, ws.close_reason) == (4002, "bye")
        ws.close()
    finally:
        keepalive.close()
        listener.close()


def test_a_busy_server_handler_doesnt_hold_the_clients_close(run_server):
    """The server's keepalive answers the Close of a handler that isn't
    reading: the closing handshake is then done, and the server closes TCP
    first (RFC 6455 section 7.1.1). The client's close() used to wait for
    the handler to return (here 3 s). The handler still gets what came
    before the Close, then None; send() says the connection is closed."""
    release = threading.Event()
    after: list[object] = []

    def handler(ws: blockws.WebSocket) -> None:
        release.wait(3)  # busy: not in recv()
        after.append(ws.recv())
        after.append(ws.recv())
        with pytest.raises(blockws.ConnectionClosedOK):
            ws.send("too late")
        after.append(ws.close_code)

    keepalive = KeepAlive(close_grace=0.2)
    server = run_server(handler, keepalive=keepalive)
    try:
        ws = blockws.connect(server.url, timeout=5, keepalive=None)
        ws.sendall("before the close")
        start = time.monotonic()
        ws.close(1001, "done")
        assert time.monotonic() - start < 1.5
        assert ws.close_code == 1001
        release.set()
        deadline = time.monotonic() + 5
        while len(after) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert after == ["before the close", None, 1001]
    finally:
        release.set()
        keepalive.close()


def test_a_busy_server_sends_fin_once_its_held_answer_is_written(run_server):
    """As above, with the server's answer stuck behind messages the client
    hasn't read yet (held by the server, past the kernel's buffer): FIN
    goes when the keepalive has written them and the Close, not when the
    handler returns (the client's close() used to wait 3 s here)."""
    release = threading.Event()
    held: list[int] = []
    message = os.urandom(65536)  # incompressible: permessage-deflate is on

    def handler(ws: blockws.WebSocket) -> None:
        ws.write_limit = 1 << 20
        # Whole messages until one doesn't fit: the last ones wait in the
        # server's buffer, for the keepalive to write as the client reads.
        for _ in range(10_000):
            if blockws.broadcast([ws], message):
                break
        held.append(ws.buffered_amount)
        release.wait(3)  # busy: not in recv()

    keepalive = KeepAlive(close_grace=0.2)
    server = run_server(handler, keepalive=keepalive)
    try:
        ws = blockws.connect(server.url, timeout=5, keepalive=None)
        ws.shutdown(socket.SHUT_WR)  # our Close, and we read nothing yet
        time.sleep(0.6)  # the server's keepalive answers it meanwhile, behind what it holds
        assert held and held[0] > 0
        start = time.monotonic()
        ws.close()  # reads (and drops) the messages, then the Close, then waits for FIN
        assert time.monotonic() - start < 1.5
        assert ws.close_code == 1000
    finally:
        release.set()
        keepalive.close()


@pytest.mark.parametrize("open_message", [False, True], ids=["whole messages", "an open message"])
def test_the_fin_follows_an_answered_close_whichever_thread_writes_it(run_server, open_message):
    """After the keepalive answered a Close behind held bytes, the FIN went
    only from the keepalive's own writes: when the handler's send() wrote
    the rest, the client waited for the handler to return (and for ever
    when the answer waited for an open message to end). The keepalive's
    two steps are driven by hand here, so that the handler's thread, not
    the keepalive's, writes the held bytes."""
    from blockws.link import READ_LIMIT

    answered = threading.Event()
    handler_done = threading.Event()
    outcome: list[object] = []

    def handler(ws: blockws.WebSocket) -> None:
        try:
            if open_message:
                ws.settimeout(0)
                assert ws.send(os.urandom(4_000_000), fin=False) < 4_000_000  # accepted in part
                ws.settimeout(None)
            else:
                # Whole messages (none left open), until the client's window is full.
                while not blockws.broadcast([ws], os.urandom(1000)):
                    pass
            link = ws._keepalive
            link.service(READ_LIMIT)  # the keepalive's read: the client's Close
            assert link.answer_close()  # the keepalive's answer, behind the held bytes
            outcome.append(ws.buffered_amount > 0)
            answered.set()
            ws.settimeout(0)
            end = time.monotonic() + 5
            while time.monotonic() < end:
                try:
                    ws.send(b"more")  # (ends the open message, when there is one)
                except BlockingIOError:
                    pass  # no room yet: the client reads
                except blockws.ConnectionClosedOK:
                    if not ws.buffered_amount:
                        break  # this thread wrote the last held byte
                time.sleep(0.01)
            outcome.append(ws.buffered_amount)
            handler_done.wait(10)  # busy for longer than the client waits
        except BaseException as exc:
            outcome.append(exc)
            raise
        finally:
            answered.set()

    server = run_server(handler, keepalive=None, compression=None)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, not autotuned
    sock.connect(("127.0.0.1", server.port))
    try:
        close = encode_close(1000, "")
        sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            + encode_header(Opcode.CLOSE, len(close), True, 0, b"\0\0\0\0")
            + close
        )
        assert answered.wait(10)
        sock.settimeout(4)
        received = b""
        while True:
            chunk = sock.recv(65536)  # TimeoutError: no FIN while the handler is busy
            if not chunk:
                break
            received += chunk
        assert outcome == [True, 0]
        assert received.endswith(b"\x88\x02" + close)
    finally:
        handler_done.set()
        sock.close()


@pytest.mark.slow
def test_a_reader_keeps_its_half_open_after_the_peers_close(run_server):
    """The half-close: the application that takes the Close with recv() may
    still send, however long it takes (the grace is for non-readers only)."""

    def handler(ws: blockws.WebSocket) -> None:
        numbers = [int(m) for m in ws]  # until the client's Close
        time.sleep(0.6)  # longer than the grace below
        ws.sendall(str(sum(numbers)))

    server = run_server(handler, keepalive=KeepAlive(close_grace=0.2))
    with blockws.connect(server.url, timeout=5) as ws:
        for n in range(1, 5):
            ws.sendall(str(n))
        ws.shutdown(socket.SHUT_WR)
        assert [ws.recv(), ws.recv()] == ["10", None]
    server.server.options["keepalive"].close()


@pytest.mark.slow
def test_shutdown_is_bounded_by_idle_handshakes_and_clients_that_do_not_read(run_server):
    """100 clients that connected and sent nothing, 100 blockws clients whose
    application never reads: shutdown() takes < 1 s + the clients' close_grace."""
    raise_fd_limit(1200)
    server = run_server(open_timeout=30, compression=None)
    silent = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(100)]
    keepalive = KeepAlive(close_grace=0.5)
    clients = [
        blockws.connect(server.url, keepalive=keepalive, compression=None, connect_gate=None) for _ in range(100)
    ]
    try:
        deadline = time.monotonic() + 10
        while len(server.server._handshaking) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)  # until every silent client's thread is in its handshake
        start = time.monotonic()
        server.stop()
        assert time.monotonic() - start < 1 + keepalive.close_grace
        for sock in silent:
            sock.settimeout(5)
            assert sock.recv(100) == b""  # dropped, no 101
        for ws in clients:
            assert ws.recv() is None and ws.close_code == 1001
    finally:
        for sock in silent:
            sock.close()
        for ws in clients:
            ws.close()
        keepalive.close()


def test_shutdown_cuts_a_pending_tls_handshake_short(run_server, tls):
    server = run_server(open_timeout=30, ssl_context=tls[0])
    silent = socket.create_connection(("127.0.0.1", server.port))
    try:
        deadline = time.monotonic() + 5
        while not server.server._handshaking and time.monotonic() < deadline:
            time.sleep(0.01)
        start = time.monotonic()
        server.stop()
        assert time.monotonic() - start < 1
        silent.settimeout(5)
        assert silent.recv(100) == b""
    finally:
        silent.close()


def fragmented_then_whole(ws: blockws.WebSocket) -> None:
    ws.recv()  # go
    ws.send(b"one", fin=False)
    ws.send(b"two", fin=False)
    ws.send(b"three", fin=True)
    ws.sendall(b"next")
    ws.sendall(b"last")
    ws.recv()


def test_recv_fragments_left_part_way_discards_the_rest(run_server):
    server = run_server(fragmented_then_whole, compression=None)
    with blockws.connect(server.url, timeout=5, compression=None) as ws:
        ws.sendall("go")
        for piece in ws.recv_fragments():
            assert piece == b"one"
            break  # the rest of this message is not wanted
        assert ws.recv() == b"next"
        assert [bytes(p) for p in ws.recv_fragments()] == [b"last"]
        ws.sendall("done")


def test_recv_while_a_fragments_iterator_is_open(run_server):
    server = run_server(fragmented_then_whole, compression=None)
    with blockws.connect(server.url, timeout=5, compression=None) as ws:
        ws.sendall("go")
        pieces = ws.recv_fragments()
        assert next(pieces) == b"one"
        assert ws.recv() == b"next"  # "two" and "three" are skipped
        with pytest.raises(RuntimeError, match="discarded"):
            next(pieces)
        assert ws.recv() == b"last"
        ws.sendall("done")


WITHOUT_POLL = textwrap.dedent(
    """
    import select, socket
    del select.poll                 # as on Windows
    if hasattr(socket, "MSG_DONTWAIT"):
        del socket.MSG_DONTWAIT     # as on Windows
    import threading, blockws
    from blockws import transport

    def echo(ws):
        for message in ws:
            ws.sendall(message)

    with blockws.serve(echo, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ws = blockws.connect(f"ws://127.0.0.1:{server.port}/", timeout=5)
        assert transport.MSG_DONTWAIT == 0 and transport.Waiter(ws.fileno())._rpoll is None  # the fallbacks
        for message in ["hello", b"x" * 300_000, "é" * 70_000]:
            ws.sendall(message)
            assert ws.recv() == message
        ws.settimeout(0.05)
        try:
            ws.recv()
        except TimeoutError:
            pass
        else:
            raise AssertionError("recv() did not time out")
        assert ws.ping() < 1
        ws.close()
    print("ok")
    """
)


def test_works_without_poll_and_msg_dontwait():
    """The platform fallbacks, in a fresh interpreter: select.poll and
    MSG_DONTWAIT removed before blockws is imported."""
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_POLL],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_trace_option_sees_frames_the_keepalive_read_first(run_server):
    """ws.trace set after connect() may miss frames the keepalive thread
    already read; trace= on connect() and serve() sees every frame."""
    server_seen: list[str] = []
    client_seen: list[str] = []
    checked = threading.Event()

    def handler(ws: blockws.WebSocket) -> None:
        ws.sendall("first")
        time.sleep(0.3)  # not reading: the keepalive thread reads the client's "hello"
        assert ws.recv() == "hello"
        checked.set()

    def tracer(seen: list[str]) -> Callable[[str, FrameHeader, bytes], None]:
        def trace(direction: str, header: FrameHeader, preview: bytes) -> None:
            if header.opcode == Opcode.TEXT:
                seen.append(direction + bytes(preview).decode())

        return trace

    server = run_server(handler, trace=tracer(server_seen))
    with blockws.connect(server.url, timeout=5, compression=None, trace=tracer(client_seen)) as ws:
        ws.sendall("hello")
        time.sleep(0.3)  # the keepalive thread reads "first"
        assert ws.recv() == "first"
        assert checked.wait(5)
    assert client_seen[:2] == [">hello", "<first"] or client_seen[:2] == ["<first", ">hello"]
    assert "<hello" in server_seen and ">first" in server_seen
