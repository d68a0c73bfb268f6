"""Running a server in production: max_connections_per_ip and Server.stats().

Real sockets on the loopback interface; a client socket bound to
127.0.0.2 is "another client address" (all of 127/8 is loopback on Linux).
"""

from __future__ import annotations

import base64
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import blockws
from blockws import Response

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="127.0.0.2 is loopback on Linux")


def connect_from(source: str, url: str, port: int, **options: Any) -> blockws.WebSocket:
    """``blockws.connect(url)`` from a socket bound to the address ``source``."""
    sock = socket.socket()
    try:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        return blockws.connect(url, sock=sock, open_timeout=10, **options)
    except BaseException:
        sock.close()
        raise


def raw_answer(port: int, source: str = "127.0.0.1") -> tuple[bytes, bytes]:
    """An upgrade request from a plain socket: (the response head, what followed until EOF)."""
    with socket.socket() as s:
        s.settimeout(10)
        s.bind((source, 0))
        s.connect(("127.0.0.1", port))
        s.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:  # EOF: the server closed the TCP connection
                break
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out waiting"
        time.sleep(0.01)


# -- max_connections_per_ip -------------------------------------------------------------


@linux_only
def test_per_ip_limit_answers_429_and_recovers(run_server):
    running = run_server(max_connections_per_ip=2)
    server = running.server
    a = connect_from("127.0.0.1", running.url, running.port)
    b = connect_from("127.0.0.1", running.url, running.port)
    try:
        with pytest.raises(blockws.InvalidStatus) as info:
            connect_from("127.0.0.1", running.url, running.port)
        assert info.value.status == 429
        retry = info.value.response.headers["Retry-After"]
        assert retry.isdigit() and int(retry) >= 1
        assert b"max_connections_per_ip=2" in info.value.body
        # The TCP connection is closed after the answer.
        head, rest = raw_answer(running.port)
        assert head.startswith(b"HTTP/1.1 429 ") and b"\r\nRetry-After: " in head
        assert rest.startswith(b"too many connections from 127.0.0.1")
        # Another address is unaffected, and its own connections count apart.
        with connect_from("127.0.0.2", running.url, running.port, timeout=5) as c:
            c.sendall("other")
            assert c.recv() == "other"
            with connect_from("127.0.0.2", running.url, running.port, timeout=5) as d:
                d.sendall("other too")
                assert d.recv() == "other too"
        # One of the two ends: the address may connect again.
        a.close()
        wait_for(lambda: server.stats()["connections"] == 1)
        with connect_from("127.0.0.1", running.url, running.port, timeout=5) as e:
            e.sendall("back")
            assert e.recv() == "back"
    finally:
        a.close()
        b.close()


@linux_only
def test_per_ip_limit_counts_open_connections_not_handshakes(run_server):
    running = run_server(max_connections_per_ip=1)
    # A handshake under way (a request cut in the middle) holds no place.
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as pending:
        pending.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        with connect_from("127.0.0.1", running.url, running.port, timeout=5) as ws:
            ws.sendall("open")
            assert ws.recv() == "open"
            # Now the one open connection does: a handshake that started
            # before it opened still gets the 429 when it completes.
            pending.sendall(
                b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = pending.recv(4096)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 429 "), answer
    # Counted by the handshake's thread once the answer is out: maybe just after we read it.
    wait_for(lambda: running.server.stats()["refused"] == 1)


@pytest.mark.parametrize("limit", [0, -1, 1.5, True, "2"])
def test_per_ip_limit_must_be_a_positive_int(limit):
    with pytest.raises(ValueError, match="max_connections_per_ip"):
        blockws.serve(lambda ws: None, "127.0.0.1", 0, max_connections_per_ip=limit)


# -- stats() ---------------------------------------------------------------------------


def test_stats_after_a_known_exchange(run_server):
    def handler(ws: blockws.WebSocket) -> None:
        for message in ws:
            if message == "bye":
                ws.close(4001, "asked")
                return
            ws.sendall(message)
            ws.sendall(message)

    def process_request(request: blockws.Request) -> Response | None:
        if request.path == "/no":
            return Response(403, body=b"no\n")
        return None

    running = run_server(handler, process_request=process_request, origins=["https://ok", None])
    server = running.server
    empty = server.stats()
    assert empty == {
        "connections": 0,
        "accepted": 0,
        "refused": 0,
        "messages_received": 0,
        "messages_sent": 0,
        "bytes_received": 0,
        "bytes_sent": 0,
        "closed": {},
    }
    with blockws.connect(running.url, timeout=5) as ws:
        ws.sendall("héllo")  # 6 bytes of UTF-8
        ws.sendall(b"\x00" * 1000)  # compressed on the wire: counted as the application sees it
        assert ws.recv() == "héllo" and ws.recv() == "héllo"
        assert ws.recv() == b"\x00" * 1000 and ws.recv() == b"\x00" * 1000
        now = server.stats()
        assert now["connections"] == 1 and now["accepted"] == 1
        assert now["messages_received"] == 2 and now["bytes_received"] == 1006
        assert now["messages_sent"] == 4 and now["bytes_sent"] == 2012
    with blockws.connect(running.url, timeout=5) as ws:
        ws.sendall("bye")
        assert ws.recv() is None and ws.close_code == 4001
    for refusal in ({"path": "/no"}, {"origin": "https://evil"}):
        url = running.url + refusal.get("path", "/")[1:]
        with pytest.raises(blockws.InvalidStatus):
            blockws.connect(url, origin=refusal.get("origin"), open_timeout=5)
    with socket.create_connection(("127.0.0.1", running.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # not an upgrade: 426
        assert s.recv(4096).startswith(b"HTTP/1.1 426 ")
    # A lost connection: the client vanishes without a Close.
    lost = blockws.connect(running.url, timeout=5)
    lost.abort()
    wait_for(lambda: server.stats()["connections"] == 0 and sum(server.stats()["closed"].values()) == 3)
    stats = server.stats()
    assert stats["accepted"] == 3 and stats["refused"] == 3
    assert stats["messages_received"] == 3 and stats["bytes_received"] == 1009
    assert stats["messages_sent"] == 4 and stats["bytes_sent"] == 2012
    assert stats["closed"] == {1000: 1, 4001: 1, 1006: 1}
    # A snapshot: the server doesn't change it afterwards, nor do changes to it.
    stats["closed"][1000] = 99
    assert server.stats()["closed"][1000] == 1


@pytest.mark.parametrize("compression", [None, "deflate"])
def test_stats_count_a_message_sent_before_its_answer_can_arrive(run_server, compression):
    """A message is counted before its bytes can reach the peer: once the echo is
    back, stats() has it. (On free-threaded CPython stats() runs while the
    handler's thread is still in send(): counted after the write, about 1 in 200
    came late, in the C fast path and the Python one alike.)"""

    def echo(ws):
        for message in ws:
            ws.send(message)

    server = run_server(echo, compression=compression).server
    with blockws.connect(f"ws://127.0.0.1:{server.port}", compression=compression, timeout=5) as ws:
        late = 0
        for i in range(1, 3001):
            ws.send(b"x")
            assert ws.recv() == b"x"
            late += server.stats()["messages_sent"] != i
    assert late == 0


def test_stats_count_auth_challenges_and_the_per_ip_refusal(run_server):
    running = run_server(auth=blockws.BasicAuth("realm", {"u": "p"}), max_connections_per_ip=1)
    credentials = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    with pytest.raises(blockws.InvalidStatus) as info:
        blockws.connect(running.url, open_timeout=5)
    assert info.value.status == 401  # the challenge: refused
    with blockws.connect(running.url, headers=credentials, timeout=5) as ws:
        with pytest.raises(blockws.InvalidStatus) as info:
            blockws.connect(running.url, headers=credentials, open_timeout=5)
        assert info.value.status == 429
        ws.sendall("x")
        assert ws.recv() == "x"
    stats = running.server.stats()
    assert stats["refused"] == 2 and stats["accepted"] == 1


def test_stats_count_recv_into_fragments_and_broadcast(run_server):
    done = threading.Event()

    def handler(ws: blockws.WebSocket) -> None:
        buf = bytearray(100)
        assert ws.recv_into(buf) == 5
        pieces = list(ws.recv_fragments())
        assert "".join(pieces) == "ab"  # type: ignore[arg-type]
        assert blockws.broadcast([ws], b"123") == []
        ws.send("part", fin=False)
        ws.send("s")
        done.set()
        for _ in ws:
            pass

    running = run_server(handler)
    with blockws.connect(running.url, timeout=5) as ws:
        ws.sendall(b"12345")
        ws.send("a", fin=False)
        ws.send("b")
        assert ws.recv() == b"123" and ws.recv() == "parts"
        assert done.wait(5)
        stats = running.server.stats()
    assert stats["messages_received"] == 2 and stats["bytes_received"] == 7
    assert stats["messages_sent"] == 2 and stats["bytes_sent"] == 8


def test_stats_from_another_thread_under_load(run_server):
    running = run_server()
    server = running.server
    clients, rounds = 4, 300
    seen: list[dict[str, Any]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def watch() -> None:
        try:
            while not stop.is_set():
                seen.append(server.stats())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def talk() -> None:
        try:
            with blockws.connect(running.url, timeout=10) as ws:
                for i in range(rounds):
                    ws.sendall(b"%04d" % i)
                    assert ws.recv() == b"%04d" % i
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    talkers = [threading.Thread(target=talk) for _ in range(clients)]
    for t in talkers:
        t.start()
    for t in talkers:
        t.join(60)
    wait_for(lambda: server.stats()["connections"] == 0)
    stop.set()
    watcher.join(10)
    assert not errors, errors
    assert len(seen) > 10
    # Every snapshot is consistent: counts only grow, and never past the end.
    keys = ["accepted", "messages_received", "messages_sent", "bytes_received", "bytes_sent"]
    for before, after in zip(seen, seen[1:]):
        for key in keys:
            assert before[key] <= after[key], (key, before, after)
        assert 0 <= after["connections"] <= clients
    final = server.stats()
    total = clients * rounds
    assert final["accepted"] == clients and final["closed"] == {1000: clients}
    assert final["messages_received"] == final["messages_sent"] == total
    assert final["bytes_received"] == final["bytes_sent"] == 4 * total


def test_stats_count_messages_read_into_place_and_those_not_taken_yet(run_server):
    # A large binary message recv_into() reads from the kernel into place
    # (no event is made for it) counts once; messages still queued when the
    # server's stats are read count too: received is what arrived.
    size = 300_000
    took = threading.Event()
    release = threading.Event()

    def handler(ws: blockws.WebSocket) -> None:
        buf = bytearray(size)
        assert ws.recv_into(buf) == size and buf == b"\x07" * size
        took.set()
        assert release.wait(10)
        for _ in ws:
            pass

    running = run_server(handler, compression=None)
    with blockws.connect(running.url, timeout=5, compression=None) as ws:
        ws.sendall(b"\x07" * size)
        assert took.wait(5)
        ws.sendall("éé")  # 4 bytes of UTF-8
        ws.sendall(b"xyz")
        wait_for(lambda: running.server.stats()["messages_received"] == 3)
        stats = running.server.stats()
        assert stats["bytes_received"] == size + 7
        release.set()
    wait_for(lambda: running.server.stats()["connections"] == 0)
    stats = running.server.stats()
    assert stats["messages_received"] == 3 and stats["bytes_received"] == size + 7


def test_queued_counts_survive_put_back_and_drop() -> None:
    # The protocol's counts of what is queued (held(), pending()) are now
    # differences of counts that only grow: put_back() and drop_events()
    # keep them right, and what came in stays counted.
    from blockws.protocol import Protocol, Side

    client = Protocol(Side.CLIENT)
    server = Protocol(Side.SERVER)
    server.receive_data(client.encode_message(b"abc", False) + client.encode_message("hé".encode(), True))
    assert (server.queued, server.ends) == (5, 2)
    event = server.next_event()
    assert (server.queued, server.ends) == (2, 1)
    server.put_back(event)  # type: ignore[arg-type]
    assert (server.queued, server.ends) == (5, 2)
    server.drop_events()
    assert (server.queued, server.ends) == (0, 0)
    assert server.received() == (2, 6)
    server.receive_data(client.encode_control(0x8, b"\x03\xe8"))
    assert (server.queued, server.ends) == (1, 1)  # the Close: held, not data
    assert server.received() == (2, 6)
