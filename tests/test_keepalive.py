"""KeepAlive: one thread keeps many connections alive and detects dead peers."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import blockws
from blockws import KeepAlive
from blockws.frames import FrameHeader, Opcode

from . import helpers
from .helpers import LateReader, at_scale, raise_fd_limit
from .relay import Relay


def thread_cpu_seconds(thread: threading.Thread) -> float:
    """CPU time (user + system) used so far by another thread of this process."""
    with open(f"/proc/self/task/{thread.native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class SlowRelay:
    """Forwards one connection, client to server at about ``rate`` bytes/s
    (server to client at full speed): a peer that reads slowly but lives."""

    def __init__(self, target_port: int, rate: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.rate = rate
        self.listener = socket.socket()
        # Inherited by the accepted socket: a small window, so the client's
        # writes wait on this relay's pace rather than on kernel buffers.
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(1)
        self.port = self.listener.getsockname()[1]
        self.socks: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._run, name="slow relay", daemon=True)]
        self.threads[0].start()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def _run(self) -> None:
        try:
            client, _ = self.listener.accept()
        except OSError:
            return
        server = socket.create_connection(self.target)
        self.socks += [client, server]
        back = threading.Thread(target=self._pipe, args=(server, client, None), name="slow relay back", daemon=True)
        self.threads.append(back)
        back.start()
        self._pipe(client, server, self.rate)

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, rate: int | None) -> None:
        piece = 4096
        try:
            while True:
                data = src.recv(piece)
                if not data:
                    break
                dst.sendall(data)
                if rate is not None:
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for sock in self.socks:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in self.threads:
            thread.join(5)
        for sock in self.socks:
            sock.close()


@pytest.fixture
def ka() -> Iterator[KeepAlive]:
    keepalive = KeepAlive(interval=0.3, timeout=0.4)
    yield keepalive
    keepalive.close()


@pytest.fixture
def relay_to(echo_server: Any) -> Iterator[Any]:
    relays: list[Relay] = []

    def make(**options: Any) -> Relay:
        relay = Relay(echo_server.port, **options)
        relays.append(relay)
        return relay

    yield make
    for relay in relays:
        relay.close()


@pytest.mark.slow
def test_blackholed_peer_fails_blocked_recv_with_1011(ka, relay_to):
    relay = relay_to()
    ws = blockws.connect(relay.url, keepalive=ka)
    ws.sendall("alive?")
    assert ws.recv() == "alive?"
    relay.blackhole()
    start = time.monotonic()
    with pytest.raises(blockws.ConnectionClosedError) as info:
        ws.recv()  # blocking, no timeout: only the keepalive can wake it
    elapsed = time.monotonic() - start
    assert elapsed < ka.interval + ka.timeout + 3  # a margin for a loaded machine: without the keepalive, never
    assert info.value.code == 1011
    assert ws.close_code == 1011
    assert "keepalive" in (ws.close_reason or "")
    ws.close()


@pytest.mark.slow
def test_blackholed_peer_wakes_blocked_send(ka, run_server):
    reading = threading.Event()

    def handler(ws: blockws.WebSocket) -> None:
        reading.wait(5)

    server = run_server(handler, max_size=None)
    relay = Relay(server.port)
    try:
        ws = blockws.connect(relay.url, keepalive=ka)
        relay.blackhole()
        with pytest.raises(blockws.ConnectionClosedError):
            for _ in range(10_000):
                ws.sendall(b"x" * 100_000)  # blocks once the buffers are full
        assert ws.close_code == 1011
        ws.close()
    finally:
        reading.set()
        relay.close()


@pytest.mark.slow
def test_idle_connection_survives_a_proxy_idle_timeout(relay_to):
    relay = relay_to(idle_drop=1.0)
    keepalive = KeepAlive(interval=0.3, timeout=1.0)
    try:
        with blockws.connect(relay.url, keepalive=keepalive, timeout=5) as ws:
            time.sleep(2.5)
            ws.sendall("still here")
            assert ws.recv() == "still here"
            assert ws.latency is not None and ws.latency < 0.5
        assert relay.dropped == 0
        # Without keepalive, the same relay drops the idle connection.
        with blockws.connect(relay.url, timeout=5) as ws:
            time.sleep(1.5)
            with pytest.raises(blockws.ConnectionClosedError):
                ws.sendall("gone")
                ws.recv()
    finally:
        keepalive.close()


@pytest.mark.slow
def test_pings_answered_while_application_is_busy(run_server):
    keepalive = KeepAlive(interval=10, timeout=10)
    got: list[Any] = []

    def handler(ws: blockws.WebSocket) -> None:
        time.sleep(1.0)  # busy: not in recv()
        got.extend(ws)

    server = run_server(handler, keepalive=keepalive)
    try:
        with blockws.connect(server.url, timeout=5) as ws:
            messages = [f"m{i}" * i for i in range(50)]
            for i, m in enumerate(messages):
                ws.sendall(m)
                if i % 10 == 0:
                    assert ws.ping() < 0.5  # answered by the keepalive thread
            ws.sendall(b"\x00" * 70_000)
            time.sleep(1.2)
        server.stop()
        assert got == [*messages, b"\x00" * 70_000]  # in order, byte-exact
    finally:
        keepalive.close()


@pytest.mark.slow
def test_one_thread_for_many_connections(echo_server):
    keepalive = KeepAlive(interval=0.2, timeout=1.0)
    before = threading.active_count()
    conns = [blockws.connect(echo_server.url, keepalive=keepalive, timeout=5) for _ in range(100)]
    try:
        # echo_server runs a handler thread per connection (and the shared
        # keepalive's); the clients add one thread in all.
        client_threads = [t for t in threading.enumerate() if t.name == "blockws keepalive"]
        assert keepalive.thread in client_threads and len(client_threads) == 2
        time.sleep(0.6)
        for ws in conns:
            ws.sendall("x")
            assert ws.recv() == "x"
            assert ws.latency is not None
    finally:
        for ws in conns:
            ws.close()
    # The thread ends when nothing is registered, and comes back on demand.
    deadline = time.monotonic() + 2
    while keepalive.thread is not None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert keepalive.thread is None
    with blockws.connect(echo_server.url, keepalive=keepalive) as ws:
        assert keepalive.thread is not None
    keepalive.close()
    # The server's 100 handler threads, idle now (kept for its next connections), and its keepalive's;
    # plus one more handler thread if the last connection came before the others' threads were idle
    # again (a handler's thread goes back to the pool after its connection's closing handshake).
    assert threading.active_count() <= before + 100 + 1 + 1, [t.name for t in threading.enumerate()]


def test_keepalive_true_uses_the_shared_instance(echo_server):
    with blockws.connect(echo_server.url, keepalive=True):
        assert KeepAlive.shared().thread is not None
    KeepAlive.shared().close()


def test_tcp_keepalive_option(echo_server):
    import socket

    keepalive = KeepAlive(interval=5, timeout=5, tcp_keepalive=(7, 3, 2))
    try:
        with blockws.connect(echo_server.url, keepalive=keepalive) as ws:
            # A duplicate descriptor: the options belong to the socket, not to the descriptor.
            sock = socket.socket(fileno=os.dup(ws.fileno()))
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_KEEPIDLE"):
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
            sock.close()
    finally:
        keepalive.close()


def test_bad_arguments():
    with pytest.raises(ValueError):
        KeepAlive(interval=0)
    with pytest.raises(TypeError):
        blockws.keepalive.attach(None, "yes")  # type: ignore[arg-type]


# -- dead, lost and slow peers ---------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["fin", "rst"])
def test_peer_lost_while_application_is_busy_no_spin_and_1006(run_server, how):
    """After EOF or a reset the socket stays readable for ever: the keepalive
    thread must stop watching it (not spin), and the loss is 1006, not a
    keepalive timeout."""
    keepalive = KeepAlive(interval=0.5, timeout=0.5)

    def handler(ws: blockws.WebSocket) -> None:
        ws.recv()
        if how == "fin":
            ws.abort()  # TCP goes away without a Close
        else:
            relay.reset()  # RST on both sides, as a peer's kernel does

    server = run_server(handler)
    relay = Relay(server.port)
    try:
        ws = blockws.connect(relay.url, keepalive=keepalive, timeout=5)
        ws.sendall("go")
        start = time.monotonic()
        time.sleep(0.2)  # busy, not in recv(): the keepalive thread reads the end
        thread = keepalive.thread
        if how == "rst":
            # A reset is a read error: the connection is closed at once and
            # leaves the keepalive, whose thread ends with its last connection.
            assert thread is None
        else:
            assert thread is not None
            used = thread_cpu_seconds(thread)
            time.sleep(0.6)
            used = thread_cpu_seconds(thread) - used
            assert used < 0.15, f"the keepalive thread burnt {used:.2f} s of CPU in 0.6 s"
        # Past interval + timeout: still a lost connection, not a keepalive failure.
        time.sleep(max(0.0, start + 1.5 - time.monotonic()))
        with pytest.raises(blockws.ConnectionClosedError) as info:
            ws.recv()
        assert info.value.code == 1006
        assert ws.close_code == 1006
        assert "keepalive" not in (ws.close_reason or "")
        ws.close()
    finally:
        keepalive.close()
        relay.close()


@pytest.mark.slow
def test_long_send_to_a_slow_reader_is_not_a_dead_peer(run_server):
    """A blocking sendall() holds the connection, so no ping can go out; the
    peer reading (write progress) is the sign of life, not a 1011."""
    server = run_server(max_size=None)
    relay = SlowRelay(server.port, rate=400_000)
    keepalive = KeepAlive(interval=0.2, timeout=0.5)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.connect(("127.0.0.1", relay.port))
        ws = blockws.connect(relay.url, sock=sock, keepalive=keepalive, max_size=None, compression=None)
        data = os.urandom(700_000)
        start = time.monotonic()
        ws.sendall(data)
        elapsed = time.monotonic() - start
        # Otherwise the kernel took it all and this test proves nothing.
        assert elapsed > 2 * (keepalive.interval + keepalive.timeout)
        ws.settimeout(10)
        assert ws.recv() == data
        assert ws.close_code is None
        ws.close()
    finally:
        keepalive.close()
        relay.close()


@pytest.mark.slow
def test_unread_backlog_is_not_a_dead_peer(run_server):
    """With 1 MiB unread the keepalive thread stops reading (backpressure);
    the pong waits behind the backlog, and that is no reason to fail."""
    messages = [bytes([i]) * 100_000 for i in range(30)]

    def handler(ws: blockws.WebSocket) -> None:
        for message in messages:
            ws.sendall(message)
        ws.recv()

    server = run_server(handler)
    keepalive = KeepAlive(interval=0.2, timeout=0.3)
    try:
        ws = blockws.connect(server.url, keepalive=keepalive, timeout=5, compression=None)
        time.sleep(1.5)  # busy for five times interval + timeout
        assert ws.pending() >= 1 << 20  # the keepalive read up to its limit
        assert [ws.recv() for _ in messages] == messages
        assert ws.close_code is None
        ws.close()
    finally:
        keepalive.close()


def test_register_a_closed_connection_leaves_nothing_behind(echo_server):
    keepalive = KeepAlive(interval=30, timeout=30)
    try:
        ws = blockws.connect(echo_server.url, timeout=5)
        ws.close()
        # As if it closed between register()'s steps: its on_close runs at once.
        keepalive.register(ws)
        deadline = time.monotonic() + 2
        while keepalive.thread is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert keepalive.thread is None, "a closed connection is still kept alive"
        assert "connections=0" in repr(keepalive)
    finally:
        keepalive.close()


def test_ping_while_a_frame_tail_is_unsent(run_server):
    """The keepalive's ping goes after the unsent tail of a frame, never inside
    it: the peer parses everything cleanly."""
    handler = LateReader()
    reading, received = handler.reading, handler.received

    server = run_server(handler, max_size=None, keepalive=None)  # a keepalive would read for it
    keepalive = KeepAlive(interval=0.1, timeout=10)
    try:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        ws = blockws.connect(server.url, sock=sock, keepalive=keepalive, timeout=0.2, compression=None)
        pings_behind_a_tail: list[int] = []

        def trace(direction: str, header: FrameHeader, preview: bytes) -> None:
            if direction == ">" and header.opcode == Opcode.PING and ws.buffered_amount:
                pings_behind_a_tail.append(ws.buffered_amount)

        ws.trace = trace
        data = os.urandom(8_000_000)  # more than the kernels hold: the keepalive flushes what they take
        sent = ws.send(data, fin=False)  # the peer does not read: a frame's tail stays here
        assert 0 < sent < len(data)
        while True:  # until the kernels are full: the keepalive can't write the tail either
            try:
                sent += ws.send(data[sent:], fin=False)
            except TimeoutError:
                break
        assert ws.buffered_amount > 0
        deadline = time.monotonic() + 5
        while not pings_behind_a_tail and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pings_behind_a_tail, "the keepalive should have pinged behind the tail"
        reading.set()
        ws.settimeout(10)
        ws.sendall(data[sent:])
        deadline = time.monotonic() + 5
        while ws.latency is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ws.latency is not None  # the peer read our ping and answered it
        ws.close()
        assert ws.close_code == 1000  # no protocol error on the way
    finally:
        keepalive.close()
    server.stop()
    assert received == [data]


def test_close_ends_the_thread_and_refuses_new_connections(echo_server):
    keepalive = KeepAlive(interval=0.2, timeout=1.0)
    ws = blockws.connect(echo_server.url, keepalive=keepalive, timeout=5)
    thread = keepalive.thread
    assert thread is not None and thread.is_alive()
    keepalive.close()
    assert not thread.is_alive()
    assert keepalive.thread is None
    # The connection stays open, only without pings.
    ws.sendall("still open")
    assert ws.recv() == "still open"
    with pytest.raises(RuntimeError, match="closed"):
        keepalive.register(ws)
    with pytest.raises(RuntimeError, match="closed"):
        blockws.connect(echo_server.url, keepalive=keepalive, timeout=5)
    keepalive.close()  # idempotent
    ws.close()


# -- scale: one thread whatever the number of connections ----------------------------

_ECHO_PEER = """
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(ws):
    async for message in ws:
        await ws.send(message)

async def main():
    async with serve(echo, "127.0.0.1", 0, ping_interval=None, compression=None, backlog=1024) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

asyncio.run(main())
"""




@pytest.mark.slow
@pytest.mark.large
def test_many_client_connections_one_thread():
    """1,000 kept-alive client connections (100 without --large) add exactly
    one thread to the process (the server is the websockets package, in
    another process)."""
    count = at_scale(1000)
    raise_fd_limit(2 * count + 200)
    peer = subprocess.Popen(
        [sys.executable, "-c", _ECHO_PEER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    keepalive = KeepAlive(interval=0.5, timeout=10)
    conns: list[blockws.WebSocket] = []
    try:
        assert peer.stdout is not None
        url = f"ws://127.0.0.1:{int(peer.stdout.readline())}/"
        before = threading.active_count()
        for _ in range(count):
            conns.append(blockws.connect(url, keepalive=keepalive, compression=None, connect_gate=None, timeout=10))
        assert threading.active_count() - before == 1
        # Every connection gets pinged by that one thread, and answered.
        deadline = time.monotonic() + 10
        while any(ws.latency is None for ws in conns) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert all(ws.latency is not None for ws in conns)
        for ws in conns[:: count // 10]:
            ws.sendall("alive")
            assert ws.recv() == "alive"
        assert threading.active_count() - before == 1
    finally:
        for ws in conns:
            ws.close()
        keepalive.close()
        assert peer.stdin is not None and peer.stdout is not None
        peer.stdin.close()
        peer.wait(10)
        peer.stdout.close()


@pytest.mark.slow
def test_server_connections_threads_are_handlers_plus_one(run_server):
    """serve(keepalive=ka): a handler thread per connection and one keepalive
    thread for all of them, nothing else."""
    count = 200
    raise_fd_limit(2 * count + 200)
    keepalive = KeepAlive(interval=0.3, timeout=10)
    server = run_server(keepalive=keepalive)
    before = threading.active_count()
    conns: list[blockws.WebSocket] = []
    try:
        for _ in range(count):
            conns.append(
                blockws.connect(server.url, compression=None, connect_gate=None, timeout=10, keepalive=None)
            )
        for ws in conns:  # each handler is running once it has echoed
            ws.sendall("x")
            assert ws.recv() == "x"
        assert threading.active_count() - before == count + 1
        assert [t.name for t in threading.enumerate()].count("blockws keepalive") == 1
        # The server pings each client; clients answer when they read.
        time.sleep(0.5)
        for ws in conns:
            ws.sendall("y")
            assert ws.recv() == "y"
        assert threading.active_count() - before == count + 1
    finally:
        for ws in conns:
            ws.close()
        keepalive.close()


@pytest.mark.slow
def test_pong_queued_while_a_sender_holds_the_connection_goes_out(run_server):
    """The server's keepalive thread reads our ping while the handler sends
    its echo: it queues the pong and can't take the send lock, so the sender
    must write it after letting go. It used to stay queued until the
    handler's next send, while the handler, back in recv(), waited for us:
    ping() timed out."""

    def echo(ws: blockws.WebSocket) -> None:
        for message in ws:
            ws.sendall(message)

    server = run_server(echo, compression=None)
    with blockws.connect(server.url, timeout=3, compression=None) as ws:
        for i in range(300):
            message = str(i).encode() * 50_000
            ws.sendall(message)
            ws.ping()
            assert ws.recv() == message


def test_notifying_a_busy_thread_never_blocks(echo_server):
    """Wake-ups pile up while the thread is busy (it drains them between
    passes): once its socketpair is full, notifying must not block. It used
    to, and the thread itself notifies, holding the lock, when a connection
    it failed unregisters: with a few hundred failing in one pass, it
    deadlocked with its own wake-up socket."""
    keepalive = KeepAlive(interval=30, timeout=30)
    try:
        with blockws.connect(echo_server.url, keepalive=keepalive, timeout=5):
            done = threading.Event()

            def notify() -> None:
                for _ in range(20_000):  # far more than a socketpair buffers
                    keepalive._notify()
                done.set()

            with keepalive._lock:  # the thread can't take requests (nor drain its wake-ups)
                threading.Thread(target=notify, daemon=True).start()
                assert done.wait(10), "notifying the keepalive thread blocked"
    finally:
        keepalive.close()


@pytest.mark.slow
def test_a_handler_in_recv_costs_the_keepalive_thread_nothing_per_message(run_server):
    """A server echoing on busy connections reads for itself: the keepalive
    thread used to be woken for every burst of messages, to find the
    handler reading and step aside (0.2 s of its CPU for these 10,000
    echoes, here a tick or two). Then, once the handler stops reading, the
    keepalive thread reads for it again: the client's ping is answered."""
    keepalive = KeepAlive(interval=10, timeout=10)
    stop_reading = threading.Event()

    def handler(ws: blockws.WebSocket) -> None:
        for message in ws:
            ws.send(message)
            if message == b"last":
                stop_reading.wait(10)  # busy: not in recv()
                break

    server = run_server(handler, keepalive=keepalive, compression=None)
    conns = [blockws.connect(server.url, keepalive=None, compression=None, timeout=5) for _ in range(10)]
    try:
        for ws in conns:  # every handler running, the keepalive thread started
            ws.send(b"x")
            assert ws.recv() == b"x"
        thread = keepalive.thread
        assert thread is not None
        used = thread_cpu_seconds(thread)

        def echo_many(ws: blockws.WebSocket) -> None:
            for _ in range(1000):
                ws.send(b"x" * 32)
                assert ws.recv() == b"x" * 32

        threads = [threading.Thread(target=echo_many, args=(ws,)) for ws in conns]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        used = thread_cpu_seconds(thread) - used
        if not helpers.FALLBACK_PATH:
            # The budget is the main path's: the Windows code path (select
            # for every wait) took 0.10 s once in CI, still half of the old
            # cost, but too close to it to tell the two apart.
            assert used < 0.06, f"the keepalive thread used {used:.2f} s of CPU for 10,000 echoes"
        for ws in conns:
            ws.send(b"last")
            assert ws.recv() == b"last"
            assert ws.ping() < 1.0  # the handler isn't reading: the keepalive thread answers
    finally:
        stop_reading.set()
        for ws in conns:
            ws.close()
        keepalive.close()


def test_a_server_keeps_its_keepalive_thread_between_connections(run_server):
    """Connections that come one at a time share one keepalive thread (it
    used to start and end with each); it ends when the server stops."""
    keepalive = KeepAlive()
    server = run_server(keepalive=keepalive)
    threads = set()
    for _ in range(5):
        with blockws.connect(server.url, keepalive=None) as ws:
            ws.send("x")
            assert ws.recv() == "x"
            threads.add(keepalive.thread)
        deadline = time.monotonic() + 1
        while server.server.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not server.server.connections
    assert len(threads) == 1 and None not in threads
    thread = threads.pop()
    time.sleep(0.1)
    assert keepalive.thread is thread and thread.is_alive()  # nothing registered, still there
    server.stop()
    thread.join(2)
    assert not thread.is_alive() and keepalive.thread is None


def test_a_connection_that_fails_in_the_keepalive_thread_fails_alone(run_server, caplog):
    """An exception while the keepalive thread serves one connection (here
    the application's trace callback) drops that connection (1011 on our
    side, as a keepalive timeout does) and is logged; the thread goes on serving the others. It used to end the
    thread: every other connection went without pings and pongs."""
    keepalive = KeepAlive(interval=10, timeout=10)
    release = threading.Event()

    def broken_trace(direction: str, header: FrameHeader, payload: bytes) -> None:
        if direction == "<":
            raise RuntimeError("a bug in a trace callback")

    served: dict[str, blockws.WebSocket] = {}

    def handler(ws: blockws.WebSocket) -> None:
        served[ws.request.path] = ws
        if ws.request.path == "/bad":
            ws.trace = broken_trace
        ws.send("ready")
        release.wait(10)  # busy: the keepalive thread reads for it

    server = run_server(handler, keepalive=keepalive)
    try:
        with blockws.connect(server.url + "bad", keepalive=None, timeout=5) as bad, blockws.connect(
            server.url + "good", keepalive=None, timeout=5
        ) as good:
            assert bad.recv() == "ready" and good.recv() == "ready"
            with caplog.at_level("ERROR", logger="blockws.keepalive"):
                bad.send("the keepalive thread reads this, and the trace raises")
                with pytest.raises(blockws.ConnectionClosedError):
                    bad.recv()  # dropped, as a keepalive failure drops a dead peer
            assert (served["/bad"].close_code, served["/bad"].close_reason) == (1011, "keepalive error")
            assert "keepalive: serving a connection failed" in caplog.text
            assert "a bug in a trace callback" in caplog.text
            assert keepalive.thread is not None and keepalive.thread.is_alive()
            assert good.ping() < 1.0  # answered by the keepalive thread, still serving
            release.set()  # the handlers return: their connections close now
    finally:
        release.set()
        keepalive.close()


# -- non-blocking mode: the application reads, its send() calls read for the keepalive --


def _nonblocking_send(ws: blockws.WebSocket, message: str) -> None:
    try:
        ws.sendall(message)
    except BlockingIOError:
        pass  # the buffers are full: not this test's business


def test_a_nonblocking_sender_keeps_a_live_peer():
    """A program that only sends, in non-blocking mode (the README's
    partial-send loop), never reads: the pongs used to stay in the kernel
    and a healthy peer was failed with 1011 after interval + timeout."""
    received: list[str] = []

    def reader(ws: blockws.WebSocket) -> None:
        received.extend(ws)

    keepalive = KeepAlive(interval=0.2, timeout=0.4)
    server = blockws.serve(reader, "127.0.0.1", 0, keepalive=None)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        ws = blockws.connect(f"ws://127.0.0.1:{server.port}/", keepalive=keepalive)
        ws.setblocking(False)
        for i in range(40):  # 2 s: five times interval + timeout
            _nonblocking_send(ws, f"m{i}")
            time.sleep(0.05)
        assert ws.state is blockws.State.OPEN and ws.close_code is None
        assert ws.latency is not None  # the pongs were read, by send()
        ws.setblocking(True)
        ws.close()
    finally:
        keepalive.close()
        server.shutdown()
        thread.join(10)


def test_an_idle_nonblocking_connection_keeps_a_live_peer(echo_server):
    """In non-blocking mode nothing reads until the application does: the
    pong waits in the kernel, and the keepalive's clock doesn't run while
    bytes wait there for the application (a live peer was failed)."""
    keepalive = KeepAlive(interval=0.2, timeout=0.4)
    try:
        ws = blockws.connect(echo_server.url, keepalive=keepalive)
        ws.setblocking(False)
        time.sleep(1.5)
        assert ws.state is blockws.State.OPEN and ws.close_code is None
        ws.setblocking(True)
        ws.settimeout(5)
        ws.sendall("still here")
        assert ws.recv() == "still here"
        ws.close()
    finally:
        keepalive.close()


def test_a_nonblocking_sender_learns_of_the_peers_close(run_server):
    """The server closes with 1000: a blocking sender gets
    ConnectionClosedOK within the close grace; a non-blocking one kept
    sending until the peer gave up, then got ConnectionClosedError 1006."""

    def close_soon(ws: blockws.WebSocket) -> None:
        ws.recv()
        ws.close(1000, "bye")

    server = run_server(close_soon, keepalive=None, close_timeout=30)
    keepalive = KeepAlive(close_grace=0.2)
    try:
        ws = blockws.connect(server.url, keepalive=keepalive)
        ws.setblocking(False)
        end = time.monotonic() + 8
        with pytest.raises(blockws.ConnectionClosedOK):
            while time.monotonic() < end:
                _nonblocking_send(ws, "data")
                time.sleep(0.02)
        assert ws.close_code == 1000 and ws.close_reason == "bye"
        ws.close()
    finally:
        keepalive.close()


def test_a_select_loop_with_keepalive_loses_nothing(echo_server):
    """The documented select() loop, with pending() checked first, while
    send() also reads for the keepalive: every echo arrives, in order, and
    the live peer is never failed, through pauses longer than the timeout."""
    keepalive = KeepAlive(interval=0.2, timeout=0.4)
    try:
        ws = blockws.connect(echo_server.url, keepalive=keepalive)
        ws.setblocking(False)
        sent: list[str] = []
        received: list[str] = []
        for burst in range(3):
            for i in range(20):
                message = f"{burst}.{i}"
                ws.sendall(message)
                sent.append(message)
            end = time.monotonic() + 5
            while len(received) < len(sent) and time.monotonic() < end:
                if ws.pending() or select.select([ws], [], [], 0.5)[0]:
                    try:
                        message = ws.recv()
                    except BlockingIOError:
                        continue  # part of a message so far
                    assert isinstance(message, str)
                    received.append(message)
            time.sleep(1)  # idle: more than interval + timeout
        assert received == sent
        assert ws.state is blockws.State.OPEN
        ws.setblocking(True)
        ws.close()
    finally:
        keepalive.close()


@pytest.mark.slow
def test_a_connection_made_nonblocking_leaves_reading_to_select(echo_server):
    """timeout=0 from the start is non-blocking mode as setblocking(False)
    is: the keepalive doesn't read, so select() sees the echo arrive."""
    keepalive = KeepAlive(interval=5, timeout=5)
    try:
        ws = blockws.connect(echo_server.url, keepalive=keepalive, timeout=0)
        assert ws.gettimeout() == 0
        ws.send("echo me")
        time.sleep(0.5)  # the keepalive thread had its chance to read it (it mustn't)
        readable, _, _ = select.select([ws], [], [], 5)
        assert readable == [ws] and not ws.pending()
        assert ws.recv() == "echo me"
        ws.settimeout(5)
        ws.close()
    finally:
        keepalive.close()
