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
  application's own ``recv()`` (:meth:`Watched.paused`).
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
at most every ``interval / 20`` and then takes every one that is due (a
ping due within that much is sent in the same pass: a ping may go out up
to ``interval / 20`` early); close graces are exact. A connection whose
input ends, or whose reader re-arms it after its input ended, is looked
at on the next pass (its Close's grace starts then). Ping payloads are random bytes drawn from the
OS in bulk.

The thread sees a connection only through :class:`Watched`, which each
:class:`~blockws.WebSocket` implements with a private object of its own
(:class:`~blockws.link.KeepAliveLink`). The seam, the thread's record of
each connection and its timer heaps are in :mod:`blockws.watching`; the
requests and the selector loop here.

Locks
-----
``KeepAlive._lock`` guards what other threads share with the thread: the
request queue, the connection count (``_count``), ``_holders``,
``_closed``, ``_thread``, the wake-up socketpair and the wake-up guards
(``_notified``, ``_notified_at``). The thread takes the queue whole under
it and serves it without it (the selector's system calls). Everything
else is the thread's alone, never locked: its table of connections, the
timers, each :class:`~blockws.watching.Tracking`, the ping payloads'
pool, ``_requests_taken_at``. The class's ``_shared_lock`` guards the
process-wide instance (:meth:`KeepAlive.shared`). The thread takes a
connection's locks only without waiting (``acquire(blocking=False)``:
busy, it steps aside), and it may hold them while it takes ``_lock`` (a
connection failed from here unregisters): no thread takes a connection's
lock while holding ``_lock``.
"""

from __future__ import annotations

import enum
import logging
import selectors
import socket
import threading
import time
from collections import deque

from .codes import CloseCode
from .connection import WebSocket
from .link import READ_LIMIT as _READ_LIMIT
from .protocol import random_keys
from .watching import Timers, Tracking, Watched

__all__ = ["KeepAlive", "Watched", "attach"]

logger = logging.getLogger("blockws.keepalive")

DEFAULT_CLOSE_GRACE = 1.0
# How late a re-armed connection may come back into the selector (pings
# and Close frames wait that much longer at most).
_REARM_DELAY = 0.05


class _Request(enum.Enum):
    """What other threads ask of the keepalive thread."""

    ADD = "add"
    REMOVE = "remove"
    ARM = "arm"  # watch a connection again, after its reader let go


# As codes.py's OP_* (see there): the members as globals, for the per-connection paths.
_ADD, _REMOVE, _ARM = _Request.ADD, _Request.REMOVE, _Request.ARM


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
        self._payloads = random_keys()

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
        # The connection's side of the seam: private to the library, kept
        # off the WebSocket's public API.
        conn: Watched = ws._keepalive
        if self.tcp_keepalive:
            self._set_tcp_keepalive(conn)
        conn.wake = lambda: self._wake(conn)
        try:
            self._request(_ADD, conn)
        except RuntimeError:
            conn.wake = None
            raise
        # After the ADD: a connection closed meanwhile runs this at once,
        # and its REMOVE must come after the ADD to undo it.
        conn.on_close(lambda: self.unregister(ws))

    def unregister(self, ws: WebSocket) -> None:
        """Stop keeping ``ws`` alive (done for you when it closes)."""
        conn: Watched = ws._keepalive  # the seam, as in register()
        conn.wake = None
        self._request(_REMOVE, conn)

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
                if what is _ADD:
                    raise RuntimeError("this KeepAlive is closed")
                return
            self._requests.append((what, conn))
            if what is _ADD:
                self._count += 1
            if self._thread is None:
                if what is not _ADD:
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
            self._requests.append((_ARM, conn))
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
        conns: dict[Watched, Tracking] = {}
        timers = Timers()
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
                            state.update(selector, writing=conn.flush_held())
                        if mask & selectors.EVENT_READ and not conn.service(_READ_LIMIT):
                            # Busy (the reader re-arms it through _wake), over
                            # the read limit, or its input ended (never again).
                            state.unwatch(selector)
                            if conn.input_ended:
                                timers.set(state, time.monotonic())  # a Close may wait for its grace
                    except Exception:
                        self._broken(selector, conns, conn, state)
        finally:
            selector.close()

    def _broken(
        self, selector: selectors.BaseSelector, conns: dict[Watched, Tracking], conn: Watched, state: Tracking
    ) -> None:
        """Serving one connection raised (a ``trace`` callback that fails, a bug):
        log it and fail that connection, not the thread every other one relies on."""
        logger.exception("keepalive: serving a connection failed; closing it with 1011")
        if conns.pop(conn, None) is not None:
            state.seq = 0  # its timer is stale
            state.forget(selector)
            with self._lock:
                self._count -= 1
        try:
            conn.fail(CloseCode.INTERNAL_ERROR, "keepalive error")
        except Exception:  # pragma: no cover - abort() closes whatever state it finds
            logger.exception("keepalive: closing the failed connection failed too")

    def _apply_requests(self, selector: selectors.BaseSelector, conns: dict[Watched, Tracking], timers: Timers) -> bool:
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
            if what is _ADD:
                if conn in conns:
                    dropped += 1  # registered twice: keep one
                elif conn.closed:
                    # Closed before the thread got here: its descriptor
                    # number may already belong to another socket.
                    dropped += 1
                else:
                    state = conns[conn] = Tracking(conn)
                    state.watch(selector)
                    timers.set(state, time.monotonic())  # looked at on the next pass
            elif what is _REMOVE:
                gone = conns.pop(conn, None)
                if gone is not None:
                    dropped += 1
                    gone.seq = 0  # its timer is stale
                    gone.forget(selector)
            elif conn in conns:
                state = conns[conn]
                if conn.input_ended:
                    state.update(selector)  # still writes what is held
                    timers.set(state, self._requests_taken_at)  # its reader may have left a Close untaken
                elif conn.reader_busy():
                    # A reader back in recv() by now (a server echoing)
                    # reads for itself: watching it would only wake this
                    # thread at its next message, to step aside again.
                    state.update(selector)  # writes what a sender left
                else:
                    state.watch(selector)
        with self._lock:
            self._count -= dropped
            if self._closed or not (conns or self._holders or self._requests):
                # Nothing to serve: the next register() starts a new thread.
                for conn, state in conns.items():
                    state.forget(selector)
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

    def _check_timers(
        self, selector: selectors.BaseSelector, conns: dict[Watched, Tracking], timers: Timers, now: float
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
        conns: dict[Watched, Tracking],
        timers: Timers,
        state: Tracking,
        now: float,
        interval: float,
        retry: float,
    ) -> None:
        """Ping the connection if it is due, fail it if silent too long; set its next timer."""
        conn = state.conn
        signs = conn.signs()
        if signs is None:
            # The input ended, nothing more will come: recv() tells how it ended.
            grace = self.close_grace
            if grace is not None and conn.close_unanswered:
                wait = self._close_grace(conn, state, now, grace)
                if wait != float("inf"):
                    # Looked at again within interval: a recv() call restarts the grace.
                    timers.set(state, now + min(wait, interval), grace=True)
            return
        alive, drained = signs
        if drained != state.drained:
            state.drained = drained
            state.alive = now
        # (Comparisons, not max() and min(): each of those costs ~2,000
        # instructions on 3.11, and this runs for every ping.)
        if alive < state.alive:
            alive = state.alive
        # Due within ``retry`` counts as due, as the timers are batched: the
        # pong of the last ping came a little after it, and waiting those
        # few milliseconds cost a second look per ping (0.7 more, counted:
        # 5 % of the thread's bytecodes per ping).
        if now - alive < interval - retry:
            state.ping_at = None
            timers.set(state, alive + interval)
            return
        if state.ping_at is None or state.ping_at < alive:
            state.ping_at = now
            state.ping_sent = False
        if conn.paused(_READ_LIMIT):
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
            if conn.send_ping(next(self._payloads)):
                # The clock runs from the ping actually sent.
                state.ping_at = now
                state.ping_sent = True
            else:
                later = now + retry
        if now - state.ping_at >= self.timeout:
            self._fail(conn)
            state.forget(selector)
            del conns[conn]
            with self._lock:
                self._count -= 1
            return
        deadline = state.ping_at + self.timeout
        timers.set(state, later if later < deadline else deadline)

    @staticmethod
    def _close_grace(conn: Watched, state: Tracking, now: float, grace: float) -> float:
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
