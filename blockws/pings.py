"""The Pings a connection sent and is waiting to see answered.

Whoever reads the connection matches the Pongs it finds (:meth:`Pings.answered`)
and wakes the threads waiting in :meth:`blockws.WebSocket.ping`; when that
reader leaves, the waiters are woken too (:meth:`Pings.wake_waiters`), since
one of them may now have to read for itself. The keepalive's pings have no
waiter and no place in the table: only its last one is kept (a newer one
replaces it), and its Pong only measures the latency.

Locks: :class:`Pings`' own lock guards the table, the keepalive's last
Ping, ``waiting`` and the writes of ``latency``; it is a leaf (setting an
Event under it takes no other lock). ``waiting`` and ``latency`` are read
without it: a reader letting go sees a count a moment old, which costs a
wake-up at most (a waiter clears its Event before it tries the reader
lock, so the wake-up of a reader that leaves after its try is never
lost). A :class:`Ping`'s ``round_trip`` is set once, under the lock, and
polled by its waiter.
"""

from __future__ import annotations

import threading
import time
from collections import deque

__all__ = ["Ping", "Pings"]


class Ping:
    """One Ping sent: when, who waits for its Pong, and the round trip once answered."""

    __slots__ = ("sent_at", "waiter", "round_trip")

    def __init__(self, waiter: threading.Event) -> None:
        self.sent_at = time.monotonic()
        self.waiter = waiter
        self.round_trip: float | None = None


class Pings:
    """The table of outstanding Pings, by payload, under its own lock."""

    __slots__ = ("_lock", "_table", "_unwaited", "waiting", "latency")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._table: dict[bytes, Ping] = {}
        # The keepalive's last Ping, unanswered, and when it went: a pair,
        # not a Ping in the table (one per ping interval per connection: it
        # is the keepalive thread's cost per ping that this saves).
        self._unwaited: tuple[bytes, float] | None = None
        #: How many threads wait for a Pong.
        self.waiting = 0
        #: The round trip of the last Ping answered, in seconds.
        self.latency: float | None = None

    def expect(self, payload: bytes) -> Ping:
        """Note a Ping whose Pong a thread will wait for.

        Raises:
            ValueError: a Ping with this payload is already waiting.
        """
        with self._lock:
            if payload in self._table:
                raise ValueError("a ping with this payload is already waiting")
            ping = self._table[payload] = Ping(threading.Event())
            self.waiting += 1
            return ping

    def expect_unwaited(self, payload: bytes) -> None:
        """Note a keepalive Ping (nobody waits); an earlier unanswered one is forgotten."""
        sent = (payload, time.monotonic())
        with self._lock:
            self._unwaited = sent

    def forget(self, payload: bytes) -> None:
        """Stop waiting for the Pong of a Ping from :meth:`expect`."""
        with self._lock:
            ping = self._table.pop(payload, None)
            if ping is not None:
                self.waiting -= 1

    def answered(self, pongs: deque[bytes]) -> float | None:
        """Match the Pongs received (emptying ``pongs``) and wake their waiters.

        Returns the round trip of the last Ping answered (also kept as
        :attr:`latency`), or None.
        """
        now = time.monotonic()
        latency = None
        with self._lock:
            table = self._table
            while pongs:
                payload = pongs.popleft()
                ping = table.get(payload) if table else None
                if ping is not None:
                    if ping.round_trip is None:
                        ping.round_trip = latency = now - ping.sent_at
                        ping.waiter.set()
                elif self._unwaited is not None and self._unwaited[0] == payload:
                    latency = now - self._unwaited[1]
                    self._unwaited = None
            if latency is not None:
                self.latency = latency
        return latency

    def wake_waiters(self) -> None:
        """Wake every thread waiting for a Pong (a reader left: one of them may read now)."""
        with self._lock:
            for ping in self._table.values():
                ping.waiter.set()
