"""The threading contract under stress, through the public API only.

DESIGN.md: one thread may ``recv()`` while others ``send()``; sends are
serialized per frame; a message opened by a partial ``send()`` belongs to the
thread that opened it; ``close()``/``abort()`` wake every thread;
``broadcast()`` never blocks; the keepalive runs beside all of it. Each test
repeats a random round (seeded by its number) to catch races: every message
arrives byte-exact and in order per sender, no thread hangs, no thread or
file descriptor is left behind.

On free-threaded CPython (3.13t, the GIL off) the threads really run at the
same time: .ci/freethreaded.sh runs the long version there,
``BLOCKWS_THREADING_ROUNDS=100`` (400 rounds in all, about 3 minutes); the
normal run makes 3 rounds of each. Marked slow (a round of close() takes a
second: see test_close_or_abort_racing_send_and_recv), so the fast runs on
the other versions leave them to those two.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Union

import pytest

import blockws

pytestmark = pytest.mark.slow

ROUNDS = int(os.environ.get("BLOCKWS_THREADING_ROUNDS", "3"))
#: Long enough for any round on a loaded machine; a round takes well under a second.
JOIN = 30.0
#: Sizes around the frame header's length steps, the kernel's small buffer,
#: and past 64 KiB (where a large message is received without a join).
SIZES = [0, 1, 125, 126, 1000, 5000, 65535, 70000, 200_000]

Message = Union[str, bytes]


def message(rng: random.Random, sender: int, seq: int) -> Message:
    """A message that says who sent it and which one it is: text or binary, of a random size."""
    tag = f"{sender}:{seq}:"
    size = rng.choice(SIZES) + rng.randrange(10)
    if rng.random() < 0.3:
        return tag + "".join(rng.choice("aé€𝄞 ") for _ in range(size // 4))
    return tag.encode() + rng.randbytes(size)


def sender_of(msg: Message) -> int | None:
    """The number of the sender whose tag starts ``msg``; None for a message no sender sent whole."""
    head = msg[:12] if isinstance(msg, bytes) else msg[:12].encode()
    number = head.split(b":", 1)[0]
    return int(number) if number.isdigit() and len(number) < len(head) else None


def send_in_pieces(rng: random.Random, ws: blockws.WebSocket, msg: Message) -> None:
    """Send ``msg`` with partial ``send()`` calls (its message stays open between them), or ``sendall()``."""
    if rng.random() < 0.4 or len(msg) < 2:
        ws.sendall(msg)
        return
    cuts = sorted(rng.sample(range(1, len(msg)), min(3, len(msg) - 1)))
    pieces = [msg[a:b] for a, b in zip([0, *cuts], [*cuts, len(msg)])]
    for i, piece in enumerate(pieces):
        fin = i == len(pieces) - 1
        assert ws.send(piece, fin=fin) == len(piece)  # blocking: all of it is accepted


def send_messages(ws: blockws.WebSocket, mine: list[Message], number: int, seed: int, most: int) -> None:
    """Sender ``number``: 3 to ``most - 1`` tagged messages in random pieces, each noted in ``mine`` once sent."""
    rng = random.Random(seed)
    for seq in range(rng.randrange(3, most)):
        msg = message(rng, number, seq)
        send_in_pieces(rng, ws, msg)
        mine.append(msg)


def small_buffers_client(url: str, **options: Any) -> blockws.WebSocket:
    """A client whose kernel buffers are small, so that writes are partial and frames' tails wait."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    port = int(url.rsplit(":", 1)[1].strip("/"))
    sock.connect(("127.0.0.1", port))
    return blockws.connect(url, sock=sock, **options)


class Threads:
    """Threads whose exceptions are kept for the test to look at, not printed."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, target: Callable[[], None], name: str) -> None:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # noqa: B036 - reported by join()
                self.errors.append(exc)

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def join(self, timeout: float = JOIN) -> list[str]:
        """Wait for them all; the names of those still running (a hang)."""
        end = time.monotonic() + timeout
        for thread in self.threads:
            thread.join(max(0.0, end - time.monotonic()))
        return [t.name for t in self.threads if t.is_alive()]


@pytest.fixture
def keepalive() -> Iterator[blockws.KeepAlive]:
    """A keepalive that pings often, for the client and the server: it runs beside every test here."""
    ka = blockws.KeepAlive(interval=0.02, timeout=10.0)
    yield ka
    ka.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture(scope="module", autouse=True)
def no_leaked_file_descriptors() -> Iterator[None]:
    """Hundreds of rounds with a descriptor left behind each would show here."""
    if not os.path.isdir("/proc/self/fd"):
        yield
        return
    before = open_fds()
    yield
    end = time.monotonic() + 5.0
    while open_fds() > before + 3 and time.monotonic() < end:
        time.sleep(0.05)
    assert open_fds() <= before + 3, f"{open_fds() - before} file descriptors more than before the rounds"


def by_sender(messages: list[Message], where: str) -> dict[int, list[Message]]:
    groups: dict[int, list[Message]] = {}
    for i, msg in enumerate(messages):
        number = sender_of(msg)
        # A piece of a message (its tail, say) delivered as a whole one.
        assert number is not None, f"{where}: message {i} is none that was sent: {len(msg)} items, {msg[:16]!r}..."
        groups.setdefault(number, []).append(msg)
    return groups


def check_prefixes(got: dict[int, list[Message]], attempted: dict[int, list[Message]], where: str) -> None:
    """What arrived from each sender is the start of what it tried to send, byte-exact and in order."""
    for number, tried in attempted.items():
        mine = got.get(number, [])
        assert_same(mine, tried[: len(mine)], f"sender {number} at {where}")


def assert_same(got: list[Message], expected: list[Message], who: str) -> None:
    # A short message for a long list: which one differs, not both lists.
    assert len(got) == len(expected), f"{who}: {len(got)} messages, {len(expected)} sent"
    for i, (a, b) in enumerate(zip(got, expected)):
        assert a == b, f"{who}: message {i} differs ({len(a)} vs {len(b)} items)"


rounds = pytest.mark.parametrize("seed", range(ROUNDS))


@rounds
def test_one_reader_many_senders_and_broadcasts(run_server, keepalive, seed):
    """A client thread reads the echoes while three threads send (partial sends over a 4 KiB
    SO_SNDBUF, each owning the message it opened) and two broadcast to the same connection."""
    rng = random.Random(seed)
    compression = rng.choice([None, "deflate"])
    server = run_server(max_size=None, compression=compression, keepalive=keepalive)
    ws = small_buffers_client(server.url, max_size=None, compression=compression, keepalive=keepalive)
    sent: dict[int, list[Message]] = {}
    received: list[Message] = []
    threads = Threads()

    def sender(number: int, seed: int) -> None:
        send_messages(ws, sent.setdefault(number, []), number, seed, 12)

    def broadcaster(number: int, seed: int) -> None:
        rng = random.Random(seed)
        mine = sent[number] = []
        for seq in range(rng.randrange(5, 20)):
            msg = message(rng, number, seq)
            if not blockws.broadcast([ws], msg):  # never blocks: skipped when the connection can't take it now
                mine.append(msg)
            time.sleep(rng.random() * 0.002)

    def reader() -> None:
        while (msg := ws.recv()) is not None:
            received.append(msg)

    threads.start(reader, "reader")
    senders = Threads()
    for number in range(3):
        senders.start(lambda n=number: sender(n, rng.randrange(1 << 30)), f"sender {number}")
    for number in range(3, 5):
        senders.start(lambda n=number: broadcaster(n, rng.randrange(1 << 30)), f"broadcaster {number}")
    try:
        assert senders.join() == [], "a sender hung"
        assert senders.errors == []
        # Not close(): it would discard the echoes still arriving.
        ws.shutdown(socket.SHUT_WR)  # the echoes of all that was accepted come back before the server's Close
        assert threads.join() == [], "the reader hung"
        assert threads.errors == []
        ws.close()
    finally:
        ws.abort()
        threads.join(5)
    assert ws.close_code == 1000
    got = by_sender(received, f"the client (seed {seed})")
    for number, expected in sent.items():
        assert_same(got.get(number, []), expected, f"sender {number} (seed {seed})")
    assert sum(map(len, sent.values())) == len(received)


@rounds
def test_close_or_abort_racing_send_and_recv(run_server, keepalive, seed):
    """close() (from two threads at once) or abort() while three threads send and one reads:
    every thread wakes with the connection's end, and what arrived is byte-exact and in order."""
    rng = random.Random(seed)
    ending = rng.choice(["close", "close twice", "abort"])
    at_server: list[Message] = []

    def record(ws: blockws.WebSocket) -> None:
        try:
            while (msg := ws.recv()) is not None:
                at_server.append(msg)
                ws.sendall(msg)
        except blockws.ConnectionClosed:
            pass  # the client's abort()

    server = run_server(record, max_size=None, keepalive=keepalive)
    ws = small_buffers_client(server.url, max_size=None, keepalive=keepalive)
    attempted: dict[int, list[Message]] = {}
    completed: dict[int, list[Message]] = {}
    received: list[Message] = []
    threads = Threads()

    def sender(number: int, seed: int) -> None:
        rng = random.Random(seed)
        tried, done = attempted[number], completed[number]
        try:
            for seq in range(1000):
                msg = message(rng, number, seq)
                tried.append(msg)
                send_in_pieces(rng, ws, msg)
                done.append(msg)
        except blockws.ConnectionClosed:
            return
        raise AssertionError("still sending after 1000 messages")

    def reader() -> None:
        try:
            while (msg := ws.recv()) is not None:
                received.append(msg)
        except blockws.ConnectionClosed:
            pass

    for number in range(3):
        attempted[number], completed[number] = [], []
        threads.start(lambda n=number: sender(n, rng.randrange(1 << 30)), f"sender {number}")
    threads.start(reader, "reader")
    time.sleep(rng.random() * 0.05)
    accepted_before = {number: len(done) for number, done in completed.items()}
    try:
        if ending == "abort":
            ws.abort()
        elif ending == "close":
            ws.close()
        else:
            closer = Threads()
            closer.start(ws.close, "second close()")
            ws.close()
            assert closer.join() == [] and closer.errors == []
        assert threads.join() == [], "a thread hung"
        assert threads.errors == []
    finally:
        ws.abort()
        threads.join(5)
    server.stop()
    at_the_server = by_sender(at_server, f"the server ({ending}, seed {seed})")
    check_prefixes(at_the_server, attempted, f"the server ({ending}, seed {seed})")
    if ending != "abort" and ws.close_code == 1000:
        # Accepted before close() began: written before its Close.
        for number, count in accepted_before.items():
            assert len(at_the_server.get(number, [])) >= count, f"sender {number}: accepted messages lost (seed {seed})"
    else:
        assert ws.close_code in (1000, 1006), ws.close_code
    # close() drops the messages in flight: a message another thread was
    # receiving is dropped whole (its tail used to come as a message).
    assert all(sender_of(msg) is not None for msg in received), f"a message without its start (seed {seed})"
    check_prefixes(by_sender(received, f"the client ({ending}, seed {seed})"), attempted, f"the client ({ending})")


@rounds
def test_broadcast_from_several_threads(run_server, keepalive, seed):
    """Three threads broadcast to four clients at once (one of them reads slowly): each client gets
    exactly the messages that broadcast() didn't hand back for it, in each broadcaster's order."""
    rng = random.Random(seed)
    connections: list[blockws.WebSocket] = []
    joined = threading.Condition()
    done = threading.Event()

    def handler(ws: blockws.WebSocket) -> None:
        with joined:
            connections.append(ws)
            joined.notify_all()
        done.wait(JOIN)
        ws.close()

    server = run_server(handler, keepalive=keepalive, compression=rng.choice([None, "deflate"]))
    clients = [small_buffers_client(server.url, keepalive=keepalive, max_size=None) for _ in range(4)]
    with joined:
        assert joined.wait_for(lambda: len(connections) == len(clients), 10)
    received: list[list[Message]] = [[] for _ in clients]
    # Which client a server connection serves: the client's local port is the server's remote one.
    index = {id(conn): [c.local_address for c in clients].index(conn.remote_address) for conn in connections}
    delivered: dict[int, list[list[Message]]] = {}
    threads = Threads()

    def reader(i: int) -> None:
        while (msg := clients[i].recv()) is not None:
            received[i].append(msg)
            if i == 0:
                time.sleep(0.001)  # slow: the server's side fills up and broadcast() skips it

    def broadcaster(number: int, seed: int) -> None:
        rng = random.Random(seed)
        mine = delivered[number] = [[] for _ in clients]
        for seq in range(rng.randrange(10, 40)):
            msg = message(rng, number, seq)
            skipped = {id(conn) for conn in blockws.broadcast(connections, msg)}
            for conn in connections:
                if id(conn) not in skipped:
                    mine[index[id(conn)]].append(msg)

    for i in range(len(clients)):
        threads.start(lambda i=i: reader(i), f"reader {i}")
    broadcasters = Threads()
    for number in range(3):
        broadcasters.start(lambda n=number: broadcaster(n, rng.randrange(1 << 30)), f"broadcaster {number}")
    try:
        assert broadcasters.join() == [] and broadcasters.errors == []
        done.set()  # the handlers close: each client reads to the end, then None
        assert threads.join() == [], "a reader hung"
        assert threads.errors == []
    finally:
        done.set()
        for ws in clients:
            ws.abort()
        threads.join(5)
    for i in range(len(clients)):
        got = by_sender(received[i], f"client {i} (seed {seed})")
        for number, per_client in delivered.items():
            assert_same(got.get(number, []), per_client[i], f"broadcaster {number} to client {i} (seed {seed})")


@rounds
def test_recv_into_exact_sizes_while_others_send(run_server, keepalive, seed):
    """recv_into() with a buffer of exactly the message's size, or one byte short, while two other
    threads send and the keepalive pings: the message fits, or BufferTooSmall leaves it whole."""
    rng = random.Random(seed)
    compression = rng.choice([None, "deflate"])
    # Both sides know the sizes: the server sends them, the client's reader expects them.
    sizes = [rng.choice(SIZES) + rng.randrange(10) for _ in range(rng.randrange(5, 20))]
    payloads = [random.Random(seed * 1000 + i).randbytes(size) for i, size in enumerate(sizes)]
    at_server: list[Message] = []

    def handler(ws: blockws.WebSocket) -> None:
        def read() -> None:
            while (msg := ws.recv()) is not None:
                at_server.append(msg)

        reading = threading.Thread(target=read)
        reading.start()
        for payload in payloads:
            ws.sendall(payload)
        reading.join(JOIN)

    server = run_server(handler, max_size=None, compression=compression, keepalive=keepalive)
    ws = small_buffers_client(server.url, max_size=None, compression=compression, keepalive=keepalive)
    sent: dict[int, list[Message]] = {}
    threads = Threads()
    results: list[bytes] = []
    too_small: list[blockws.BufferTooSmall] = []

    def reader() -> None:
        rng = random.Random(seed)
        for payload in payloads:
            size = len(payload)
            if size and rng.random() < 0.4:
                with pytest.raises(blockws.BufferTooSmall) as info:
                    ws.recv_into(bytearray(size - 1))
                too_small.append(info.value)
                err = info.value
                assert err.nbytes == size - 1
                assert err.size == size if err.exact else err.size <= size, (err.size, err.exact, size)
            buffer = bytearray(size + 1)  # one byte more: it must stay as it was
            buffer[size] = 0xA5
            assert ws.recv_into(memoryview(buffer)[:size] if rng.random() < 0.5 else buffer, size) == size
            assert buffer[size] == 0xA5
            assert not ws.received_text
            results.append(bytes(buffer[:size]))

    def sender(number: int, seed: int) -> None:
        send_messages(ws, sent.setdefault(number, []), number, seed, 10)

    threads.start(reader, "reader")
    senders = Threads()
    for number in range(2):
        senders.start(lambda n=number: sender(n, rng.randrange(1 << 30)), f"sender {number}")
    try:
        assert senders.join() == [] and senders.errors == []
        assert threads.join() == [], "the reader hung"
        assert threads.errors == []
        ws.close()
    finally:
        ws.abort()
        threads.join(5)
    server.stop()
    assert len(results) == len(payloads)
    for i, (got, payload) in enumerate(zip(results, payloads)):
        assert got == payload, f"message {i} ({len(payload)} bytes) differs (seed {seed})"
    got_at_server = by_sender(at_server, f"the server (seed {seed})")
    for number, expected in sent.items():
        assert_same(got_at_server.get(number, []), expected, f"sender {number} at the server (seed {seed})")
