"""A connection's side of the keepalive seam: what the keepalive thread may do with it.

:class:`blockws.keepalive.Watched` is the interface; each
:class:`~blockws.WebSocket` makes one :class:`KeepAliveLink` over its two
halves, its transport and its protocol. What the keepalive does is a
method of the part that owns the state: take what arrived
(:meth:`Inbox.claim <blockws.inbox.Inbox.claim>`, :meth:`Inbox.take_arrived
<blockws.inbox.Inbox.take_arrived>`), flush what is held
(:meth:`Outbox.flush_held <blockws.outbox.Outbox.flush_held>`), ping and
answer a Close (:meth:`Outbox.ping_now <blockws.outbox.Outbox.ping_now>`,
:meth:`Outbox.answer_close <blockws.outbox.Outbox.answer_close>`), judge
liveness (the inbox's ``last_received``, ``calls`` and :meth:`held
<blockws.inbox.Inbox.held>`, the transport's ``drained``). The link adds
only the keepalive's own flags (``wanted``, ``wake``, ``servicing``).

Locks: none of its own. ``wanted`` is a handshake without a lock between
the keepalive (sets it, then tries the reader lock again) and the reader
(lets go of the lock, then reads it): whichever order the two threads
run in, either the keepalive's second try succeeds or the reader sees the
flag, because each writes before it reads and the lock's acquire and
release order those; at worst both act (one spare re-arm). ``wake`` is
set and cleared by the keepalive's register and unregister, one
assignment each; ``servicing`` has one writer (the keepalive thread).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING
from typing import Protocol as Interface

if TYPE_CHECKING:
    from .inbox import Inbox
    from .outbox import Outbox
    from .pings import Pings
    from .protocol import Protocol
    from .transport import Transport

__all__ = ["KeepAliveLink", "READ_LIMIT", "Waker", "NOBODY"]

# Bytes a connection may hold for the application before the keepalive
# stops reading it (backpressure reaches the peer again).
READ_LIMIT = 1 << 20


class Waker(Interface):
    """What the halves see of the link: whom to wake when they let go.

    The inbox's reader calls ``wake`` when it lets go if ``wanted`` says the
    keepalive stepped aside; a sender that leaves bytes held calls it so
    that the keepalive writes them.
    """

    wanted: bool
    wake: Callable[[], None] | None


class _Nobody:
    """The :class:`Waker` of a half before the connection links it."""

    wanted = False
    wake: Callable[[], None] | None = None


NOBODY: Waker = _Nobody()


def _ignore(code: int, reason: str) -> None:
    pass


def _call_now(callback: Callable[[], None]) -> None:
    callback()


class KeepAliveLink:
    """A connection as the keepalive thread sees it (:class:`blockws.keepalive.Watched`).

    The keepalive reads the connection while the application is not inside
    :meth:`WebSocket.recv`, sends its pings, answers a Close the application
    left untaken, and fails a silent connection; nothing else of the
    connection is its business.

    Args:
        fail: drops the connection (``WebSocket.abort``).
        on_close: runs a callback once the socket is closed (``WebSocket.on_close``).
    """

    __slots__ = (
        "_inbox",
        "_out",
        "_transport",
        "_proto",
        "_pings",
        "_fail",
        "_on_close",
        "wanted",
        "wake",
        "servicing",
    )

    def __init__(
        self,
        inbox: Inbox,
        outbox: Outbox,
        transport: Transport,
        protocol: Protocol,
        pings: Pings,
        fail: Callable[[int, str], None],
        on_close: Callable[[Callable[[], None]], None],
    ) -> None:
        self._inbox = inbox
        self._out = outbox
        self._transport = transport
        self._proto = protocol
        self._pings = pings
        self._fail = fail
        self._on_close = on_close
        # Set by the keepalive when it found the connection busy: the reader
        # calls ``wake`` (set by the keepalive) when it lets go.
        self.wanted = False
        self.wake: Callable[[], None] | None = None
        # The keepalive thread is reading (settimeout(0) waits for it to end).
        self.servicing = False

    def fileno(self) -> int:
        return -1 if self._proto.finished else self._transport.fd

    @property
    def closed(self) -> bool:
        return self._proto.finished

    @property
    def input_ended(self) -> bool:
        return self._proto.input_ended

    # -- liveness --------------------------------------------------------------------

    @property
    def drained(self) -> int:
        return self._transport.drained

    def signs(self) -> tuple[float, int] | None:
        """None once the input ended; else when something last arrived and :attr:`drained`.

        (One call for the keepalive's look at each ping: a Python call costs
        ~600-1,000 instructions on 3.11, a property as much.)
        """
        if self._proto.input_ended:
            return None
        return self._inbox.last_received, self._transport.drained

    @property
    def recv_calls(self) -> int:
        return self._inbox.calls

    def paused(self, limit: int) -> bool:
        """The pong may wait behind bytes the application hasn't taken: the
        keepalive's clock doesn't run meanwhile.

        Those are ``limit`` bytes read and left for ``recv()`` (the keepalive
        stopped reading), or, in non-blocking mode, any bytes in the kernel:
        the keepalive doesn't read them (``select()`` must see them).
        """
        inbox = self._inbox
        if inbox.held() >= limit:
            return True
        return inbox.timeout == 0 and not self._proto.input_ended and self._transport.waiter.readable(0)

    def on_close(self, callback: Callable[[], None]) -> None:
        self._on_close(callback)

    def set_tcp_keepalive(self, idle: int, interval: int, count: int) -> None:
        self._transport.set_tcp_keepalive(idle, interval, count)

    def fail(self, code: int, reason: str) -> None:
        self._fail(code, reason)

    def unwire(self) -> None:
        """The connection is finished: let go of its methods (see ``WebSocket._unwire``).

        What they would do now: nothing for ``fail`` (the connection ended
        already), an immediate call for ``on_close``.
        """
        self._fail = _ignore
        self._on_close = _call_now

    # -- writing: what is held, pings, the answer to a Close ---------------------------

    @property
    def output_held(self) -> bool:
        return bool(self._out.buf)

    def flush_held(self) -> bool:
        """Write bytes a partial send left, now that the socket is writable (see :meth:`Outbox.flush_held`)."""
        return self._out.flush_held()

    def send_ping(self, payload: bytes) -> bool:
        """Queue a Ping without waiting; its Pong only updates the latency and
        the time of last reception. False if a sender holds the connection:
        the ping is skipped rather than blocking the thread that serves every
        connection."""
        return self._out.ping_now(payload, self._pings)

    @property
    def close_unanswered(self) -> bool:
        """The peer's Close arrived, the application hasn't taken it with
        ``recv()``, and we haven't closed: the keepalive's grace applies."""
        proto = self._proto
        return proto.close_rcvd is not None and not proto.output_ended and not self._inbox.close_taken

    def answer_close(self) -> bool:
        """Answer the peer's Close now, once the application stopped reading:
        its next ``send()`` raises ``ConnectionClosedOK``, ``recv()`` still
        returns what arrived, then None. An open message is finished first
        (RFC 6455 section 5.5.1). False when a sender holds the connection:
        try again later.
        """
        if self._inbox.close_taken:
            return True  # the application took it after all: close() answers it
        return self._out.answer_close()

    # -- reading: what arrived -----------------------------------------------------------

    def service(self, limit: int) -> bool:
        """Read what has arrived without blocking, if no other thread is reading.

        Pings get their pongs, and pongs and Close frames are noted, while
        the application is busy; messages stay queued, in order, for its
        next ``recv()``. Nothing is read once ``limit`` bytes wait, so a
        peer can't make us buffer without bound. Returns False when the
        connection is busy or over the limit (``wanted`` is then set and
        ``wake`` is called when the reader is done), and once its input
        has ended (stop watching it for good).
        """
        proto = self._proto
        if proto.input_ended:
            return False
        inbox = self._inbox
        self.servicing = True
        try:
            if inbox.timeout == 0:
                # Non-blocking: the application's select() loop reads, and
                # its send() calls read for us (see take_arrived).
                return False
            if not inbox.claim(limit):
                self.wanted = True
                # The reader may have left between the check and the flag:
                # then nobody would call wake, so try once more.
                if not inbox.claim(limit):
                    return False
                self.wanted = False
            inbox.take_arrived()
            # At EOF (or once lost) the socket stays readable for ever: the
            # caller must stop watching it or it would spin.
            return not proto.input_ended
        finally:
            self.servicing = False

    def take_arrived(self) -> None:
        """In non-blocking mode, read for the keepalive from the application's thread.

        Called by a non-blocking ``send()``: the keepalive doesn't read
        then (``select()`` must see every byte), so a program that only
        sends would never read the pongs that show the peer alive, nor
        the peer's Close. What is there is read without waiting, as
        :meth:`service` would; messages wait for ``recv()``
        (:meth:`WebSocket.pending` counts them). Once the input ends the
        keepalive is woken: the peer's Close gets its answer after the
        close grace, as for a blocking sender.
        """
        proto = self._proto
        if proto.input_ended or self._inbox.held() >= READ_LIMIT:
            return
        transport = self._transport
        if not transport.buffered() and not transport.waiter.readable(0):
            return
        if not self._inbox.claim(READ_LIMIT):
            return  # another thread reads (or too much waits for recv())
        self._inbox.take_arrived()
        wake = self.wake
        if proto.input_ended and wake is not None:
            wake()

    def reader_busy(self) -> bool:
        """True while another thread is in ``recv()``; ``wake`` is then called when it lets go."""
        inbox = self._inbox
        if not inbox.busy:
            return False
        self.wanted = True
        # As in service(): the reader may have let go before seeing the flag.
        if inbox.busy:
            return True
        self.wanted = False
        return False
