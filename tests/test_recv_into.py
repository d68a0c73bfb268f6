"""WebSocket.recv_into() over real 127.0.0.1 sockets: the same bytes as recv(), in the caller's buffer."""

from __future__ import annotations

import array
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import serve as ws_serve

import blockws
from blockws import BufferTooSmall
from blockws.frames import Opcode, encode_header
from blockws.handshake import accept_key

Message = Any  # str | bytes


def random_messages(rng: random.Random, count: int) -> list[Message]:
    messages: list[Message] = []
    for _ in range(count):
        size = rng.choice([0, 1, 125, 126, 65535, 65536, 65537, 262147, 700_001, rng.randrange(300_000)])
        if rng.random() < 0.3:
            messages.append("".join(rng.choice("aé€𝄞 ") for _ in range(size // 3)))
        else:
            messages.append(rng.randbytes(size))
    return messages


def pieces(message: Message, rng: random.Random) -> list[Message]:
    """``message`` cut in 1 to 5 fragments at random places."""
    cuts = sorted(rng.randrange(len(message) + 1) for _ in range(rng.randrange(5)))
    return [message[a:b] for a, b in zip([0, *cuts], [*cuts, len(message)])]


def send_fragmented(ws: blockws.WebSocket, message: Message, rng: random.Random) -> None:
    parts = pieces(message, rng)
    for part in parts[:-1]:
        ws.send(part, fin=False)
    ws.sendall(parts[-1])


def as_bytes(message: Message) -> bytes:
    return message.encode() if isinstance(message, str) else message


def check_into(ws: blockws.WebSocket, expected: Message, offset: int = 0) -> None:
    """recv_into() a guarded buffer: the message's bytes at ``offset``, nothing past them touched."""
    data = as_bytes(expected)
    buf = bytearray(b"\xee" * (offset + len(data) + 64))
    n = ws.recv_into(memoryview(buf)[offset:])
    assert n == len(data)
    assert buf[offset : offset + n] == data
    assert buf[:offset] == b"\xee" * offset and buf[offset + n :] == b"\xee" * 64
    assert ws.received_text is isinstance(expected, str)


# -- the same bytes as recv() ----------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "deflate"], ids=["plain", "deflate"])
def test_client_receives_what_recv_would(run_server, compression):
    """Random sizes, text and binary, random fragmentations: recv_into() writes the bytes recv() returns."""
    messages = random_messages(random.Random(18), 24)

    def handler(ws: blockws.WebSocket) -> None:
        rng = random.Random(1)
        for message in messages:
            send_fragmented(ws, message, rng)  # once for recv()
            send_fragmented(ws, message, rng)  # once for recv_into()
        ws.recv()

    server = run_server(handler, max_size=None)
    options: dict[str, Any] = {} if compression else {"compression": None}
    with blockws.connect(server.url, timeout=10, max_size=None, **options) as ws:
        assert bool(ws.extensions) is bool(compression)
        for i, message in enumerate(messages):
            assert ws.recv() == message
            check_into(ws, message, offset=i % 3)


@pytest.mark.parametrize("compression", [None, "deflate"], ids=["plain", "deflate"])
def test_server_receives_masked_frames(run_server, compression):
    """On the server side frames are masked (unmasked here, then copied): same bytes."""
    messages = random_messages(random.Random(19), 16)
    failures: list[BaseException] = []

    def handler(ws: blockws.WebSocket) -> None:
        try:
            for message in messages:
                check_into(ws, message)
            assert ws.recv_into(bytearray(10)) is None
        except BaseException as exc:  # reported by the test
            failures.append(exc)

    server = run_server(handler, max_size=None)
    options: dict[str, Any] = {} if compression else {"compression": None}
    rng = random.Random(2)
    with blockws.connect(server.url, timeout=10, max_size=None, **options) as ws:
        for message in messages:
            send_fragmented(ws, message, rng)
    server.stop()
    assert not failures, failures


def test_arguments_like_socket_recv_into(run_server):
    def handler(ws: blockws.WebSocket) -> None:
        ws.sendall(b"abcdefgh")
        ws.sendall(b"xyz")
        ws.recv()

    server = run_server(handler)
    with blockws.connect(server.url, timeout=5) as ws:
        with pytest.raises(TypeError):
            ws.recv_into(b"read-only")
        with pytest.raises(TypeError):
            ws.recv_into(memoryview(bytearray(20))[::2])
        with pytest.raises(ValueError, match="negative"):
            ws.recv_into(bytearray(20), -1)
        with pytest.raises(ValueError, match="too small for requested"):
            ws.recv_into(bytearray(20), 21)
        words = array.array("I", [0, 0, 0])
        assert ws.recv_into(words) == 8  # counted in bytes, as socket.recv_into does
        assert words.tobytes()[:8] == b"abcdefgh"
        buf = bytearray(b".....")
        assert ws.recv_into(buf, 3) == 3
        assert buf == b"xyz.."


def test_none_at_the_end_like_recv(run_server):
    def handler(ws: blockws.WebSocket) -> None:
        ws.sendall(b"")
        ws.close(4000, "bye")

    server = run_server(handler)
    with blockws.connect(server.url, timeout=5) as ws:
        buf = bytearray(10)
        assert ws.recv_into(buf) == 0  # an empty message: 0 bytes...
        assert ws.recv_into(buf) is None  # ...the end: None, every time
        assert ws.recv_into(buf) is None
        assert ws.recv() is None
        assert ws.close_code == 4000


def test_max_size_still_fails_with_1009(run_server):
    def handler(ws: blockws.WebSocket) -> None:
        ws.sendall(b"x" * 2000)
        ws.recv()

    server = run_server(handler)
    with blockws.connect(server.url, timeout=5, max_size=1000) as ws:
        with pytest.raises(blockws.ConnectionClosedError) as info:
            ws.recv_into(bytearray(5000))
        assert info.value.code == 1009


# -- a message larger than the buffer ----------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "deflate"], ids=["plain", "deflate"])
def test_too_large_message_stays_receivable(run_server, compression):
    big = random.Random(3).randbytes(300_000)
    text = "€" * 50_000

    def handler(ws: blockws.WebSocket) -> None:
        ws.sendall(big)  # one frame
        ws.sendall(big)
        for _ in range(2):  # fragmented: 10 frames of 30,000 bytes
            for i in range(10):
                ws.send(big[i * 30_000 : (i + 1) * 30_000], fin=i == 9)
        ws.sendall(text)
        ws.sendall(b"after")
        ws.recv()

    server = run_server(handler, max_size=None)
    options: dict[str, Any] = {} if compression else {"compression": None}
    with blockws.connect(server.url, timeout=10, max_size=None, **options) as ws:
        with pytest.raises(BufferTooSmall) as info:
            ws.recv_into(bytearray(400_000), 1000)
        assert info.value.nbytes == 1000
        if not compression:  # the header says it all
            assert info.value.exact and info.value.size == 300_000
            assert str(info.value) == "message of 300000 bytes doesn't fit in a buffer of 1000 bytes"
        assert ws.recv() == big  # kept, whole
        with pytest.raises(BufferTooSmall):
            ws.recv_into(bytearray(299_999))
        check_into(ws, big)  # a larger buffer takes it whole
        # Fragmented: found out after part of it was written.
        with pytest.raises(BufferTooSmall) as info:
            ws.recv_into(bytearray(95_000))
        assert 95_000 < info.value.size <= 300_000
        assert ws.recv() == big
        with pytest.raises(BufferTooSmall):
            ws.recv_into(bytearray(95_000))
        with pytest.raises(BufferTooSmall):  # again, with what was kept
            ws.recv_into(bytearray(200_000))
        check_into(ws, big)
        with pytest.raises(BufferTooSmall) as info:
            ws.recv_into(bytearray(149_999))  # 150,000 bytes of UTF-8
        assert ws.recv() == text
        check_into(ws, b"after")


# -- timeouts ------------------------------------------------------------------------------------


class RawServer:
    """A server speaking WebSocket by hand: after the handshake, ``script(conn)`` writes the frames."""

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.script = script
        self.thread = threading.Thread(target=self.serve)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                head += conn.recv(4096)
            lines = head.split(b"\r\n")
            key = next(ln.split(b":", 1)[1].strip() for ln in lines if ln.lower().startswith(b"sec-websocket-key"))
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept_key(key.decode()).encode() + b"\r\n\r\n"
            )
            self.script(conn)
            conn.sendall(b"\x88\x02\x03\xe8")  # Close 1000
            try:
                while conn.recv(65536):
                    pass
            except OSError:
                pass

    def close(self) -> None:
        self.thread.join(10)
        self.listener.close()


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], RawServer]]:
    servers: list[RawServer] = []

    def start(script: Callable[[socket.socket], None]) -> RawServer:
        servers.append(RawServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.mark.parametrize("finish", ["recv_into", "recv"])
def test_timeout_inside_a_frame_loses_nothing(raw_server, finish):
    """A large frame cut inside its payload, twice: two timed-out recv_into() calls
    (one of them non-blocking), then the whole message."""
    payload = random.Random(4).randbytes(400_000)
    frame = encode_header(Opcode.BINARY, len(payload), False) + payload
    tail = encode_header(Opcode.CONT, 3) + b"end"
    cuts = [frame[:1000], frame[1000:150_000], frame[150_000:] + tail[:1], tail[1:]]
    go = [threading.Event() for _ in cuts]

    def script(conn: socket.socket) -> None:
        for event, piece in zip(go, cuts):
            event.wait(5)
            conn.sendall(piece)

    server = raw_server(script)
    try:
        with blockws.connect(server.url, timeout=0.2, close_timeout=1, max_size=None, keepalive=None) as ws:
            buf = bytearray(500_000)
            for i, event in enumerate(go[:3]):
                event.set()
                time.sleep(0.05)
                if i == 1:
                    ws.setblocking(False)
                    with pytest.raises(BlockingIOError):
                        ws.recv_into(buf)
                    ws.settimeout(0.2)
                with pytest.raises(TimeoutError):
                    ws.recv_into(memoryview(buf)[i:])  # another buffer every time
            go[3].set()
            ws.settimeout(5)
            if finish == "recv":
                assert ws.recv() == payload + b"end"
            else:
                check_into(ws, payload + b"end")
            assert ws.recv_into(buf) is None
    finally:
        for event in go:
            event.set()


@pytest.mark.parametrize("finish", ["recv", "recv_fragments"])
def test_recv_of_a_large_frame_times_out_and_loses_nothing(raw_server, finish):
    """recv() reads a large binary frame into the bytes it returns (with the
    accelerator): cut inside its payload, timed-out calls keep what came, and the
    next recv() or recv_fragments() goes on from there."""
    payload = random.Random(5).randbytes(600_000)
    frame = encode_header(Opcode.BINARY, len(payload), True) + payload
    cuts = [frame[:100_000], frame[100_000:300_000], frame[300_000:]]
    go = [threading.Event() for _ in cuts]

    def script(conn: socket.socket) -> None:
        for event, piece in zip(go, cuts):
            event.wait(5)
            conn.sendall(piece)
        conn.sendall(encode_header(Opcode.BINARY, 5) + b"after")

    server = raw_server(script)
    try:
        with blockws.connect(server.url, timeout=0.2, close_timeout=1, max_size=None, keepalive=None) as ws:
            for i, event in enumerate(go[:2]):
                event.set()
                time.sleep(0.05)
                if i == 1:
                    ws.setblocking(False)
                    with pytest.raises(BlockingIOError):
                        ws.recv()
                    ws.settimeout(0.2)
                with pytest.raises(TimeoutError):
                    ws.recv()
            go[2].set()
            ws.settimeout(5)
            if finish == "recv":
                assert ws.recv() == payload
            else:
                assert b"".join(ws.recv_fragments()) == payload
            assert ws.recv() == b"after"
            assert ws.recv() is None
    finally:
        for event in go:
            event.set()


def test_recv_into_takes_over_what_recv_kept(run_server):
    go = threading.Event()

    def handler(ws: blockws.WebSocket) -> None:
        ws.send("first half, ", fin=False)
        go.wait(5)
        ws.sendall("second half")
        ws.recv()

    server = run_server(handler)
    with blockws.connect(server.url, timeout=0.2) as ws:
        with pytest.raises(TimeoutError):
            ws.recv()
        go.set()
        ws.settimeout(5)
        check_into(ws, "first half, second half")


# -- control frames, the keepalive, recv_fragments ------------------------------------------------


def test_ping_inside_a_fragmented_message_is_answered(run_server):
    """The server pings between two large fragments and waits for its pong before
    sending the rest: recv_into(), reading payload into place, answers it."""
    first, second = random.Random(5).randbytes(300_000), random.Random(6).randbytes(300_000)
    latencies: list[float] = []

    def handler(ws: blockws.WebSocket) -> None:
        ws.send(first, fin=False)
        latencies.append(ws.ping())
        ws.sendall(second)
        ws.recv()

    server = run_server(handler, max_size=None)
    with blockws.connect(server.url, timeout=5, max_size=None, keepalive=None, compression=None) as ws:
        check_into(ws, first + second)
    assert len(latencies) == 1


def test_what_another_reader_took_is_copied(run_server):
    """Pieces read by another reader (here ping(), as the keepalive thread does) before
    recv_into() are copied first; the rest of the message is read into place."""
    first, second = random.Random(7).randbytes(200_000), random.Random(8).randbytes(500_000)

    def handler(ws: blockws.WebSocket) -> None:
        ws.send(first, fin=False)
        assert ws.recv() == "go"
        ws.sendall(second)
        ws.recv()

    server = run_server(handler, max_size=None)
    with blockws.connect(server.url, timeout=5, max_size=None, keepalive=None, compression=None) as ws:
        deadline = time.monotonic() + 5
        while ws._inbox.held() < len(first) and time.monotonic() < deadline:
            ws.ping()  # reads until its pong, which may come between frames of the fragment
        assert ws._inbox.held() >= len(first)
        ws.sendall("go")
        check_into(ws, first + second)


def test_keepalive_read_ahead(run_server):
    """The keepalive thread reads a message while the application doesn't: recv_into() copies it."""
    message = random.Random(9).randbytes(600_000)

    def handler(ws: blockws.WebSocket) -> None:
        ws.sendall(message)
        ws.sendall(b"next")
        ws.recv()

    server = run_server(handler, max_size=None)
    with blockws.connect(server.url, timeout=5, max_size=None, compression=None) as ws:
        deadline = time.monotonic() + 5
        while not ws.pending() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ws.pending()
        check_into(ws, message)
        check_into(ws, b"next")


def test_recv_fragments_left_part_way_is_skipped(run_server):
    def handler(ws: blockws.WebSocket) -> None:
        ws.send(b"one ", fin=False)
        ws.sendall(b"two")
        ws.sendall(b"next")
        ws.recv()

    server = run_server(handler)
    with blockws.connect(server.url, timeout=5) as ws:
        fragments = ws.recv_fragments()
        assert next(fragments) == b"one "
        check_into(ws, b"next")


# -- TLS, and the websockets package as the peer ----------------------------------------------------


def test_over_tls(run_server, tls):
    server_ctx, client_ctx = tls
    messages = random_messages(random.Random(10), 12)

    def handler(ws: blockws.WebSocket) -> None:
        rng = random.Random(11)
        for message in messages:
            send_fragmented(ws, message, rng)
        ws.recv()

    server = run_server(handler, max_size=None, ssl_context=server_ctx)
    url = f"wss://localhost:{server.port}/"
    with blockws.connect(url, ssl_context=client_ctx, timeout=10, max_size=None, compression=None) as ws:
        for message in messages:
            check_into(ws, message)


def test_timeout_over_tls(run_server, tls):
    server_ctx, client_ctx = tls
    payload = random.Random(12).randbytes(300_000)
    go = threading.Event()

    def handler(ws: blockws.WebSocket) -> None:
        ws.send(payload[:200_000], fin=False)
        go.wait(5)
        ws.sendall(payload[200_000:])
        ws.recv()

    server = run_server(handler, max_size=None, ssl_context=server_ctx)
    url = f"wss://localhost:{server.port}/"
    with blockws.connect(url, ssl_context=client_ctx, timeout=0.3, max_size=None, compression=None) as ws:
        with pytest.raises(TimeoutError):
            ws.recv_into(bytearray(300_000))
        go.set()
        ws.settimeout(5)
        check_into(ws, payload)


@pytest.fixture
def websockets_source() -> Iterator[tuple[str, list[Message]]]:
    """A websockets server sending messages whole and in fragments (an iterable), then closing."""
    messages = random_messages(random.Random(13), 16)

    def handler(ws: Any) -> None:
        rng = random.Random(14)
        for message in messages:
            parts = pieces(message, rng)
            ws.send(parts if len(parts) > 1 else message)
        ws.close()

    server = ws_serve(handler, "127.0.0.1", 0, compression=None, max_size=None)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/", messages
    server.shutdown()
    thread.join(10)


def test_from_a_websockets_server(websockets_source):
    url, messages = websockets_source
    with blockws.connect(url, timeout=10, max_size=None, compression=None) as ws:
        for message in messages:
            check_into(ws, message)
        assert ws.recv_into(bytearray(1)) is None


def test_from_a_websockets_client(run_server):
    messages = random_messages(random.Random(15), 12)
    failures: list[BaseException] = []

    def handler(ws: blockws.WebSocket) -> None:
        try:
            for message in messages:
                check_into(ws, message)
        except BaseException as exc:
            failures.append(exc)

    server = run_server(handler, max_size=None)
    rng = random.Random(16)
    with ws_connect(server.url, compression=None, max_size=None) as client:
        for message in messages:
            parts = pieces(message, rng)
            client.send(parts if len(parts) > 1 else message)
    server.stop()
    assert not failures, failures


@pytest.mark.parametrize("receive", ["recv_into", "recv"])
def test_large_payload_is_read_into_place_both_ways(run_server, monkeypatch, receive):
    """The point of recv_into(): a large binary message goes from the kernel straight
    into the buffer (counted here at the protocol's seam), unmasked there on the
    server. recv() does the same with the C accelerator: into the bytes it returns."""
    if receive == "recv" and blockws._accel.Builder is None:
        pytest.skip("recv() reads into place only with the C accelerator")
    placed: list[tuple[blockws.protocol.Side, int]] = []
    real = blockws.protocol.Protocol.payload_placed

    def counting(self: blockws.protocol.Protocol, n: int, view: Any = None) -> bool:
        placed.append((self.side, n))
        return real(self, n, view)

    def placed_by(side: blockws.protocol.Side) -> int:
        return sum(n for s, n in placed if s is side)

    def check(ws: blockws.WebSocket) -> None:
        if receive == "recv_into":
            check_into(ws, message)
        else:
            assert ws.recv() == message

    monkeypatch.setattr(blockws.protocol.Protocol, "payload_placed", counting)
    message = random.Random(17).randbytes(1 << 20)
    received: list[int] = []
    client_done = threading.Event()

    def handler(ws: blockws.WebSocket) -> None:
        ws.sendall(message)
        client_done.wait(5)
        check(ws)
        received.append(placed_by(blockws.protocol.Side.SERVER))

    # No keepalive: it would read what arrives while the handler waits.
    server = run_server(handler, max_size=None, keepalive=None)
    with blockws.connect(server.url, timeout=5, max_size=None, compression=None, keepalive=None) as ws:
        check(ws)
        # At most a first read went through the parser.
        assert placed_by(blockws.protocol.Side.CLIENT) >= len(message) - 256 * 1024
        client_done.set()
        ws.settimeout(None)  # one frame (with a timeout, each partial write is a frame)
        ws.sendall(message)
        assert ws.recv() is None  # the handler is done
    server.stop()
    assert received[0] >= len(message) - 256 * 1024  # masked: unmasked in place


def test_the_exact_size_when_others_parsed_the_message_already(run_server):
    """The keepalive (or, without the GIL, any earlier read) may have parsed
    the whole message and the next ones before recv_into() runs: the size
    came from the frame headers only with one event queued, so
    BufferTooSmall said "at least" the first piece instead of the size."""
    big = random.Random(5).randbytes(300_000)

    def handler(ws: blockws.WebSocket) -> None:
        ws.sendall(big)
        ws.sendall(b"after")
        ws.recv()

    server = run_server(handler, max_size=None, compression=None)
    with blockws.connect(server.url, timeout=10, max_size=None, compression=None) as ws:
        end = time.monotonic() + 10
        while ws.pending() < len(big) + len(b"after") and time.monotonic() < end:
            time.sleep(0.01)  # the keepalive reads both meanwhile, in pieces
        with pytest.raises(BufferTooSmall) as info:
            ws.recv_into(bytearray(1000))
        assert info.value.exact and info.value.size == 300_000
        check_into(ws, big)
        check_into(ws, b"after")
