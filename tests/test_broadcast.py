"""broadcast(): every reading connection gets every message; a stalled one is handed back, whole."""

from __future__ import annotations

import contextlib
import random
import selectors
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.sync.client import connect as ws_connect

import blockws
from blockws.deflate import DeflateParams
from blockws.protocol import Protocol, Side

from .helpers import at_scale


class Hub:
    """A server whose handlers register their connections and read until the end."""

    def __init__(self, **options: Any) -> None:
        self.clients: list[blockws.WebSocket] = []
        self.lock = threading.Lock()
        self.joined = threading.Condition(self.lock)
        self.server = blockws.serve(self.handle, "127.0.0.1", 0, **options)
        self.thread = threading.Thread(target=self.server.serve_forever)
        self.thread.start()
        self.url = f"ws://127.0.0.1:{self.server.port}/"

    def handle(self, ws: blockws.WebSocket) -> None:
        with self.joined:
            self.clients.append(ws)
            self.joined.notify_all()
        while ws.recv() is not None:
            pass

    def wait_for(self, count: int) -> list[blockws.WebSocket]:
        with self.joined:
            assert self.joined.wait_for(lambda: len(self.clients) >= count, 30)
            return list(self.clients)

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)


@pytest.fixture
def hub_factory() -> Iterator[Any]:
    hubs: list[Hub] = []

    def make(**options: Any) -> Hub:
        hub = Hub(**options)
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        hub.stop()


def random_messages(count: int, largest: int, seed: int = 16) -> list[str | bytes]:
    rng = random.Random(seed)
    messages: list[str | bytes] = []
    for i in range(count):
        size = rng.randrange(largest + 1)
        if i % 2:
            messages.append(rng.randbytes(size))
        else:
            messages.append("".join(rng.choice("abcé€😀") for _ in range(size // 3)))
    return messages


def read_all(conns: list[blockws.WebSocket], expected: int, deadline: float) -> dict[int, list[Any]]:
    """Read ``expected`` messages from every connection, one thread, a select loop."""
    got: dict[int, list[Any]] = {id(ws): [] for ws in conns}
    left = {ws for ws in conns}
    with selectors.DefaultSelector() as selector:
        for ws in conns:
            ws.setblocking(False)
            selector.register(ws, selectors.EVENT_READ)
        while left and time.monotonic() < deadline:
            ready = [ws for ws in left if ws.pending()] or [key.fileobj for key, _ in selector.select(1)]
            for ws in ready:
                assert isinstance(ws, blockws.WebSocket)
                messages = got[id(ws)]
                try:
                    while len(messages) < expected:
                        messages.append(ws.recv())
                except BlockingIOError:
                    pass
                if len(messages) >= expected and ws in left:
                    left.discard(ws)
                    selector.unregister(ws)
    for ws in conns:
        ws.setblocking(True)
    return got


@pytest.mark.slow
@pytest.mark.large
def test_many_connections_one_stalled(hub_factory):
    """999 readers (99 without --large) get every message, in order and
    byte-exact; the one that never reads is handed back once its buffers are
    full, and what it got is whole messages only; no call waits on it."""
    count = at_scale(1000)
    hub = hub_factory(write_limit=16_384, compression=None)  # the keepalive writes what is held
    # A small receive buffer: with Linux's autotuning, the kernel buffers
    # of a connection that doesn't read can take 10 MB or more.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", hub.server.port))
    stalled = blockws.connect(hub.url, sock=sock, compression=None, keepalive=None, connect_gate=None)
    readers = [blockws.connect(hub.url, compression=None, keepalive=None, connect_gate=None) for _ in range(count - 1)]
    try:
        hub.wait_for(count)
        stalled_server = next(ws for ws in hub.clients if ws.remote_address == stalled.local_address)
        messages = random_messages(60, 1500)
        big = b"\xab" * 20_000  # fills the stalled one's buffers after a few
        slowest = 0.0
        returned_at = None
        for i, message in enumerate(messages):
            started = time.monotonic()
            skipped = blockws.broadcast(hub.clients, message)
            slowest = max(slowest, time.monotonic() - started)
            assert skipped == [], f"message {i}: {len(skipped)} connections could not take {len(message)} bytes"
        # Now only the stalled connection is sent to, until it is full.
        for i in range(1000):  # 20 MB: more than any kernel takes
            started = time.monotonic()
            skipped = blockws.broadcast([stalled_server], big)
            slowest = max(slowest, time.monotonic() - started)
            if skipped:
                assert skipped == [stalled_server]
                returned_at = i
                break
        assert returned_at is not None, "the stalled connection never filled up"
        assert slowest < 5.0  # a blocking send would wait for ever here
        got = read_all(readers, len(messages), time.monotonic() + 60)
        for ws in readers:
            assert got[id(ws)] == messages
        # The stalled one: every message whole, then the big ones it took.
        stalled.settimeout(10)
        assert [stalled.recv() for _ in messages] == messages
        assert [stalled.recv() for _ in range(returned_at)] == [big] * returned_at
        stalled.settimeout(0.3)
        with pytest.raises(TimeoutError):
            stalled.recv()  # nothing more: no part of the message it was skipped for
    finally:
        for ws in [stalled, *readers]:
            ws.close()


def test_broadcasts_from_several_threads_skip_no_reader(hub_factory):
    """Each handler of a chat broadcasts what its client says: while one
    thread writes to a connection, another's broadcast() waits the
    microseconds that takes instead of skipping a reader that keeps up."""
    hub = hub_factory(compression=None)
    readers = [blockws.connect(hub.url, compression=None, connect_gate=None) for _ in range(8)]
    try:
        conns = hub.wait_for(len(readers))
        skipped: list[blockws.WebSocket] = []

        def broadcaster(tag: str) -> None:
            for i in range(300):
                skipped.extend(blockws.broadcast(conns, f"{tag}{i}"))

        threads = [threading.Thread(target=broadcaster, args=(tag,)) for tag in "abc"]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert skipped == []
        got = read_all(readers, 900, time.monotonic() + 30)
        for ws in readers:
            for tag in "abc":
                assert [m for m in got[id(ws)] if m[0] == tag] == [f"{tag}{i}" for i in range(300)]
    finally:
        for ws in readers:
            ws.close()


def test_a_blocking_send_in_another_thread_makes_broadcast_skip_not_wait(hub_factory):
    """A thread stuck in a blocking send() to a peer that doesn't read holds
    that connection: broadcast() hands it back at once."""
    hub = hub_factory(compression=None, keepalive=None)
    with blockws.connect(hub.url, compression=None, keepalive=None):
        (server_side,) = hub.wait_for(1)
        stuck = threading.Thread(target=_send_until_lost, args=(server_side,))
        stuck.start()
        try:
            time.sleep(0.3)  # the kernel's buffers fill: send() waits for the peer
            started = time.monotonic()
            assert blockws.broadcast([server_side], "news") == [server_side]
            assert time.monotonic() - started < 0.05
        finally:
            server_side.abort()
            stuck.join(10)


def _send_until_lost(ws: blockws.WebSocket) -> None:
    try:
        while True:
            ws.sendall(b"x" * 8000)  # small: send()'s fast path
    except blockws.ConnectionClosed:
        pass


def test_memory_does_not_grow_with_the_messages_for_a_stalled_peer(hub_factory):
    hub = hub_factory(write_limit=65_536, compression=None, keepalive=None)
    with blockws.connect(hub.url, compression=None, keepalive=None):
        (server_side,) = hub.wait_for(1)
        message = b"x" * 4096
        while not blockws.broadcast([server_side], message):
            pass  # until the kernel's buffers and write_limit are full
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            # 8 MB offered; the kernel may still take a little (its buffers grow).
            skipped = sum(len(blockws.broadcast([server_side], message)) for _ in range(2000))
            grown = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        assert skipped > 1900
        # write_limit and a message, and a little bookkeeping (the 8 MB offered must not show)
        assert grown < 65_536 + 4 * 4096


def test_closed_connections_are_skipped_and_not_returned(hub_factory):
    hub = hub_factory(compression=None)
    with blockws.connect(hub.url) as alive, blockws.connect(hub.url) as leaving:
        conns = hub.wait_for(2)
        leaving.close()
        gone = next(ws for ws in conns if ws.remote_address == leaving.local_address)
        deadline = time.monotonic() + 10
        while gone.state is not blockws.State.CLOSED and time.monotonic() < deadline:
            time.sleep(0.01)
        assert blockws.broadcast(conns, "hi") == []
        assert alive.recv() == "hi"


def test_a_connection_with_an_open_message_is_returned_untouched(hub_factory):
    hub = hub_factory(compression=None)
    with blockws.connect(hub.url) as ws:
        (server_side,) = hub.wait_for(1)
        server_side.send("first half, ", fin=False)  # this thread's open message
        other: list[Any] = []
        thread = threading.Thread(target=lambda: other.append(blockws.broadcast([server_side], "news")))
        thread.start()
        thread.join(5)
        assert other == [[server_side]]  # another thread's message is open: not between its frames
        server_side.send("second half")
        assert ws.recv() == "first half, second half"
        assert blockws.broadcast([server_side], "news") == []
        assert ws.recv() == "news"


def test_compressed_once_for_connections_without_context_takeover(hub_factory):
    """Clients asking for server_no_context_takeover share one compressed frame;
    the websockets package and blockws inflate it alike."""
    hub = hub_factory()
    factory = ClientPerMessageDeflateFactory(server_no_context_takeover=True)
    with contextlib.ExitStack() as stack:
        peers = [stack.enter_context(ws_connect(hub.url, extensions=[factory], compression=None)) for _ in range(3)]
        ours = stack.enter_context(
            blockws.connect(hub.url, compression=blockws.PerMessageDeflate(server_no_context_takeover=True))
        )
        conns = hub.wait_for(4)
        messages = ["compress me " * 100, b"\x00" * 5000, "short"]
        for message in messages:
            assert blockws.broadcast(conns, message) == []
        for peer in peers:
            assert [peer.recv(timeout=5) for _ in messages] == messages
        assert [ours.recv() for _ in messages] == messages


def test_the_shared_frame_is_built_once():
    params = DeflateParams(server_no_context_takeover=True)
    plain = [Protocol(Side.SERVER) for _ in range(2)]
    compressed = [Protocol(Side.SERVER, deflate=params) for _ in range(2)]
    takeover = Protocol(Side.SERVER, deflate=DeflateParams())
    client = Protocol(Side.CLIENT)
    shared: dict[object, bytes] = {}
    payload = b"hello " * 100
    frames = [p.encode_shared(payload, False, shared) for p in [*plain, *compressed, takeover, client]]
    assert frames[0] is frames[1]
    assert frames[2] is frames[3] and frames[2] != frames[0]
    assert frames[4] is not frames[2] and frames[4] == frames[2]  # same bytes, its own (history kept)
    assert frames[5][1] & 0x80  # masked: the client's own
    assert len(shared) == 2
