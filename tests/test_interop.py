"""Interoperability with an independent implementation: the websockets package."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed as WsConnectionClosed
from websockets.sync.client import connect as ws_connect
from websockets.sync.server import serve as ws_serve

import blockws


def random_messages(seed: int, count: int = 40) -> list[str | bytes]:
    rng = random.Random(seed)
    messages: list[str | bytes] = []
    for _ in range(count):
        size = rng.choice([0, 1, 125, 126, 65535, 65536, rng.randrange(70_001)])
        if rng.random() < 0.5:
            messages.append(rng.randbytes(size))
        else:
            messages.append("".join(rng.choice("aé€𝄞 ") for _ in range(size // 3)))
    return messages


@pytest.fixture
def websockets_echo() -> Iterator[Any]:
    """A websockets (sync) echo server; yields its URL and the close codes it saw."""
    seen: list[Any] = []

    def handler(ws: Any) -> None:
        try:
            for message in ws:
                if message == "close with 1001":
                    ws.close(1001, "going away")
                    return
                ws.send(message)
        except WsConnectionClosed:
            pass
        seen.append((ws.close_code, ws.close_reason))

    server = ws_serve(handler, "127.0.0.1", 0, compression=None, max_size=None)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    yield f"ws://127.0.0.1:{server.socket.getsockname()[1]}/", seen
    server.shutdown()
    thread.join(10)


def test_blockws_client_to_websockets_server(websockets_echo):
    url, seen = websockets_echo
    with blockws.connect(url, timeout=10, max_size=None) as ws:
        for message in random_messages(1):
            ws.sendall(message)
            assert ws.recv() == message
        assert ws.ping() < 1
        # A message sent in several partial sends arrives as one.
        ws.send(b"abc", fin=False)
        ws.send(b"def", fin=False)
        ws.sendall(b"ghi")
        assert ws.recv() == b"abcdefghi"
    assert ws.close_code == 1000
    for _ in range(100):
        if seen:
            break
        threading.Event().wait(0.05)
    assert seen == [(1000, "")]


def test_websockets_server_closing_with_1001(websockets_echo):
    url, _ = websockets_echo
    with blockws.connect(url, timeout=10) as ws:
        ws.sendall("close with 1001")
        assert ws.recv() is None
        assert (ws.close_code, ws.close_reason) == (1001, "going away")


def test_websockets_client_to_blockws_server(run_server):
    closes: list[Any] = []

    def handler(ws: blockws.WebSocket) -> None:
        for message in ws:
            ws.sendall(message)
        closes.append((ws.close_code, ws.close_reason))

    server = run_server(handler, max_size=None)
    with ws_connect(server.url, compression=None, max_size=None) as ws:
        for message in random_messages(2):
            ws.send(message)
            assert ws.recv(timeout=10) == message
        ws.ping().wait(5)
        ws.close(4001, "done")
    server.stop()
    assert closes == [(4001, "done")]


def test_blockws_server_closing_reaches_websockets_client(run_server):
    def handler(ws: blockws.WebSocket) -> None:
        ws.sendall("bye")
        ws.close(1001, "maintenance")

    server = run_server(handler)
    with ws_connect(server.url, compression=None) as ws:
        assert ws.recv(timeout=5) == "bye"
        with pytest.raises(WsConnectionClosed) as info:
            ws.recv(timeout=5)
        assert info.value.rcvd is not None
        assert (info.value.rcvd.code, info.value.rcvd.reason) == (1001, "maintenance")


def test_websockets_pings_answered_by_blockws_server(run_server):
    server = run_server()
    with ws_connect(server.url, compression=None) as ws:
        for _ in range(5):
            assert ws.ping().wait(5)
