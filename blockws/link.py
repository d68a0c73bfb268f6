"""A connection's side of the keepalive seam: what the keepalive thread may do with it.

:class:`blockws.keepalive.Watched` is the interface; each
:class:`~blockws.WebSocket` makes one :class:`KeepAliveLink` for itself. The
link works on the connection's private state (its locks, protocol and
transport), as part of the connection, so that nothing else has to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .codes import Opcode
from .exceptions import ConnectionClosed
from .protocol import Side
from .utils import Deadline

if TYPE_CHECKING:
    from .connection import WebSocket

__all__ = ["KeepAliveLink", "READ_LIMIT"]

# Bytes a connection may hold for the application before the keepalive
# stops reading it (backpressure reaches the peer again).
READ_LIMIT = 1 << 20


class KeepAliveLink:
    """A connection as the keepalive thread sees it (:class:`blockws.keepalive.Watched`).

    The keepalive reads the connection while the application is not inside
    :meth:`WebSocket.recv`, sends its pings, answers a Close the application
    left untaken, and fails a silent connection; nothing else of the
    connection is its business.
    """

    __slots__ = ("_ws", "wanted", "wake", "servicing")

    def __init__(self, ws: WebSocket) -> None:
        self._ws = ws
        # Set by the keepalive when it found the connection busy: the reader
        # calls ``wake`` (set by the keepalive) when it lets go.
        self.wanted = False
        self.wake: Callable[[], None] | None = None
        # The keepalive thread is reading (settimeout(0) waits for it to end).
        self.servicing = False

    def fileno(self) -> int:
        return self._ws.fileno()

    @property
    def closed(self) -> bool:
        return self._ws._proto.finished

    @property
    def input_ended(self) -> bool:
        return self._ws._proto.input_ended

    @property
    def last_received(self) -> float:
        return self._ws._last_received

    @property
    def drained(self) -> int:
        return self._ws._transport.drained

    @property
    def recv_calls(self) -> int:
        return self._ws._recv_calls

    def held(self) -> int:
        return self._ws._held()

    def on_close(self, callback: Callable[[], None]) -> None:
        self._ws.on_close(callback)

    def set_tcp_keepalive(self, idle: int, interval: int, count: int) -> None:
        self._ws._transport.set_tcp_keepalive(idle, interval, count)

    @property
    def output_held(self) -> bool:
        return bool(self._ws._out.buf)

    def flush_held(self) -> bool:
        """Write bytes a partial send left, now that the socket is writable.

        False when a sender holds the connection (it writes them, and wakes
        the keepalive if it leaves some) or nothing could be written.
        """
        out = self._ws._out
        if not out.cond.acquire(blocking=False):
            return False
        try:
            held = len(out.buf)
            out.flush(Deadline(0))
            return len(out.buf) < held
        except ConnectionClosed:
            return False
        finally:
            out.release()

    def fail(self, code: int, reason: str) -> None:
        self._ws.abort(code, reason)

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
        ws = self._ws
        if ws._proto.input_ended:
            return False
        self.servicing = True
        try:
            if ws._timeout == 0:
                # Non-blocking: the application's select() loop reads, and
                # its send() calls read for us (see take_arrived).
                return False
            if ws._held() >= limit or not ws._recv_lock.acquire(blocking=False):
                self.wanted = True
                # The reader may have left between the check and the flag:
                # then nobody would call wake, so try once more.
                if ws._held() >= limit or not ws._recv_lock.acquire(blocking=False):
                    return False
                self.wanted = False
            self._read_now(ws)
            # At EOF (or once lost) the socket stays readable for ever: the
            # caller must stop watching it or it would spin.
            return not ws._proto.input_ended
        finally:
            self.servicing = False

    @staticmethod
    def _read_now(ws: WebSocket) -> None:
        """Read once without waiting and feed the protocol; hold the recv lock (let go here)."""
        try:
            ws._read(Deadline(0))
        except (TimeoutError, BlockingIOError, ConnectionClosed):
            pass
        finally:
            ws._release_reader()

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
        ws = self._ws
        proto = ws._proto
        if proto.input_ended or ws._held() >= READ_LIMIT:
            return
        transport = ws._transport
        if not transport.buffered() and not transport.waiter.readable(0):
            return
        if not ws._recv_lock.acquire(blocking=False):
            return  # another thread reads
        self._read_now(ws)
        wake = self.wake
        if proto.input_ended and wake is not None:
            wake()

    def unread(self) -> bool:
        """Non-blocking mode only: bytes wait in the kernel for the application's ``recv()``.

        The keepalive doesn't read them (``select()`` must see them), and
        the pong may be among them: its clock doesn't run meanwhile.
        """
        ws = self._ws
        return ws._timeout == 0 and not ws._proto.input_ended and ws._transport.waiter.readable(0)

    def reader_busy(self) -> bool:
        """True while another thread is in ``recv()``; ``wake`` is then called when it lets go."""
        lock = self._ws._recv_lock
        if not lock.locked():
            return False
        self.wanted = True
        # As in service(): the reader may have let go before seeing the flag.
        if lock.locked():
            return True
        self.wanted = False
        return False

    def send_ping(self, payload: bytes) -> bool:
        """Queue a Ping without waiting; its Pong only updates the latency and
        the time of last reception. False if a sender holds the connection:
        the ping is skipped rather than blocking the thread that serves every
        connection."""
        ws = self._ws
        if not ws._out.cond.acquire(blocking=False):
            return False
        try:
            ws._out.check_open()
            ws._pings.expect_unwaited(payload)
            ws._out.offer_control(ws._proto.encode_control(Opcode.PING, payload))
            return True
        except ConnectionClosed:
            return False
        finally:
            ws._out.release()

    @property
    def close_unanswered(self) -> bool:
        """The peer's Close arrived, the application hasn't taken it with
        ``recv()``, and we haven't closed: the keepalive's grace applies."""
        ws = self._ws
        proto = ws._proto
        return proto.close_rcvd is not None and not proto.output_ended and not ws._close_taken

    def answer_close(self) -> bool:
        """Answer the peer's Close now, once the application stopped reading:
        its next ``send()`` raises ``ConnectionClosedOK``, ``recv()`` still
        returns what arrived, then None. An open message is finished first
        (RFC 6455 section 5.5.1). False when a sender holds the connection:
        try again later.
        """
        ws = self._ws
        if not ws._out.cond.acquire(blocking=False):
            return False
        try:
            if self.close_unanswered:
                proto = ws._proto
                proto.answer_close()
                # Once our Close is written the closing handshake is done,
                # and the server closes TCP first (RFC 6455 section 7.1.1):
                # the client isn't kept waiting for a handler that may run
                # for long. Its read side stays: recv() returns what came
                # before the Close, then None; the socket goes with close().
                # (Our Close may wait for an open message's last frame: the FIN after it.)
                ws._out.fin_due = proto.side is Side.SERVER
                ws._out.flush(Deadline(0))
        except ConnectionClosed:
            pass
        finally:
            ws._out.release()
        return True
