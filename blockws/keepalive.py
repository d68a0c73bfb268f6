"""KeepAlive: one thread and one selector keep many connections alive.

Theory of operation
-------------------
Proxies and NATs drop idle connections, and a dead peer (cable pulled, NAT
state lost) leaves a blocked ``recv()`` hanging forever. A :class:`KeepAlive`
runs one daemon thread with one :mod:`selectors` selector for every
connection registered with it (not a thread per connection):

* A connection shows it is alive when something arrives from the peer, or
  when a write that the kernel had refused (its buffer was full) makes
  progress: room only comes back when the peer reads, so a long send to a
  slow but living peer counts (:attr:`Watched.drained`).
* When a connection has shown no sign of life for ``interval`` seconds, the
  thread sends a Ping (queued after any partly written frame, never inside
  one). If a sender holds the connection, the ping is skipped and tried
  again soon; that sender's progress is the sign of life meanwhile.
* When, from that moment on, there is no sign of life for ``timeout``
  seconds, the connection fails: close code 1011 ("keepalive ping
  timeout"), the socket is closed, and threads blocked in
  ``recv()``/``send()`` wake at once with ``ConnectionClosedError``. The
  clock does not run while reading is paused because the application left
  ``_READ_LIMIT`` bytes unread (the pong may wait behind them in the kernel),
  nor, in non-blocking mode, while bytes wait in the kernel for the
  application's own ``recv()`` (:meth:`Watched.unread`).
* While the application is not inside ``recv()``, the thread reads what
  arrives (:meth:`Watched.service`): pings get their pongs, pongs and Close
  frames are noted, messages wait in order for the next ``recv()``. In
  non-blocking mode it doesn't (the application's ``select()`` must see
  every byte): the application's ``send()`` calls read what has arrived
  instead, so a program that only sends still answers pings, shows the
  peer alive and learns of its Close. While
  the application is inside ``recv()``, its thread does that work; the
  socket leaves the selector and comes back when the reader is done (the
  connection calls :meth:`KeepAlive._wake`) and hasn't come back to
  ``recv()`` meanwhile, so the thread never spins. Requests (re-arms,
  connections opened and closed) are coalesced: only the first in
  ``_REARM_DELAY`` wakes the thread, which then looks at the queue again
  within ``_REARM_DELAY``; the cost per message or per connection stays a
  queue append, not a thread wake-up.
* Once a connection's input has ended (the peer's Close, EOF, a reset, a
  protocol error: :attr:`Watched.input_ended`) the thread stops reading and
  pinging it for good: an EOF socket stays readable for ever, and the next
  ``recv()`` reports how the connection ended (1006 when it was lost).
* A peer's Close that the application doesn't take is answered here once
  ``close_grace`` seconds pass without a ``recv()`` call: the peer isn't
  kept waiting on an application that only sends (its next ``send()``
  raises ``ConnectionClosedOK``) or doesn't use the connection at all. An
  application that reads takes the Close itself (``recv()`` returns None)
  and may still send until it closes: the half-close, as after a TCP FIN.
* Bytes a partial ``send()`` left in user space (:attr:`Watched.output_held`)
  are written here when the socket becomes writable, as the kernel writes a
  TCP send buffer: the connection is in the selector for writing too while
  it holds some, and a sender that leaves some behind wakes the thread.

Other threads never touch the selector: they queue requests and write a
byte to a socketpair that the selector also watches.

The thread's cost grows with what happens (pings, pongs, events), not with
the number of connections: each connection has one timer in a heap (when
to look at it next) and a wake-up looks only at those whose timer is due,
never at every connection. A look reads the connection's signs of life
(they are the connection's, sampled, never pushed to the thread), pings or
fails it as above, and sets its next timer: when a ping becomes due, when
its timeout expires, or when its close grace ends, and at most
``interval`` away (so a pong that the application's ``recv()`` read, or a
``recv()`` call that restarts a grace, is seen within ``interval``).
Setting a timer leaves the old heap entry behind, stale, dropped when it
comes up. Ping and timeout timers are batched: the thread wakes for them
at most every ``interval / 20`` and then takes every one that is due;
close graces are exact. A connection whose input ends, or whose reader
re-arms it after its input ended, is looked at on the next pass (its
Close's grace starts then). Ping payloads are random bytes drawn from the
OS in bulk.

The thread sees a connection only through :class:`Watched`, which each
:class:`~blockws.WebSocket` implements with a private object of its own.
"""

from __future__ import annotations

import enum
import heapq
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from .codes import CloseCode
from .connection import WebSocket
from .link import READ_LIMIT as _READ_LIMIT
from .protocol import RandomKeys

__all__ = ["KeepAlive", "attach"]

logger = logging.getLogger("blockws.keepalive")

DEFAULT_CLOSE_GRACE = 1.0
# How late a re-armed connection may come back into the selector (pings
# and Close frames wait that much longer at most).
_REARM_DELAY = 0.05


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
    def last_received(self) -> float:
        """When something last arrived (``time.monotonic()``)."""

    @property
    def drained(self) -> int:
        """Bytes written since the kernel's buffer was full: the peer is reading."""

    @property
    def recv_calls(self) -> int:
        """How often the application called ``recv()``."""

    @property
    def close_unanswered(self) -> bool:
        """The peer's Close arrived and neither the application nor we took it."""

    def unread(self) -> bool:
        """Non-blocking mode: bytes wait in the kernel for the application's ``recv()``."""

    def held(self) -> int:
        """Bytes read and not yet taken by the application."""

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


class _Request(enum.Enum):
    """What other threads ask of the keepalive thread."""

    ADD = "add"
    REMOVE = "remove"
    ARM = "arm"  # watch a connection again, after its reader let go


class _Tracking:
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


class _Timers:
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
        self.timers: list[tuple[float, int, _Tracking]] = []
        self.graces: list[tuple[float, int, _Tracking]] = []
        self.seq = 0

    def set(self, state: _Tracking, when: float, grace: bool = False) -> None:
        """Look at the connection at ``when`` (and not at its earlier time)."""
        self.seq += 1
        state.seq = self.seq
        heapq.heappush(self.graces if grace else self.timers, (when, self.seq, state))

    def due(self, now: float) -> list[_Tracking]:
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


class KeepAlive:
    """Keeps registered connections alive with pings; fails dead ones.

    Args:
        interval: seconds without a sign of life from the peer (anything
            received, or a send that the peer's reading let progress) before
            a Ping is sent.
        timeout: seconds from that Ping without a sign of life before the
            connection fails with 1011. The clock stops while the application
            leaves 1 MiB unread (the answer may be queued behind it).
        tcp_keepalive: also enable TCP keepalive (``SO_KEEPALIVE``) on each
            socket: True for idle/interval/count derived from ``interval``
            and ``timeout``, or an explicit ``(idle, interval, count)``.
        close_grace: seconds the application has to take a peer's Close
            with ``recv()`` before it is answered from here (the peer is
            then not kept waiting by an application that doesn't read);
            every ``recv()`` call restarts the grace. None: never answer
            here (only ``close()`` or ``shutdown()`` do).

    Every connection is kept alive by default: ``keepalive=True``, the
    default of :func:`blockws.connect`, :func:`blockws.accept` and
    :func:`blockws.serve`, uses :meth:`shared` (one thread for the whole
    process, started when the first connection registers, ended when the
    last one closes and no server that uses it is running). Pass a
    ``KeepAlive`` as ``keepalive=`` to choose the interval and timeout, or
    ``keepalive=None`` to opt out.
    """

    _shared: KeepAlive | None = None
    _shared_lock = threading.Lock()

    def __init__(
        self,
        interval: float = 20.0,
        timeout: float = 20.0,
        *,
        tcp_keepalive: bool | tuple[int, int, int] = False,
        close_grace: float | None = DEFAULT_CLOSE_GRACE,
    ) -> None:
        if interval <= 0 or timeout <= 0:
            raise ValueError("interval and timeout must be positive")
        if close_grace is not None and close_grace < 0:
            raise ValueError("close_grace must be None or >= 0")
        self.interval = interval
        self.timeout = timeout
        self.close_grace = close_grace
        self.tcp_keepalive = tcp_keepalive
        self._lock = threading.Lock()
        self._requests: deque[tuple[_Request, Watched]] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._wake_r: socket.socket | None = None
        self._wake_w: socket.socket | None = None
        self._count = 0
        # Servers accepting now (hold()): the thread stays for their next
        # connection even when none is registered.
        self._holders = 0
        # Two guards on waking the thread for a request (any kind: ADD,
        # REMOVE, ARM). Rate: a request within _REARM_DELAY of the last
        # wake-up (_notified_at) writes nothing, because the thread, having
        # taken requests at _requests_taken_at, looks at the queue again
        # within _REARM_DELAY anyway. Bytes: _notified says a wake-up byte
        # is on its way that the thread hasn't taken, so there is one byte
        # per pass at most and the socketpair never fills.
        self._notified = False
        self._notified_at = 0.0
        self._requests_taken_at = 0.0
        # Ping payloads (the thread's own), drawn from the OS in bulk.
        self._payloads = RandomKeys()

    @classmethod
    def shared(cls) -> KeepAlive:
        """The process-wide instance used for ``keepalive=True``."""
        with cls._shared_lock:
            if cls._shared is None or cls._shared._closed:
                cls._shared = cls()
            return cls._shared

    @classmethod
    def resolve(cls, option: KeepAlive | bool | None) -> KeepAlive | None:
        """The KeepAlive a ``keepalive=`` option means: True is :meth:`shared`,
        None (or False) none.

        Raises:
            TypeError: ``option`` is none of these.
        """
        if option is True:
            return cls.shared()
        if isinstance(option, KeepAlive):
            return option
        if option is None or option is False:
            return None
        raise TypeError(f"keepalive must be a KeepAlive, True or None, not {option!r}")

    def __repr__(self) -> str:
        return f"KeepAlive(interval={self.interval}, timeout={self.timeout}, connections={self._count})"

    @property
    def thread(self) -> threading.Thread | None:
        """The serving thread, while one runs."""
        return self._thread

    def register(self, ws: WebSocket) -> None:
        """Keep ``ws`` alive until it is closed (or :meth:`unregister`).

        Raises:
            RuntimeError: this KeepAlive is closed.
        """
        conn: Watched = ws._keepalive  # the connection's side of the seam
        if self.tcp_keepalive:
            self._set_tcp_keepalive(conn)
        conn.wake = lambda: self._wake(conn)
        try:
            self._request(_Request.ADD, conn)
        except RuntimeError:
            conn.wake = None
            raise
        # After the ADD: a connection closed meanwhile runs this at once,
        # and its REMOVE must come after the ADD to undo it.
        conn.on_close(lambda: self.unregister(ws))

    def unregister(self, ws: WebSocket) -> None:
        """Stop keeping ``ws`` alive (done for you when it closes)."""
        conn: Watched = ws._keepalive
        conn.wake = None
        self._request(_Request.REMOVE, conn)

    def hold(self) -> None:
        """Keep the thread running while nothing is registered, until :meth:`release`.

        A :class:`~blockws.server.Server` holds its KeepAlive while it
        accepts: otherwise a server whose connections come one at a time
        would start and end a thread (with its selector and wake-up
        sockets) for each.
        """
        with self._lock:
            self._holders += 1

    def release(self) -> None:
        """Undo one :meth:`hold`: the thread ends once nothing is registered or held."""
        with self._lock:
            self._holders -= 1
            if not self._holders:
                self._notify()

    def close(self) -> None:
        """Stop the thread; registered connections are no longer kept alive.

        The thread ends before this returns (unless called from it). The
        connections stay open, without pings. Registering a connection
        afterwards raises ``RuntimeError``: make a new KeepAlive
        (:meth:`shared` does so for ``keepalive=True``). Idempotent.
        """
        with self._lock:
            self._closed = True
            thread = self._thread
            self._notify()
        if thread is not None and thread is not threading.current_thread():
            thread.join(5)

    def _request(self, what: _Request, conn: Watched) -> None:
        with self._lock:
            if self._closed:
                if what is _Request.ADD:
                    raise RuntimeError("this KeepAlive is closed")
                return
            self._requests.append((what, conn))
            if what is _Request.ADD:
                self._count += 1
            if self._thread is None:
                if what is not _Request.ADD:
                    return
                self._wake_r, self._wake_w = socket.socketpair()
                self._wake_r.setblocking(False)
                # Never blocks: a full buffer means a wake-up is pending. (The
                # thread notifies itself too, holding the lock, when a failed
                # connection unregisters: blocking there was a deadlock.)
                self._wake_w.setblocking(False)
                self._notified = False
                self._thread = threading.Thread(target=self._run, name="blockws keepalive", daemon=True)
                self._thread.start()
            else:
                self._notify_soon()

    def _wake(self, conn: Watched) -> None:
        with self._lock:
            if self._closed or self._thread is None:
                return
            self._requests.append((_Request.ARM, conn))
            self._notify_soon()

    def _notify_soon(self) -> None:
        """Have a queued request taken within _REARM_DELAY (the caller holds the lock)."""
        now = time.monotonic()
        if now - self._notified_at < _REARM_DELAY:
            return  # the thread looks at the queue again within _REARM_DELAY
        self._notified_at = now
        self._notify()

    def _notify(self) -> None:
        """Wake the thread (the caller holds the lock): one byte per pass at most."""
        if self._wake_w is not None and not self._notified:
            self._notified = True
            try:
                self._wake_w.send(b"\0")
            except OSError:  # the buffer is full: a wake-up is pending anyway
                pass

    def _set_tcp_keepalive(self, conn: Watched) -> None:
        if isinstance(self.tcp_keepalive, tuple):
            conn.set_tcp_keepalive(*self.tcp_keepalive)
        else:
            conn.set_tcp_keepalive(max(int(self.interval), 1), max(int(self.timeout / 3), 1), 3)

    # -- the thread ------------------------------------------------------------

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        assert self._wake_r is not None
        selector.register(self._wake_r, selectors.EVENT_READ, None)
        conns: dict[Watched, _Tracking] = {}
        timers = _Timers()
        try:
            while True:
                if not self._apply_requests(selector, conns, timers):
                    return
                now = time.monotonic()
                wait = self._check_timers(selector, conns, timers, now)
                if now - self._requests_taken_at < _REARM_DELAY:
                    wait = min(wait, _REARM_DELAY)  # more requests may be queued without a wake-up
                for key, mask in selector.select(wait):
                    conn = key.data
                    if conn is None:
                        try:
                            while self._wake_r.recv(4096):
                                pass
                        except BlockingIOError:
                            pass
                        continue
                    state = conns.get(conn)
                    if state is None:
                        continue
                    try:
                        if mask & selectors.EVENT_WRITE:
                            # No progress, or busy (the sender writes, and wakes us
                            # if it leaves bytes behind): stop waiting to write.
                            self._update(selector, conn, state, writing=conn.flush_held())
                        if mask & selectors.EVENT_READ and not conn.service(_READ_LIMIT):
                            # Busy (the reader re-arms it through _wake), over
                            # the read limit, or its input ended (never again).
                            self._unwatch(selector, conn, state)
                            if conn.input_ended:
                                timers.set(state, time.monotonic())  # a Close may wait for its grace
                    except Exception:
                        self._broken(selector, conns, conn, state)
        finally:
            selector.close()

    def _broken(
        self, selector: selectors.BaseSelector, conns: dict[Watched, _Tracking], conn: Watched, state: _Tracking
    ) -> None:
        """Serving one connection raised (a ``trace`` callback that fails, a bug):
        log it and fail that connection, not the thread every other one relies on."""
        logger.exception("keepalive: serving a connection failed; closing it with 1011")
        if conns.pop(conn, None) is not None:
            state.seq = 0  # its timer is stale
            self._forget(selector, conn, state)
            with self._lock:
                self._count -= 1
        try:
            conn.fail(CloseCode.INTERNAL_ERROR, "keepalive error")
        except Exception:  # pragma: no cover - abort() closes whatever state it finds
            logger.exception("keepalive: closing the failed connection failed too")

    def _apply_requests(
        self, selector: selectors.BaseSelector, conns: dict[Watched, _Tracking], timers: _Timers
    ) -> bool:
        """Take queued requests; False when the thread should end."""
        with self._lock:
            requests = list(self._requests)
            self._requests.clear()
            self._notified = False  # later requests wake the thread again
        if requests:
            self._requests_taken_at = time.monotonic()  # and it looks again within _REARM_DELAY
        # Served without the lock: threads opening and closing connections
        # wait for it, and this part makes system calls (the selector's).
        dropped = 0
        for what, conn in requests:
            if what is _Request.ADD:
                if conn in conns:
                    dropped += 1  # registered twice: keep one
                elif conn.closed:
                    # Closed before the thread got here: its descriptor
                    # number may already belong to another socket.
                    dropped += 1
                else:
                    state = conns[conn] = _Tracking(conn)
                    self._watch(selector, conn, state)
                    timers.set(state, time.monotonic())  # looked at on the next pass
            elif what is _Request.REMOVE:
                gone = conns.pop(conn, None)
                if gone is not None:
                    dropped += 1
                    gone.seq = 0  # its timer is stale
                    self._forget(selector, conn, gone)
            elif conn in conns:
                state = conns[conn]
                if conn.input_ended:
                    self._update(selector, conn, state)  # still writes what is held
                    timers.set(state, self._requests_taken_at)  # its reader may have left a Close untaken
                elif conn.reader_busy():
                    # A reader back in recv() by now (a server echoing)
                    # reads for itself: watching it would only wake this
                    # thread at its next message, to step aside again.
                    self._update(selector, conn, state)  # writes what a sender left
                else:
                    self._watch(selector, conn, state)
        with self._lock:
            self._count -= dropped
            if self._closed or not (conns or self._holders or self._requests):
                # Nothing to serve: the next register() starts a new thread.
                for conn, state in conns.items():
                    self._forget(selector, conn, state)
                    conn.wake = None
                self._thread = None
                for sock in (self._wake_r, self._wake_w):
                    if sock is not None:
                        sock.close()
                self._wake_r = self._wake_w = None
                self._requests.clear()
                self._count = 0
                return False
        return True

    @classmethod
    def _watch(cls, selector: selectors.BaseSelector, conn: Watched, state: _Tracking) -> None:
        """Read the connection (and write what it holds)."""
        state.reading = True
        cls._update(selector, conn, state)

    @classmethod
    def _unwatch(cls, selector: selectors.BaseSelector, conn: Watched, state: _Tracking) -> None:
        """Stop reading the connection (it may still be written to)."""
        state.reading = False
        cls._update(selector, conn, state)

    @classmethod
    def _forget(cls, selector: selectors.BaseSelector, conn: Watched, state: _Tracking) -> None:
        """Take the connection out of the selector for good."""
        state.reading = False
        cls._update(selector, conn, state, writing=False)

    @staticmethod
    def _update(selector: selectors.BaseSelector, conn: Watched, state: _Tracking, writing: bool = True) -> None:
        """Put the connection in the selector for what the thread does with it now.

        Bytes a partial send left in user space go out when the socket
        becomes writable, like bytes in a TCP send buffer, even if the
        application doesn't call again.
        """
        events = selectors.EVENT_READ if state.reading else 0
        if writing and conn.output_held and not conn.closed:
            events |= selectors.EVENT_WRITE
        if events == state.events:
            return
        try:
            if not events:
                selector.unregister(conn)  # by object: fileno() is -1 once closed
            elif not state.events:
                selector.register(conn, events, conn)
            else:
                selector.modify(conn, events, conn)
            state.events = events
        except (ValueError, OSError, KeyError):
            # Closed meanwhile (its on_close removes it): out of the selector.
            if state.events:
                try:
                    selector.unregister(conn)
                except (ValueError, OSError, KeyError):
                    pass
            state.events = 0

    def _check_timers(
        self, selector: selectors.BaseSelector, conns: dict[Watched, _Tracking], timers: _Timers, now: float
    ) -> float:
        """Send due pings, fail silent connections; return seconds to the next timer.

        Only the connections whose timer is due are looked at, and each
        look sets the connection's next timer, at most ``interval`` away:
        the cost of a pass is that of the connections due, not of all.
        """
        interval = self.interval
        # Batch timers that fall close together: waking once per connection
        # would cost a wake-up per connection, O(connections) per interval.
        retry = interval / 20
        for state in timers.due(now):
            # A timer set now for now or earlier comes up on the next pass.
            try:
                self._look(selector, conns, timers, state, now, interval, retry)
            except Exception:
                self._broken(selector, conns, state.conn, state)
        return timers.wait(now, interval, retry)

    def _look(
        self,
        selector: selectors.BaseSelector,
        conns: dict[Watched, _Tracking],
        timers: _Timers,
        state: _Tracking,
        now: float,
        interval: float,
        retry: float,
    ) -> None:
        """Ping the connection if it is due, fail it if silent too long; set its next timer."""
        conn = state.conn
        if conn.input_ended:
            # Nothing more will come: recv() tells how it ended.
            grace = self.close_grace
            if grace is not None and conn.close_unanswered:
                wait = self._close_grace(conn, state, now, grace)
                if wait != float("inf"):
                    # Looked at again within interval: a recv() call restarts the grace.
                    timers.set(state, now + min(wait, interval), grace=True)
            return
        drained = conn.drained
        if drained != state.drained:
            state.drained = drained
            state.alive = now
        alive = max(conn.last_received, state.alive)
        if now - alive < interval:
            state.ping_at = None
            timers.set(state, alive + interval)
            return
        if state.ping_at is None or state.ping_at < alive:
            state.ping_at = now
            state.ping_sent = False
        if conn.held() >= _READ_LIMIT or conn.unread():
            # Reading is paused until the application catches up (or, in
            # non-blocking mode, reads for itself): the pong may be
            # waiting behind what it left unread.
            state.ping_at = now
            timers.set(state, now + interval)
            return
        # Looked at again within interval at most: a sign of life (the pong)
        # then moves the next ping to interval after it.
        later = now + interval
        if not state.ping_sent:
            if conn.send_ping(self._payloads.next()):
                # The clock runs from the ping actually sent.
                state.ping_at = now
                state.ping_sent = True
            else:
                later = now + retry
        if now - state.ping_at >= self.timeout:
            self._fail(conn)
            self._forget(selector, conn, state)
            del conns[conn]
            with self._lock:
                self._count -= 1
            return
        timers.set(state, min(later, state.ping_at + self.timeout))

    @staticmethod
    def _close_grace(conn: Watched, state: _Tracking, now: float, grace: float) -> float:
        """Answer the peer's Close once the application left it for ``grace`` seconds
        without calling recv(); return the seconds until the next check."""
        calls = conn.recv_calls
        if state.close_at is None or calls != state.recv_calls:
            state.close_at = now + grace
            state.recv_calls = calls
        elif now >= state.close_at:
            # A sender holds the connection: it is writing to a peer that
            # still reads, so try again soon.
            return float("inf") if conn.answer_close() else 0.05
        return state.close_at - now

    def _fail(self, conn: Watched) -> None:
        conn.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")


def attach(ws: WebSocket, keepalive: KeepAlive | bool | None) -> None:
    """Register ``ws`` with the ``keepalive=`` option's KeepAlive (True: the shared one)."""
    chosen = KeepAlive.resolve(keepalive)
    if chosen is not None:
        try:
            chosen.register(ws)
        except RuntimeError:
            ws.shutdown(socket.SHUT_RDWR)  # a closed KeepAlive: don't leak the connection
            raise
