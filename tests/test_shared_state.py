"""Shared mutable state that the GIL used to make look atomic (issue 27's audit).

Each test hammers one object from several threads at once, the way the
library's own threads share it: the reader (who holds the reader lock) and
a sender (who holds the send lock) both touch a connection's protocol; the
keepalive, a reader that lost the connection and the application's
``close()`` all end it. On a GIL build these races need a thread switch at
one exact bytecode and almost never show; on free-threaded CPython
(3.13t, the GIL off) the threads really run at once, and each test failed
there before its fix. They run on both builds (with the GIL, as slow
tests): what they check holds on both.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

import blockws
from blockws.codes import Opcode
from blockws.connection import WebSocket
from blockws.frames import encode_header, parse_header
from blockws.protocol import Protocol, Side

FREE_THREADED = not getattr(sys, "_is_gil_enabled", lambda: True)()
#: Enough repetitions for a race to show within a second or two without the GIL.
ROUNDS = 20_000 if FREE_THREADED else 2_000
# In the fast run where they catch races (the free-threaded CI step); with
# the GIL, where the threads' spinning takes seconds and a race hardly
# shows, in the full run only.
pytestmark = [] if FREE_THREADED else [pytest.mark.slow]


def run_together(*targets: Callable[[], Any]) -> None:
    """Run the targets in threads started together; re-raise the first failure."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(targets))

    def run(target: Callable[[], Any]) -> None:
        try:
            start.wait()
            target()
        except BaseException as exc:  # reported in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in targets]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    if errors:
        raise errors[0]


def frames_in(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, unmasked payload) of every frame in ``data``."""
    out = []
    pos = 0
    while pos < len(data):
        header = parse_header(data, pos)
        assert header is not None
        start = pos + header.size
        payload = data[start : start + header.length]
        if header.mask is not None:
            payload = bytes(b ^ header.mask[i % 4] for i, b in enumerate(payload))
        out.append((header.opcode, payload))
        pos = start + header.length
    return out


@pytest.mark.parametrize("side", [Side.SERVER, Side.CLIENT])
def test_every_ping_gets_its_pong_while_a_sender_takes_the_protocols_frames(side: Side) -> None:
    """The reader queues pongs while the send-lock holder takes what is queued.

    Before the fix the taker swapped ``outgoing`` for a new list while the
    reader appended to the old one, after the taker had joined it: that
    pong was never sent (and the pong count drifted, up to an IndexError
    in the reader). Without the GIL it failed every run, and once crashed
    the interpreter: ``b"".join()`` of the list the reader was appending to.
    """
    proto = Protocol(side)
    masked = side is Side.SERVER  # the peer of a server is a client: its frames are masked
    key = b"\x01\x02\x03\x04"
    taken: list[bytes] = []
    fed = 0
    pongs_taken = 0
    done = threading.Event()

    def ping(n: int) -> bytes:
        payload = n.to_bytes(4, "big")
        if masked:
            payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
            return encode_header(Opcode.PING, 4, True, 0, key) + payload
        return encode_header(Opcode.PING, 4) + payload

    pings = [ping(n) for n in range(ROUNDS)]

    def reader() -> None:
        nonlocal fed
        try:
            for frame in pings:
                # Fewer pongs waiting than the protocol coalesces (it keeps
                # only the newest past 16, by design): every one is due.
                waited = time.monotonic()
                while fed - pongs_taken > 8:
                    if time.monotonic() - waited > 5:
                        raise AssertionError(f"pongs lost: {fed} pings fed, {pongs_taken} pongs taken")
                proto.receive_data(frame)
                fed += 1
        finally:
            done.set()

    def sender() -> None:
        nonlocal pongs_taken
        while not done.is_set() or proto.outgoing:
            if proto.outgoing:
                chunk = b"".join(proto.data_to_send())
                taken.append(chunk)
                pongs_taken += len(frames_in(chunk))

    run_together(reader, sender)
    taken.append(b"".join(proto.data_to_send()))
    pongs = [payload for chunk in taken for opcode, payload in frames_in(chunk) if opcode == Opcode.PONG]
    assert sorted(int.from_bytes(p, "big") for p in pongs) == list(range(ROUNDS))


def test_a_protocol_error_and_close_queue_one_close() -> None:
    """The reader reaching a protocol error and the application's close() both queue our Close: once."""

    def one_round() -> None:
        proto = Protocol(Side.CLIENT)
        proto.receive_data(b"\x83\x00")  # a reserved opcode: the error waits for next_event()

        def reader() -> None:
            with pytest.raises(blockws.ProtocolError):
                proto.next_event()

        run_together(reader, lambda: proto.send_close(1000, ""))
        closes = [f for f in frames_in(b"".join(proto.data_to_send())) if f[0] == Opcode.CLOSE]
        assert len(closes) == 1

    for _ in range(ROUNDS // 20):
        one_round()


def test_on_close_callbacks_run_exactly_once_however_many_threads_end_the_connection() -> None:
    """abort() from several threads at once (the keepalive, a reader that lost
    the connection, the application): each callback runs once, never twice
    (a connect gate's slot released twice frees another connection's), and
    a callback registered meanwhile runs too (never lost).

    (Its window is a few bytecodes: without the GIL this failed about one
    run in ten before the fix.)
    """

    def one_round() -> None:
        a, b = socket.socketpair()
        ws = WebSocket(a, Protocol(Side.SERVER))
        calls: list[str] = []
        ws.on_close(lambda: calls.append("early"))

        def register_late() -> None:
            ws.on_close(lambda: calls.append("late"))

        run_together(ws.abort, ws.abort, ws.abort, register_late)
        assert sorted(calls) == ["early", "late"]
        b.close()

    for _ in range(ROUNDS // 20):
        one_round()
