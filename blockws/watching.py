"""What the keepalive thread keeps of each connection: the seam, the record, the timers.

:class:`Watched` is all the thread may see of a connection (each
:class:`~blockws.WebSocket` implements it with its
:class:`~blockws.link.KeepAliveLink`). :class:`Tracking` is the thread's
record of one connection: its signs of life, its ping and close grace, and
what it is in the selector for. :class:`Timers` holds when to look at which
connection next. Only the keepalive thread uses the last two (see the theory
of operation in :mod:`blockws.keepalive`): no lock. What :class:`Watched`
reports is sampled from the connection without its locks (one attribute
each, written by one side); a stale sample only moves a ping or a grace to
the next look.
"""

from __future__ import annotations

import heapq
import selectors
from collections.abc import Callable
from typing import Protocol

__all__ = ["Watched", "Tracking", "Timers"]


class Watched(Protocol):
    """What the keepalive thread needs of a connection."""

    #: Set when :meth:`service` found the connection busy; the reader then calls :attr:`wake`.
    wanted: bool
    #: Set by the keepalive while the connection is registered.
    wake: Callable[[], None] | None

    def fileno(self) -> int: ...

    @property
    def closed(self) -> bool:
        """The socket is closed (its descriptor number may belong to another socket)."""

    @property
    def input_ended(self) -> bool:
        """Nothing more will be read: stop reading and timing the connection for good."""

    @property
    def drained(self) -> int:
        """Bytes written since the kernel's buffer was full: the peer is reading."""

    def signs(self) -> tuple[float, int] | None:
        """None once the input ended; else when something last arrived
        (``time.monotonic()``) and :attr:`drained`."""

    @property
    def recv_calls(self) -> int:
        """How often the application called ``recv()``."""

    @property
    def close_unanswered(self) -> bool:
        """The peer's Close arrived and neither the application nor we took it."""

    def paused(self, limit: int) -> bool:
        """``limit`` bytes wait for the application's ``recv()`` (or, in
        non-blocking mode, any bytes in the kernel): the pong may be behind them."""

    def on_close(self, callback: Callable[[], None]) -> None: ...

    def set_tcp_keepalive(self, idle: int, interval: int, count: int) -> None: ...

    def service(self, limit: int) -> bool:
        """Read what arrived, unless busy or ``limit`` bytes wait; False: stop watching (for now)."""

    def reader_busy(self) -> bool:
        """Another thread is in ``recv()`` (then :attr:`wake` is called when it lets go)."""

    def send_ping(self, payload: bytes) -> bool:
        """Queue a Ping without waiting; False if a sender holds the connection."""

    def answer_close(self) -> bool:
        """Answer the peer's Close; False if a sender holds the connection."""

    @property
    def output_held(self) -> bool:
        """Bytes accepted by a send wait in user space for the kernel."""

    def flush_held(self) -> bool:
        """Write what is held, without waiting; False if a sender holds the connection or nothing moved."""

    def fail(self, code: int, reason: str) -> None:
        """Drop the connection, waking its blocked threads with ``code``."""


class Tracking:
    """What the keepalive thread knows of one connection."""

    __slots__ = (
        "conn",
        "seq",
        "reading",
        "events",
        "alive",
        "drained",
        "ping_at",
        "ping_sent",
        "close_at",
        "recv_calls",
    )

    def __init__(self, conn: Watched) -> None:
        self.conn = conn
        # The timer entry that is this connection's (older ones in the heaps
        # are stale); 0: none, for good once it left.
        self.seq = 0
        # Whether the thread reads it (it doesn't while the application does),
        # and the events it is in the selector for (0: not in it).
        self.reading = False
        self.events = 0
        # The last sign of life seen from here: write progress (sampled).
        self.alive = 0.0
        self.drained = conn.drained
        # When a ping was first due since the last sign of life (None: not
        # due), and whether it went out (False: a sender held the connection).
        self.ping_at: float | None = None
        self.ping_sent = False
        # When the peer's Close, untaken, is to be answered; the application's
        # recv() count then (a call since restarts the grace).
        self.close_at: float | None = None
        self.recv_calls = 0

    def watch(self, selector: selectors.BaseSelector) -> None:
        """Read the connection (and write what it holds)."""
        self.reading = True
        self.update(selector)

    def unwatch(self, selector: selectors.BaseSelector) -> None:
        """Stop reading the connection (it may still be written to)."""
        self.reading = False
        self.update(selector)

    def forget(self, selector: selectors.BaseSelector) -> None:
        """Take the connection out of the selector for good."""
        self.reading = False
        self.update(selector, writing=False)

    def update(self, selector: selectors.BaseSelector, writing: bool = True) -> None:
        """Put the connection in the selector for what the thread does with it now.

        Bytes a partial send left in user space go out when the socket
        becomes writable, like bytes in a TCP send buffer, even if the
        application doesn't call again.
        """
        conn = self.conn
        events = selectors.EVENT_READ if self.reading else 0
        if writing and conn.output_held and not conn.closed:
            events |= selectors.EVENT_WRITE
        if events == self.events:
            return
        try:
            if not events:
                selector.unregister(conn)  # by object: fileno() is -1 once closed
            elif not self.events:
                selector.register(conn, events, conn)
            else:
                selector.modify(conn, events, conn)
            self.events = events
        except (ValueError, OSError, KeyError):
            # Closed meanwhile (its on_close removes it): out of the selector.
            if self.events:
                try:
                    selector.unregister(conn)
                except (ValueError, OSError, KeyError):
                    pass
            self.events = 0


class Timers:
    """The keepalive thread's timers: when to look at which connection next.

    Two heaps of ``(when, seq, state)``: the pings' and timeouts' (batched:
    the thread wakes for them at most every ``interval / 20``) and the close
    graces' (exact: the peer waits on them). Setting a connection's timer
    leaves its earlier entry in the heap, stale (``state.seq`` no longer
    matches), to be dropped when it comes up: no search, no removal.
    Belongs to one run of the thread (a new run starts afresh).
    """

    __slots__ = ("timers", "graces", "seq")

    def __init__(self) -> None:
        self.timers: list[tuple[float, int, Tracking]] = []
        self.graces: list[tuple[float, int, Tracking]] = []
        self.seq = 0

    def set(self, state: Tracking, when: float, grace: bool = False) -> None:
        """Look at the connection at ``when`` (and not at its earlier time)."""
        self.seq += 1
        state.seq = self.seq
        heapq.heappush(self.graces if grace else self.timers, (when, self.seq, state))

    def due(self, now: float) -> list[Tracking]:
        """The connections whose timer is due (their timers are then unset)."""
        found = []
        for heap in (self.timers, self.graces):
            while heap and heap[0][0] <= now:
                _, seq, state = heapq.heappop(heap)
                if seq == state.seq:
                    state.seq = 0
                    found.append(state)
        return found

    def wait(self, now: float, interval: float, retry: float) -> float:
        """Seconds until the next timer: at least ``retry`` for a batched one."""
        wait = max(self.timers[0][0] - now, retry) if self.timers else interval
        if self.graces:
            wait = min(wait, max(self.graces[0][0] - now, 0.0))
        return wait
