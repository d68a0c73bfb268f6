"""Concurrency stress kept as regression tests (issue 14, "Also"): many senders
with partial sends and timeouts over a tiny kernel buffer, close() racing
send()/recv(), and protocol violations from a raw peer answered with the right
close code. Real sockets on 127.0.0.1, real peers, no mocks.
"""

from __future__ import annotations

import os
import random
import socket
import struct
import threading
import time
import zlib
from collections import Counter
from typing import Any

import pytest

import blockws
from blockws.frames import Opcode, encode_header
from blockws.protocol import State

from .test_connection import small_buffer_client

# -- 1. many senders, partial sends and timeouts, a 4 KiB kernel buffer ------------

SENDERS = 6
PER_SENDER = 50
SEND_TIMEOUT = 0.05


def stress_message(thread: int, seq: int) -> str | bytes:
    """Message ``seq`` of sender ``thread``: tagged, its content a function of the tag.

    Every third is text with characters of 2 to 4 bytes (partial sends count
    characters there), the rest binary; some are larger than write_limit; half
    of each is random (deflate can't shrink it away), half repetitive.
    """
    rng = random.Random(thread * 1000 + seq)
    size = 100_000 if seq % 17 == 5 else rng.choice([0, 1, 125, 126, 4000, rng.randrange(20_000)])
    tag = f"{thread}:{seq}:"
    if seq % 3 == 0:
        alphabet = "aé€𝄞 xyz"
        random_half = "".join(rng.choice(alphabet) for _ in range(size // 8))
        return tag + random_half + "é€𝄞" * (size // 24)
    random_half = rng.getrandbits(8 * (size // 2)).to_bytes(size // 2, "little")
    return tag.encode() + random_half + bytes([thread, seq]) * (size // 4)


def tag_of(message: str | bytes) -> tuple[int, int]:
    text = message if isinstance(message, str) else message[:12].decode("latin-1")
    thread, seq, _ = text.split(":", 2)
    return int(thread), int(seq)


class SlowThenFastReader:
    """Reads nothing for a while, then a message at a time with pauses, then at full speed."""

    def __init__(self) -> None:
        self.received: list[str | bytes] = []
        self.done = threading.Event()

    def __call__(self, ws: blockws.WebSocket) -> None:
        try:
            time.sleep(0.4)
            for message in ws:
                self.received.append(message)
                if len(self.received) < 40:
                    time.sleep(0.005)
        finally:
            self.done.set()


@pytest.mark.slow
@pytest.mark.parametrize("compression", [None, "deflate"])
def test_many_senders_with_partial_sends_and_timeouts_lose_nothing(run_server, compression):
    handler = SlowThenFastReader()
    # keepalive=None: a keepalive would read for the handler while it sleeps.
    server = run_server(handler, max_size=None, keepalive=None, compression=compression)
    # Small buffers on the server side too (accepted sockets inherit them).
    server.server.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    ws = small_buffer_client(server.url, server.port, timeout=SEND_TIMEOUT, compression=compression)
    assert bool(ws.extensions) == (compression is not None)

    stats = {"timeouts": 0, "partial": 0, "sendall_timeouts_with_progress": 0}
    stats_lock = threading.Lock()
    errors: list[BaseException] = []
    give_up = time.monotonic() + 25

    def count(what: str) -> None:
        with stats_lock:
            stats[what] += 1

    def send_with_send(message: str | bytes) -> None:
        # README's partial-send pattern: send() what is left, retry on TimeoutError.
        rest = message
        while True:
            try:
                n = ws.send(rest)
            except TimeoutError:
                count("timeouts")
                if time.monotonic() > give_up:
                    raise
                continue
            assert 0 < n <= len(rest) or (n == 0 and not rest)
            if n < len(rest):
                count("partial")
            rest = rest[n:]
            if not rest:
                return

    def send_with_sendall(message: str | bytes) -> None:
        rest = message
        while True:
            try:
                ws.sendall(rest)
                return
            except TimeoutError as exc:
                count("timeouts")
                assert 0 <= exc.accepted <= len(rest)  # type: ignore[attr-defined]
                if exc.accepted:  # type: ignore[attr-defined]
                    count("sendall_timeouts_with_progress")
                rest = rest[exc.accepted :]  # type: ignore[attr-defined]
                if time.monotonic() > give_up:
                    raise

    def sender(thread: int) -> None:
        try:
            for seq in range(PER_SENDER):
                message = stress_message(thread, seq)
                (send_with_send if (seq + thread) % 2 else send_with_sendall)(message)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(i,), name=f"sender {i}") for i in range(SENDERS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not [t for t in threads if t.is_alive()], "a sender hangs"
        assert not errors, errors
        ws.settimeout(10)
        ws.close()
    except BaseException:
        ws.abort()  # wakes whatever still runs
        raise
    assert handler.done.wait(10), "the server did not see the end"
    assert ws.close_code == 1000

    # The paths under test were taken: nothing accepted, and part accepted.
    assert stats["timeouts"] > 0, stats
    assert stats["partial"] > 0, stats
    received = handler.received
    tags = [tag_of(m) for m in received]
    assert len(tags) == len(set(tags)), "a message arrived twice"
    assert sorted(tags) == [(t, s) for t in range(SENDERS) for s in range(PER_SENDER)], "a message is missing"
    for message in received:
        assert message == stress_message(*tag_of(message)), f"message {tag_of(message)} is corrupt"
    for thread in range(SENDERS):
        seqs = [s for t, s in tags if t == thread]
        assert seqs == sorted(seqs), f"the messages of sender {thread} arrived out of order"


# -- 2. close() racing send() and recv() -------------------------------------------

RACE_ITERATIONS = 150
CLOSE_TIMEOUT = 3


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Timeouts:
    """Retries what a TimeoutError interrupted, the way the README does, for a while."""

    def __init__(self, ws: blockws.WebSocket, give_up: float) -> None:
        self.ws = ws
        self.give_up = give_up

    def _expired(self) -> bool:
        if time.monotonic() > self.give_up:
            return True
        time.sleep(0.001)
        return False

    def sendall(self, data: str | bytes) -> None:
        while True:
            try:
                self.ws.sendall(data)
                return
            except TimeoutError as exc:
                data = data[exc.accepted :]  # type: ignore[attr-defined]
                if self._expired():
                    raise

    def send(self, data: str | bytes, fin: bool = True) -> None:
        while True:
            try:
                data = data[self.ws.send(data, fin) :]
            except TimeoutError:
                if self._expired():
                    raise
                continue
            if not data:
                return

    def recv(self) -> str | bytes | None:
        while True:
            try:
                return self.ws.recv()
            except TimeoutError:
                if self._expired():
                    raise


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc/self/fd")
def test_close_racing_send_and_recv(echo_server):
    rng = random.Random(14)
    with blockws.connect(echo_server.url):
        pass  # the server's keepalive thread starts, and stays (with its sockets) while it serves
    baseline = open_fds()
    unexpected: list[tuple[int, str, BaseException]] = []
    seen: Counter[str] = Counter()
    seen_lock = threading.Lock()

    def note(what: str) -> None:
        with seen_lock:
            seen[what] += 1

    for i in range(RACE_ITERATIONS):
        # Blocking and with a timeout, with and without compression.
        timeout = None if i % 2 else 0.05
        compression = "deflate" if i % 4 < 2 else None
        ws = blockws.connect(echo_server.url, timeout=timeout, compression=compression, close_timeout=CLOSE_TIMEOUT)
        retrying = Timeouts(ws, time.monotonic() + 10)  # no loop runs forever, whatever happens
        started = threading.Barrier(3)

        def send_loop(i: int = i, retrying: Timeouts = retrying, started: threading.Barrier = started) -> None:
            r = random.Random(i)
            started.wait()
            try:
                while True:
                    kind = r.random()
                    size = r.choice([0, 10, 200, 5000, 70_000])
                    if kind < 0.4:
                        retrying.sendall(os.urandom(size))
                    elif kind < 0.6:
                        retrying.sendall("é" * size)
                    elif kind < 0.9:
                        retrying.send(b"p" * size)  # partial sends
                    else:
                        retrying.send("part of ", fin=False)
                        retrying.sendall("a fragmented message")
                    note("messages sent")
            except blockws.ConnectionClosed as exc:
                note(f"send: {type(exc).__name__}")
            except BaseException as exc:
                unexpected.append((i, "send", exc))

        def recv_loop(i: int = i, retrying: Timeouts = retrying, started: threading.Barrier = started) -> None:
            started.wait()
            try:
                while retrying.recv() is not None:
                    note("messages received")
                note("recv: None")
            except blockws.ConnectionClosed as exc:
                note(f"recv: {type(exc).__name__}")
            except BaseException as exc:
                unexpected.append((i, "recv", exc))

        def close(i: int = i, ws: blockws.WebSocket = ws) -> None:
            try:
                began = time.monotonic()
                ws.close()
                took = time.monotonic() - began
                # A healthy peer answers at once: waiting out close_timeout
                # means the closing handshake stalled.
                if took >= CLOSE_TIMEOUT:
                    unexpected.append((i, "close", TimeoutError(f"close() took {took:.1f} s")))
            except BaseException as exc:
                unexpected.append((i, "close", exc))

        threads = [threading.Thread(target=send_loop, name="send"), threading.Thread(target=recv_loop, name="recv")]
        for t in threads:
            t.start()
        started.wait()
        time.sleep(rng.choice([0, 0, 0.0005, 0.002, 0.01, 0.03]))
        # close() in a thread of its own too, so that a hang in it is seen here.
        threads.append(threading.Thread(target=close, name="close"))
        threads[-1].start()
        for t in threads:
            t.join(10)
        hung = [t.name for t in threads if t.is_alive()]
        assert not hung, f"iteration {i}: {hung} still running 10 s after close()"
        assert not unexpected, unexpected
        assert ws.state is State.CLOSED, f"iteration {i}: {ws.state}"
        assert ws.close_code == 1000, f"iteration {i}: {ws.close_code} {ws.close_reason}"
        assert ws.fileno() == -1

    # Every socket of the connections is closed, on both sides.
    deadline = time.monotonic() + 5
    while open_fds() > baseline and time.monotonic() < deadline:
        time.sleep(0.02)
    assert open_fds() <= baseline, f"descriptors leaked: {baseline} before, {open_fds()} after"
    # The race was run: messages were in flight when close() came, and
    # senders found the connection closing.
    assert seen["messages received"] > RACE_ITERATIONS, seen
    assert seen["send: ConnectionClosedOK"] > RACE_ITERATIONS // 2, seen


# -- 3. protocol violations from a raw peer ------------------------------------------

UPGRADE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)
DEFLATE_OFFER = b"Sec-WebSocket-Extensions: permessage-deflate\r\n"
MAX_SIZE = 1000


def masked(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    key = b"\x37\xfa\x21\x3d"
    return encode_header(opcode, len(payload), fin, rsv, key) + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return masked(Opcode.CLOSE, struct.pack("!H", code) + reason)


def deflated(data: bytes, *, end_stream: bool = False) -> bytes:
    """``data`` as permessage-deflate sends it (the trailing 00 00 ff ff removed)."""
    obj = zlib.compressobj(wbits=-15)
    if end_stream:
        return obj.compress(data) + obj.flush(zlib.Z_FINISH)
    return (obj.compress(data) + obj.flush(zlib.Z_SYNC_FLUSH))[:-4]


RSV1, RSV2, RSV3 = 0x40, 0x20, 0x10
PROTOCOL_ERROR, INVALID_DATA, TOO_BIG = 1002, 1007, 1009

# (id, bytes the peer writes after the handshake, close code expected, deflate negotiated)
VIOLATIONS: list[tuple[str, bytes, int, bool]] = [
    *[(f"reserved-opcode-{op:#x}", masked(op, b"x"), PROTOCOL_ERROR, False) for op in (0x3, 0x7, 0xB, 0xF)],
    ("rsv1-without-extension", masked(Opcode.TEXT, b"x", rsv=RSV1), PROTOCOL_ERROR, False),
    ("rsv2", masked(Opcode.BINARY, b"x", rsv=RSV2), PROTOCOL_ERROR, False),
    ("rsv3", masked(Opcode.TEXT, b"x", rsv=RSV3), PROTOCOL_ERROR, False),
    ("unmasked-client-frame", encode_header(Opcode.TEXT, 5) + b"hello", PROTOCOL_ERROR, False),
    ("fragmented-ping", masked(Opcode.PING, b"x", fin=False), PROTOCOL_ERROR, False),
    ("fragmented-close", masked(Opcode.CLOSE, b"\x03\xe8", fin=False), PROTOCOL_ERROR, False),
    ("ping-over-125-bytes", masked(Opcode.PING, b"x" * 126), PROTOCOL_ERROR, False),
    ("close-over-125-bytes", close_frame(1000, b"x" * 124), PROTOCOL_ERROR, False),
    ("length-top-bit-set", b"\x82\xff" + b"\x80" + b"\0" * 7 + b"mask", PROTOCOL_ERROR, False),
    ("continuation-without-start", masked(Opcode.CONT, b"x"), PROTOCOL_ERROR, False),
    (
        "new-message-inside-fragmented",
        masked(Opcode.TEXT, b"a", fin=False) + masked(Opcode.BINARY, b"b"),
        PROTOCOL_ERROR,
        False,
    ),
    ("close-payload-of-one-byte", masked(Opcode.CLOSE, b"\x03"), PROTOCOL_ERROR, False),
    *[
        (f"close-code-{code}", close_frame(code), PROTOCOL_ERROR, False)
        for code in (0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000)
    ],
    ("invalid-utf8-text", masked(Opcode.TEXT, b"caf\xc3\x28"), INVALID_DATA, False),
    (
        "invalid-utf8-across-fragments",
        masked(Opcode.TEXT, b"ok \xe2\x82", fin=False) + masked(Opcode.CONT, b"\x28 no"),
        INVALID_DATA,
        False,
    ),
    (
        "utf8-truncated-at-message-end",
        masked(Opcode.TEXT, b"ok ", fin=False) + masked(Opcode.CONT, b"\xf0\x9d\x84"),
        INVALID_DATA,
        False,
    ),
    ("surrogate-in-text", masked(Opcode.TEXT, b"\xed\xa0\x80"), INVALID_DATA, False),
    ("invalid-utf8-close-reason", close_frame(1000, b"bye \xff"), INVALID_DATA, False),
    ("frame-over-max-size", masked(Opcode.BINARY, b"x" * (MAX_SIZE + 1)), TOO_BIG, False),
    (
        "fragments-over-max-size",
        masked(Opcode.TEXT, b"x" * 600, fin=False) + masked(Opcode.CONT, b"x" * 401),
        TOO_BIG,
        False,
    ),
    ("deflate-rsv1-on-ping", masked(Opcode.PING, b"x", rsv=RSV1), PROTOCOL_ERROR, True),
    (
        "deflate-rsv1-on-continuation",
        masked(Opcode.BINARY, deflated(b"ab")[:1], fin=False, rsv=RSV1)
        + masked(Opcode.CONT, deflated(b"ab")[1:], rsv=RSV1),
        PROTOCOL_ERROR,
        True,
    ),
    ("deflate-rsv2", masked(Opcode.BINARY, b"x", rsv=RSV2), PROTOCOL_ERROR, True),
    ("deflate-corrupt-data", masked(Opcode.BINARY, b"\xff\xff\xff\xff", rsv=RSV1), INVALID_DATA, True),
    (
        "deflate-junk-after-end-of-stream",
        masked(Opcode.BINARY, deflated(b"hello", end_stream=True), fin=False, rsv=RSV1)
        + masked(Opcode.CONT, b"junk" * 10),
        INVALID_DATA,
        True,
    ),
    ("deflate-bomb-over-max-size", masked(Opcode.BINARY, deflated(b"\0" * 100_000), rsv=RSV1), TOO_BIG, True),
]


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"EOF after {len(data)} of {n} bytes")
        data += chunk
    return data


def read_server_frame(sock: socket.socket) -> tuple[int, bytes]:
    """(opcode, payload) of the next frame from the server (unmasked, unfragmented)."""
    b0, b1 = read_exactly(sock, 2)
    assert not b1 & 0x80, "a server frame is masked"
    length = b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", read_exactly(sock, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", read_exactly(sock, 8))
    return b0 & 0x0F, read_exactly(sock, length)


def raw_client(port: int, deflate: bool) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(UPGRADE + (DEFLATE_OFFER if deflate else b"") + b"\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)  # byte by byte: nothing of the frames after it is taken
        if not chunk:
            raise ConnectionError(f"closed during the handshake: {head!r}")
        head += chunk
    assert head.startswith(b"HTTP/1.1 101 "), head
    assert (b"permessage-deflate" in head.lower()) == deflate, head
    return sock


@pytest.mark.parametrize(("wire", "code", "deflate"), [v[1:] for v in VIOLATIONS], ids=[v[0] for v in VIOLATIONS])
def test_protocol_violation_gets_the_right_close_code(run_server, wire, code, deflate):
    seen: list[Any] = []
    release = threading.Event()

    def handler(ws: blockws.WebSocket) -> None:
        try:
            seen.append(ws.recv())
        except blockws.ConnectionClosedError as exc:
            seen.append(exc)
        # Still running: closing TCP is the failing connection's own work.
        release.wait(10)

    server = run_server(handler, max_size=MAX_SIZE)
    sock = raw_client(server.port, deflate)
    try:
        with sock:
            sock.sendall(wire)
            opcode, payload = read_server_frame(sock)
            assert opcode == Opcode.CLOSE, (opcode, payload)
            assert len(payload) >= 2
            (got,) = struct.unpack("!H", payload[:2])
            assert got == code, f"closed with {got} {payload[2:]!r}, expected {code}"
            payload[2:].decode("utf-8")  # the reason says what was wrong, in UTF-8
            # The server closes TCP: after its Close, EOF (and nothing else).
            assert sock.recv(4096) == b""
    finally:
        release.set()
    server.stop()
    (exc,) = seen
    assert isinstance(exc, blockws.ConnectionClosedError), exc
    assert exc.code == code
