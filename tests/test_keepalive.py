"""KeepAlive: one thread keeps many connections alive and detects dead peers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

import blockws
from blockws import KeepAlive

from .relay import Relay


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
    assert elapsed < ka.interval + ka.timeout + 0.5
    assert info.value.code == 1011
    assert ws.close_code == 1011
    assert "keepalive" in (ws.close_reason or "")
    ws.close()


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


def test_one_thread_for_many_connections(echo_server):
    keepalive = KeepAlive(interval=0.2, timeout=1.0)
    before = threading.active_count()
    conns = [blockws.connect(echo_server.url, keepalive=keepalive, timeout=5) for _ in range(100)]
    try:
        # echo_server runs a handler thread per connection; the clients add one thread in all.
        client_threads = [t for t in threading.enumerate() if t.name == "blockws keepalive"]
        assert len(client_threads) == 1
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
    assert threading.active_count() <= before + 100  # handler threads still finishing


def test_keepalive_true_uses_the_shared_instance(echo_server):
    with blockws.connect(echo_server.url, keepalive=True) as ws:
        assert ws._keepalive_hook is not None
        assert KeepAlive.shared().thread is not None
    KeepAlive.shared().close()


def test_tcp_keepalive_option(echo_server):
    import socket

    keepalive = KeepAlive(interval=5, timeout=5, tcp_keepalive=(7, 3, 2))
    try:
        with blockws.connect(echo_server.url, keepalive=keepalive) as ws:
            sock = ws._sock
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
            if hasattr(socket, "TCP_KEEPIDLE"):
                assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
    finally:
        keepalive.close()


def test_bad_arguments():
    with pytest.raises(ValueError):
        KeepAlive(interval=0)
    with pytest.raises(TypeError):
        blockws.keepalive.attach(None, "yes")  # type: ignore[arg-type]
