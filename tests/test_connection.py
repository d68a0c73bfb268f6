"""The socket-like WebSocket over real 127.0.0.1 sockets."""

from __future__ import annotations

import gc
import os
import random
import select
import socket
import sys
import threading
import time
from typing import Any

import pytest

import blockws
from blockws import CloseCode, State
from blockws.frames import Opcode, encode_header
from blockws.handshake import accept_key

from .helpers import LateReader, RecvErrors, SilentPeer, send_in_parts


def small_buffer_client(url: str, port: int, **options: Any) -> blockws.WebSocket:
    """A client whose kernel send buffer is tiny, so backpressure comes fast."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return blockws.connect(url, sock=sock, **options)


def test_echo_text_and_binary(echo_server):
    with blockws.connect(echo_server.url, timeout=5) as ws:
        assert ws.state is State.OPEN
        for message in ["", "hé€𝄞", b"", b"\x00\xff" * 1000, "x" * 70000, os.urandom(200000)]:
            ws.sendall(message)
            assert ws.recv() == message
    assert ws.state is State.CLOSED
    assert ws.close_code == 1000


def test_trace_set_mid_connection_sees_every_frame_until_unset(echo_server):
    """The fast paths (a whole message read or written in one C call) step aside while traced."""
    seen: list[tuple[str, int, bytes]] = []
    with blockws.connect(echo_server.url) as ws:
        for _ in range(3):  # warm: the fast paths are taken
            ws.send(b"fast")
            assert ws.recv() == b"fast"
        ws.trace = lambda direction, header, payload: seen.append((direction, header.opcode, payload))
        ws.send("traced")
        assert ws.recv() == "traced"
        ws.send(b"\x00" * 200)
        assert ws.recv() == b"\x00" * 200
        ws.trace = None
        ws.send(b"quiet")
        assert ws.recv() == b"quiet"
    assert [(d, op) for d, op, _ in seen] == [(">", 1), ("<", 1), (">", 2), ("<", 2)]
    assert seen[0][2].startswith(b"traced") and seen[1][2].startswith(b"traced")


@pytest.mark.skipif(
    not getattr(sys, "_is_gil_enabled", lambda: True)(),
    reason="free-threaded CPython hands an object another thread released last to its owner thread "
    "to free: a collection then finds it unreachable without a cycle (DEBUG_SAVEALL keeps it)",
)
def test_a_finished_connection_leaves_no_reference_cycles(run_server):
    """Once closed, a connection's objects are freed by their reference counts,
    on both sides: none waits for the cyclic garbage collector (WebSocket._unwire)."""
    done = threading.Event()

    def echo_once(ws):
        for message in ws:
            ws.send(message)
        done.set()

    server = run_server(echo_once)
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for timeout in (None, 5.0, 0.0):
            done.clear()
            with blockws.connect(server.url) as ws:
                ws.send("x")
                if timeout == 0.0:
                    ws.settimeout(5.0)
                assert ws.recv() == "x"
                ws.settimeout(timeout)
            del ws
            assert done.wait(5)
        deadline = time.monotonic() + 5
        while server.server.stats()["connections"] and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # the handler threads' frames are gone
        gc.collect()
        cyclic = sorted({type(o).__qualname__ for o in gc.garbage if type(o).__module__.startswith("blockws")})
        assert cyclic == []
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


def test_send_returns_count_in_characters(echo_server):
    with blockws.connect(echo_server.url, timeout=5) as ws:
        assert ws.send("h€llo") == 5
        assert ws.recv() == "h€llo"
        assert ws.send(bytearray(b"abc")) == 3
        assert ws.recv() == b"abc"
        assert ws.send(memoryview(b"abcdef")[2:]) == 4
        assert ws.recv() == b"cdef"


def test_message_in_several_sends(echo_server):
    with blockws.connect(echo_server.url, timeout=5) as ws:
        assert ws.send("ab", fin=False) == 2
        assert ws.send("cd", fin=False) == 2
        ws.sendall("ef")
        assert ws.recv() == "abcdef"
        with pytest.raises(TypeError):
            ws.send("x", fin=False)
            ws.send(b"y")
        ws.sendall("z")
        assert ws.recv() == "xz"


def test_recv_none_at_peer_close_and_close_codes(run_server):
    def handler(ws: blockws.WebSocket) -> None:
        assert ws.recv() == "bye please"
        ws.close(4000, "as you wish")

    server = run_server(handler)
    with blockws.connect(server.url, timeout=5) as ws:
        ws.sendall("bye please")
        assert ws.recv() is None
        assert ws.recv() is None  # like b"" from socket.recv, again and again
        assert ws.close_code == 4000
        assert ws.close_reason == "as you wish"
        assert ws.state is State.CLOSING
        # Like a socket after a FIN: our half is still open until we close.
        assert ws.send("late, but allowed") == 17
    assert ws.state is State.CLOSED
    with pytest.raises(blockws.ConnectionClosedError) as info:
        ws.send("too late")
    assert info.value.code == 4000


def test_client_close_code_reaches_server(run_server):
    seen: dict[str, Any] = {}

    def handler(ws: blockws.WebSocket) -> None:
        seen["message"] = ws.recv()
        seen["code"], seen["reason"] = ws.close_code, ws.close_reason

    server = run_server(handler)
    ws = blockws.connect(server.url, timeout=5)
    ws.close(3001, "done here")
    ws.close()  # idempotent
    server.stop()
    assert seen == {"message": None, "code": 3001, "reason": "done here"}
    # Like websockets: only 1000/1001 both ways count as "OK".
    with pytest.raises(blockws.ConnectionClosedError) as info:
        ws.send("x")
    assert info.value.code == 3001


def test_half_close_keeps_receiving(run_server):
    answer = threading.Event()

    def handler(ws: blockws.WebSocket) -> None:
        received = list(ws)  # until the client's Close
        answer.wait(5)
        for message in received:
            ws.sendall(message.upper())
        ws.sendall("end")

    server = run_server(handler)
    ws = blockws.connect(server.url, timeout=5)
    ws.sendall("one")
    ws.sendall("two")
    ws.shutdown(socket.SHUT_WR)
    with pytest.raises(blockws.ConnectionClosedOK):
        ws.send("three")
    assert ws.state is State.CLOSING
    answer.set()
    assert [ws.recv(), ws.recv(), ws.recv(), ws.recv()] == ["ONE", "TWO", "end", None]
    assert ws.close_code == 1000
    ws.close()
    assert ws.state is State.CLOSED


def test_lost_connection_raises_and_reports_1006(run_server):
    def handler(ws: blockws.WebSocket) -> None:
        ws.recv()
        ws.abort()

    server = run_server(handler)
    with blockws.connect(server.url, timeout=5) as ws:
        ws.sendall("go")
        with pytest.raises(blockws.ConnectionClosedError):
            ws.recv()
        assert ws.close_code == 1006
        assert ws.state is State.CLOSED


def test_a_close_the_peer_never_answers_ends_with_1006():
    # RFC 6455 section 7.1.5: closed without the peer's Close is 1006, not
    # None (None means open), even though we sent a Close of our own.
    with SilentPeer() as peer:
        ws = blockws.connect(peer.url, timeout=5, close_timeout=0.2)
        ws.close(1000, "bye")
        assert ws.state is State.CLOSED
        assert ws.close_code == 1006 and type(ws.close_code) is int
        assert ws.close_reason == "no Close from the peer in time"
        with pytest.raises(blockws.ConnectionClosedError) as raised:
            ws.send("too late")
        assert raised.value.code == 1006


def test_a_close_the_peer_answers_by_hanging_up_ends_with_1006():
    with SilentPeer(eof=True) as peer:
        ws = blockws.connect(peer.url, timeout=5, close_timeout=5)
        ws.close()
        assert ws.close_code == 1006
        assert ws.close_reason == "the peer closed TCP without a Close"


def test_a_close_while_another_thread_receives_ends_with_1006():
    with SilentPeer() as peer:
        ws = blockws.connect(peer.url, timeout=5, close_timeout=0.2)
        errors: list[blockws.ConnectionClosedError] = []

        def reader() -> None:
            with pytest.raises(blockws.ConnectionClosedError) as raised:
                ws.recv()
            errors.append(raised.value)

        thread = threading.Thread(target=reader)
        thread.start()
        while not ws._inbox.busy:
            time.sleep(0.01)
        ws.close()  # the reader holds the reader lock: close() waits for it to see a Close
        thread.join(5)
        assert ws.close_code == 1006 and ws.close_reason == "no Close from the peer in time"
        assert [(e.code, e.reason) for e in errors] == [(1006, "no Close from the peer in time")]


def test_recv_timeout_keeps_partial_message(run_server):
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
        ws.setblocking(False)
        with pytest.raises(BlockingIOError):
            ws.recv()
        # The first half is buffered here, but recv() needs the kernel for
        # the rest: pending() doesn't send a select() loop round for nothing.
        assert ws.pending() == 0
        go.set()
        ws.settimeout(5)
        assert ws.recv() == "first half, second half"


@pytest.mark.slow
def test_partial_send_under_backpressure_loses_nothing(run_server):
    """send() with a timeout accepts what fits; every accepted byte arrives once, in order."""
    handler = LateReader()
    reading, received = handler.reading, handler.received

    server = run_server(handler, max_size=None, keepalive=None)  # a keepalive would read for it
    data = os.urandom(3_000_000)
    ws = small_buffer_client(server.url, server.port, timeout=0.2)

    def let_it_read(counts: list[int]) -> None:
        # Nothing accepted: the peer does not read. Let it read now.
        assert counts, "the first send should accept something"
        reading.set()

    counts = send_in_parts(ws, data, let_it_read)
    assert len(counts) > 1, "backpressure should have split the message"
    assert ws.buffered_amount <= ws.write_limit + 14
    ws.close()
    server.stop()
    assert received == [data]


def test_nonblocking_send_raises_blockingioerror_with_nothing_accepted(run_server):
    handler = LateReader()
    reading, received = handler.reading, handler.received

    server = run_server(handler, max_size=None, keepalive=None)  # a keepalive would read for it
    ws = small_buffer_client(server.url, server.port)
    ws.setblocking(False)
    chunk = b"y" * 50_000
    accepted = bytearray()
    with pytest.raises(BlockingIOError):
        for _ in range(10_000):
            n = ws.send(chunk)
            accepted += chunk[:n]
            if n < len(chunk):
                # finish the open message in the next sends
                rest = chunk[n:]
                while rest:
                    m = ws.send(rest)
                    accepted += rest[:m]
                    rest = rest[m:]
    # Whatever was accepted is a whole number of 50,000-byte messages plus
    # a prefix of an open one; finish it blocking, then let the peer read.
    reading.set()
    ws.setblocking(True)
    open_part = len(accepted) % len(chunk)
    if open_part:
        ws.sendall(chunk[open_part:])
        accepted += chunk[open_part:]
    ws.close()
    server.stop()
    assert b"".join(received) == bytes(accepted)
    assert all(len(m) == len(chunk) for m in received)


def test_partial_text_send_counts_characters(run_server):
    handler = LateReader()
    reading, received = handler.reading, handler.received

    server = run_server(handler, max_size=None, keepalive=None)  # a keepalive would read for it
    text = "€𝄞a" * 300_000
    # Uncompressed: compressed, this text fits at once and nothing is partial.
    ws = small_buffer_client(server.url, server.port, timeout=0.1, compression=None)
    sent = 0
    counts = []
    while sent < len(text):
        try:
            n = ws.send(text[sent:])
        except TimeoutError:
            reading.set()
            continue
        assert n > 0
        counts.append(n)
        sent += n
    assert len(counts) > 1, "backpressure should have split the message"
    reading.set()
    ws.close()
    server.stop()
    assert received == [text]


@pytest.mark.slow
def test_text_send_without_room_for_a_whole_character_raises():
    """1 to 3 bytes of room can't take a multibyte character: nothing is
    accepted, so send() raises like socket.send (it used to return 0) and a
    sendall() with a timeout gives up at the deadline (it used to spin)."""
    # A Unix socket pair: fixed buffers, so a peer that does not read takes
    # nothing more, unlike TCP whose window may still open a little.
    ours, theirs = socket.socketpair()
    reading = threading.Event()
    received: list[Any] = []

    def peer() -> None:
        # keepalive=None: a keepalive would read for this peer that doesn't.
        with blockws.accept(theirs, max_size=None, compression=None, keepalive=None) as server_ws:
            reading.wait(10)
            received.extend(server_ws)

    thread = threading.Thread(target=peer)
    thread.start()
    ws = blockws.connect("ws://localhost/", sock=ours, timeout=0.2, compression=None)
    head = "a" * 3_000_000
    sent = 0
    with pytest.raises(TimeoutError):
        while True:  # fill the kernel's buffers and ours; the message stays open
            sent += ws.send(head[sent:], fin=False)
    assert 0 < sent < len(head)
    ws.write_limit = ws.buffered_amount + 2  # room for 2 bytes; "€" takes 3
    with pytest.raises(TimeoutError):
        ws.send("€ and more", fin=False)
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        ws.sendall("€uro")
    assert time.monotonic() - start < 2
    ws.setblocking(False)
    with pytest.raises(BlockingIOError):
        ws.send("€")
    ws.setblocking(True)
    ws.write_limit = 65536
    reading.set()
    ws.sendall("€uro")  # nothing was accepted: the message ends here
    ws.close()
    thread.join(10)
    assert received == [head[:sent] + "€uro"]


def test_concurrent_senders_never_interleave(run_server):
    received: list[Any] = []

    def handler(ws: blockws.WebSocket) -> None:
        received.extend(ws)

    server = run_server(handler, max_size=None)
    ws = blockws.connect(server.url, timeout=10)

    def sender(tag: int) -> None:
        for i in range(200):
            size = random.randrange(0, 20000)
            ws.sendall(bytes([tag]) * size + i.to_bytes(2, "big"))

    threads = [threading.Thread(target=sender, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ws.close()
    server.stop()
    assert len(received) == 800
    per_tag: dict[int, list[int]] = {}
    for m in received:
        body, index = m[:-2], int.from_bytes(m[-2:], "big")
        assert len(set(body)) <= 1
        tag = body[0] if body else None
        if tag is not None:
            per_tag.setdefault(tag, []).append(index)
    for indexes in per_tag.values():
        assert indexes == sorted(indexes)


def test_recv_writes_what_send_accepted(run_server):
    """send() with a timeout may keep the tail of a message in user space and
    return; a recv() waiting for the answer must write it, or both sides wait
    for each other for ever (socket.send's data would be on its way)."""
    reading = threading.Event()

    def handler(ws: blockws.WebSocket) -> None:
        reading.wait(10)
        ws.sendall(ws.recv())

    server = run_server(handler, max_size=None)
    # No keepalive: it would write the held bytes as the kernel takes them.
    ws = small_buffer_client(
        server.url, server.port, timeout=5, compression=None, max_size=None, write_limit=4 << 20, keepalive=None
    )
    data = os.urandom(2_000_000)
    assert ws.send(data) == len(data)  # the peer does not read: most of it is held here
    assert ws.buffered_amount > 0
    reading.set()
    assert ws.recv() == data
    assert ws.buffered_amount == 0
    ws.close()


def test_partial_senders_and_a_receiver_under_backpressure(echo_server):
    """Four threads send with partial sends and a short timeout through a tiny
    kernel buffer while a fifth receives the echoes: messages never
    interleave, each arrives once, byte-exact, in order per sender."""
    ws = small_buffer_client(echo_server.url, echo_server.port, timeout=0.05, compression=None)
    per_sender = 25
    expected = {}
    for tag in range(4):
        rng = random.Random(tag)
        for i in range(per_sender):
            expected[(tag, i)] = bytes([tag, i]) + rng.randbytes(rng.randrange(0, 60_000))
    got: list[bytes] = []
    errors: list[BaseException] = []
    partial: list[int] = []
    give_up = time.monotonic() + 30

    def sender(tag: int) -> None:
        try:
            for i in range(per_sender):
                view = memoryview(expected[(tag, i)])
                while view:
                    try:
                        n = ws.send(view)  # may accept part: the rest continues the message
                    except TimeoutError:
                        assert time.monotonic() < give_up
                        continue
                    if n < len(view):
                        partial.append(n)
                    view = view[n:]
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    def receiver() -> None:
        try:
            while len(got) < len(expected):
                try:
                    message = ws.recv()
                except TimeoutError:
                    assert time.monotonic() < give_up
                    continue
                assert isinstance(message, bytes)
                got.append(message)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sender, args=(tag,)) for tag in range(4)]
    threads.append(threading.Thread(target=receiver))
    for t in threads:
        t.start()
    for t in threads:
        t.join(40)
    assert not errors, errors
    ws.settimeout(5)
    ws.close()
    assert partial, "backpressure should have split some messages"
    assert sorted(got) == sorted(expected.values())  # each once, byte-exact
    for tag in range(4):
        assert [m[1] for m in got if m[0] == tag] == list(range(per_sender))


def test_ping_returns_latency(echo_server):
    with blockws.connect(echo_server.url, timeout=5) as ws:
        latency = ws.ping()
        assert 0 <= latency < 1
        assert ws.latency == latency
        ws.pong(b"unsolicited")
        ws.sendall("still works")
        assert ws.recv() == "still works"


def test_ping_while_another_thread_receives(run_server):
    def handler(ws: blockws.WebSocket) -> None:
        time.sleep(0.3)
        ws.sendall("late")
        ws.recv()

    server = run_server(handler)
    with blockws.connect(server.url, timeout=5) as ws:
        got: list[Any] = []
        t = threading.Thread(target=lambda: got.append(ws.recv()))
        t.start()
        time.sleep(0.05)
        assert ws.ping(b"p1") < 1
        t.join()
        assert got == ["late"]


def test_select_loop_with_fileno_and_pending(echo_server):
    conns = [blockws.connect(echo_server.url, timeout=5) for _ in range(3)]
    for i, ws in enumerate(conns):
        ws.sendall(f"a{i}")
        ws.sendall(f"b{i}")
    got: list[Any] = []
    for ws in conns:
        ws.setblocking(False)
    while len(got) < 6:
        ready = [ws for ws in conns if ws.pending()]
        if not ready:
            r, _, _ = select.select(conns, [], [], 5)
            assert r
            ready = r
        for ws in ready:
            try:
                got.append(ws.recv())
            except BlockingIOError:
                pass
    assert sorted(got) == sorted(f"{p}{i}" for p in "ab" for i in range(3))
    for ws in conns:
        ws.setblocking(True)
        assert ws.fileno() >= 0
        ws.close()
        assert ws.fileno() == -1  # as socket.fileno() after close()


def test_recv_fragments(run_server):
    def handler(ws: blockws.WebSocket) -> None:
        ws.send("one ", fin=False)
        ws.send("two ", fin=False)
        ws.sendall("three")
        ws.sendall(b"bin")
        ws.recv()

    server = run_server(handler)
    with blockws.connect(server.url, timeout=5) as ws:
        pieces = list(ws.recv_fragments())
        assert "".join(pieces) == "one two three"
        assert all(isinstance(p, str) for p in pieces)
        assert list(ws.recv_fragments()) == [b"bin"]


def test_recv_fragments_lets_go_of_the_lock_between_pieces(run_server):
    """A piece left by a timed-out recv() is handed over without holding the
    receive lock: a consumer that holds it (or stops) blocks nobody."""
    go = threading.Event()

    def handler(ws: blockws.WebSocket) -> None:
        ws.send("first half, ", fin=False)
        go.wait(5)
        ws.sendall("second half")
        ws.sendall("next")
        ws.recv()  # answers the ping, then waits for the Close

    server = run_server(handler)
    with blockws.connect(server.url, timeout=0.2) as ws:
        with pytest.raises(TimeoutError):
            ws.recv()  # keeps "first half, "
        pieces = ws.recv_fragments()
        assert next(pieces) == "first half, "
        go.set()
        ws.settimeout(3)
        assert ws.ping() < 3  # reads for itself: the lock is free
        assert list(pieces) == ["second half"]
        assert ws.recv() == "next"


def test_max_size_fails_with_1009_and_names_the_limit(run_server):
    handler = RecvErrors()
    errors = handler.errors

    server = run_server(handler, max_size=1000)
    with blockws.connect(server.url, timeout=5, compression=None) as ws:
        ws.sendall(b"x" * 2000)
        assert ws.recv() is None
        assert ws.close_code == CloseCode.MESSAGE_TOO_BIG
        assert "frame of 2000 bytes exceeds max_size=1000" in (ws.close_reason or "")
    # Compressed, the limit applies to the inflated size.
    with blockws.connect(server.url, timeout=5) as ws:
        assert ws.extensions
        ws.sendall(b"x" * 2000)
        assert ws.recv() is None
        assert ws.close_code == CloseCode.MESSAGE_TOO_BIG
        assert "decompressed message exceeds max_size=1000" in (ws.close_reason or "")
    server.stop()
    assert [e.code for e in errors] == [1009, 1009]


def test_client_max_size(run_server):
    def handler(ws: blockws.WebSocket) -> None:
        ws.sendall("y" * 5000)
        ws.recv()

    server = run_server(handler)
    with blockws.connect(server.url, timeout=5, max_size=4096) as ws:
        with pytest.raises(blockws.ConnectionClosedError) as info:
            ws.recv()
        assert info.value.code == 1009
        assert "max_size=4096" in str(info.value)
        assert ws.close_code == 1009


def _close_while_another_thread_receives(url: str) -> tuple[blockws.WebSocket, threading.Thread, list[Any]]:
    """Connect, have a thread block in recv(), close() from here: the connection, that thread, what it got."""
    ws = blockws.connect(url)
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(ws.recv()))
    t.start()
    time.sleep(0.1)
    ws.close()
    t.join(5)
    return ws, t, got


def test_close_from_another_thread_wakes_receiver(echo_server):
    ws, t, got = _close_while_another_thread_receives(echo_server.url)
    assert not t.is_alive()
    assert got == [None]
    assert ws.close_code == 1000


def test_close_waits_for_the_other_threads_reader_to_see_the_peers_close(run_server):
    # The server reads (and answers our Close) only after 0.3 s: close()
    # must wait for the thread in recv() to see that answer (it lets go of
    # the reader lock then), not end at once with 1006 as if none came.
    def late(ws: blockws.WebSocket) -> None:
        time.sleep(0.3)
        for message in ws:
            ws.sendall(message)

    server = run_server(late, keepalive=None)
    ws, _, got = _close_while_another_thread_receives(server.url)
    assert got == [None]
    assert ws.close_code == 1000


def test_context_manager_and_iteration(run_server):
    def handler(ws: blockws.WebSocket) -> None:
        for i in range(3):
            ws.sendall(str(i))

    server = run_server(handler)
    with blockws.connect(server.url, timeout=5) as ws:
        assert list(ws) == ["0", "1", "2"]
        assert ws.local_address[0] == "127.0.0.1"
        assert ws.remote_address == ("127.0.0.1", server.port)
        assert "WebSocket client" in repr(ws)


def test_open_message_is_owned_by_its_thread(echo_server):
    with blockws.connect(echo_server.url, timeout=5) as ws:
        ws.send("part one, ", fin=False)
        done = threading.Event()

        def other() -> None:
            ws.sendall("other message")  # waits until the open message ends
            done.set()

        t = threading.Thread(target=other)
        t.start()
        assert not done.wait(0.2)
        ws.sendall("part two")
        t.join(5)
        assert [ws.recv(), ws.recv()] == ["part one, part two", "other message"]


@pytest.mark.parametrize("kind", [bytes, str])
def test_sendall_timeout_says_how_much_was_accepted(run_server, kind):
    """A sendall() that times out part-way tells how much it took; the rest finishes the message."""
    handler = LateReader()
    # keepalive=None: the server's keepalive would read 1 MiB for the handler.
    server = run_server(handler, max_size=None, compression=None, keepalive=None)
    data: Any = os.urandom(2_000_000) if kind is bytes else "aé€𝄞" * 200_000
    ws = small_buffer_client(server.url, server.port, timeout=0.2, compression=None)
    with pytest.raises(TimeoutError) as info:
        ws.sendall(data)
    accepted = info.value.accepted  # type: ignore[attr-defined]
    assert 0 < accepted < len(data)
    handler.reading.set()
    ws.settimeout(10)
    ws.sendall(data[accepted:])
    ws.close()
    server.stop()
    assert handler.received == [data]


def test_frame_cut_across_a_recv_timeout(run_server):
    """A frame that arrives in three pieces (inside its header, inside a character)
    survives two timed-out recv() calls and arrives whole."""
    frame = encode_header(Opcode.TEXT, 7) + "ab€cd".encode()  # "€" is 3 bytes: 7 bytes in all
    pieces = [frame[:1], frame[1:5], frame[5:]]  # header cut; then inside "€"
    go = [threading.Event() for _ in pieces]
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = listener.accept()
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
            for event, piece in zip(go, pieces):
                event.wait(5)
                conn.sendall(piece)
            conn.recv(4096)  # the client's Close

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with blockws.connect(f"ws://127.0.0.1:{listener.getsockname()[1]}/", timeout=0.2, close_timeout=1) as ws:
            for event in go[:2]:
                event.set()
                with pytest.raises(TimeoutError):
                    ws.recv()
            go[2].set()
            ws.settimeout(5)
            assert ws.recv() == "ab€cd"
    finally:
        for event in go:
            event.set()
        thread.join(5)
        listener.close()


def test_partial_send_over_tls_loses_nothing(run_server, tls):
    """The same partial-send contract over TLS, where the socket is non-blocking and
    a write may want a read (SSLWantReadError)."""
    server_ctx, client_ctx = tls
    handler = LateReader()
    server = run_server(handler, max_size=None, ssl_context=server_ctx, keepalive=None)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    ws = blockws.connect(
        f"wss://localhost:{server.port}/", sock=sock, ssl_context=client_ctx, timeout=0.2, compression=None
    )
    data = os.urandom(1_500_000)
    counts = send_in_parts(ws, data, lambda counts: handler.reading.set())
    assert len(counts) > 1  # it really was partial
    ws.close()
    server.stop()
    assert handler.received == [data]
