"""How a :class:`~blockws.Server` stops: :meth:`Stopping.shutdown`, from any thread, bounded by its grace.

A mixin of :class:`~blockws.Server` (which sets up the state it uses):
stop accepting (cutting short, or letting finish, the opening handshakes
under way), send every connection a Close, give the peers a grace to
answer, abort the connections still open, and wait for the handlers,
never for the calling thread (a handler may call it).

Locks: the server's (``Server._lock``, with its condition ``_changed``):
the connections and their threads, the threads inside ``shutdown()``,
the handshakes under way, the grace and the close code.
"""

from __future__ import annotations

import selectors
import threading
from socket import socket as Socket
from typing import TYPE_CHECKING, Any

from .codes import CloseCode
from .settings import DEFAULT_OPEN_TIMEOUT
from .utils import Deadline

if TYPE_CHECKING:
    from .connection import WebSocket

__all__ = ["Stopping", "DEFAULT_SHUTDOWN_GRACE", "check_grace"]

#: How long :meth:`Server.shutdown` gives the peers to answer its Close
#: (1001) before it aborts their connections: longer than a blockws peer's
#: ``close_grace`` (1 s), short enough for Ctrl-C to feel prompt.
DEFAULT_SHUTDOWN_GRACE = 1.5
# shutdown()'s default timeout is its grace plus this, for the handlers to
# return once their connections are closed.
_HANDLERS_MARGIN = 1.0


def check_grace(name: str, grace: float) -> float:
    """``grace`` as a float; ValueError naming ``name`` unless it is 0 or more."""
    if not grace >= 0:  # NaN too
        raise ValueError(f"{name} takes seconds, 0 or more, not {grace!r}")
    return float(grace)


class Stopping:
    """:meth:`shutdown` and its steps; the state is :class:`~blockws.Server`'s."""

    # Set by Server.__init__ (see there).
    options: dict[str, Any]
    shutdown_grace: float
    socket: Socket
    _lock: threading.Lock
    _changed: threading.Condition
    _threads: set[threading.Thread]
    _connections: dict[WebSocket, threading.Thread]
    _in_shutdown: set[threading.Thread]
    _grace: float | None
    _close_code: int
    _shutdown_requested: bool
    _accepting_stopped: bool
    _opening: int
    _stopped: threading.Event
    _wake_w: Socket
    _selector: selectors.BaseSelector

    def _abort_handshakes(self) -> None:
        raise NotImplementedError  # the server's

    def server_close(self) -> None:
        raise NotImplementedError  # the server's

    def shutdown(
        self,
        timeout: float | None = None,
        *,
        grace: float | None = None,
        code: int = CloseCode.GOING_AWAY,
        finish_handshakes: bool = False,
    ) -> None:
        """Stop accepting, close open connections with 1001, wait for the handlers.

        Works from any thread but the one in :meth:`serve_forever` (which
        it stops): another, or a handler (say, on a "stop" command). Called
        twice, or from several threads at once, each call returns once the
        server is shut down. In order:

        - The listening socket is closed (a new connection is refused) and
          ``serve_forever()`` returns. Opening handshakes that haven't sent
          their 101 yet are cut short at once: a client that connected and
          sent nothing doesn't hold this for ``open_timeout``.
        - Each open connection gets a Close (1001, going away). Its peer has
          ``grace`` seconds to answer (default :attr:`shutdown_grace`,
          1.5 s): a blockws peer answers at once when its application reads,
          within its keepalive's ``close_grace`` (1 s) when it doesn't. The
          connections still open after the grace are aborted, whatever the
          peer is (one that never reads, not even a WebSocket client), and
          their handlers' ``recv()`` and ``send()`` raise
          ``ConnectionClosedError``.
        - The handlers have until ``timeout`` seconds from the call (default:
          the grace plus a second) to return; one still running then is left
          to end on its own (its connection is closed already).

        A handler that calls this keeps its own connection: it isn't waited
        for, and its connection gets its Close (1001) once it returns, as the
        others do, its answer bounded by the grace as well.

        For a restart (what ``blockws serve --workers N`` does to its old
        workers on SIGHUP): ``code=1012`` (``CloseCode.SERVICE_RESTART``)
        closes with that code instead, and ``finish_handshakes=True`` lets
        the opening handshakes already under way finish (within their
        ``open_timeout``) rather than cutting them short: every client that
        connected gets its 101, then the Close, and a reconnecting client
        comes back elsewhere. The timeout counts from when they are done.

        Raises:
            ValueError: a negative ``grace``.
        """
        grace = self.shutdown_grace if grace is None else check_grace("grace", grace)
        me = threading.current_thread()
        if finish_handshakes:
            with self._lock:
                self._accepting_stopped = True
            self._stop_accepting(close=False)
            opened = Deadline(self.options.get("open_timeout", DEFAULT_OPEN_TIMEOUT))
            with self._changed:
                self._changed.wait_for(lambda: self._opening == 0, opened.remaining())
        with self._lock:
            if not self._shutdown_requested:
                self._close_code = code
            # The grace first: a handler's thread reads the flag without the lock.
            self._grace = grace if self._grace is None else min(self._grace, grace)
            self._shutdown_requested = True
            self._in_shutdown.add(me)
            self._changed.notify_all()  # another shutdown() waiting for this handler stops waiting
            self._abort_handshakes()
        try:
            self._stop_accepting()
            self._close_connections(me, grace, grace + _HANDLERS_MARGIN if timeout is None else timeout)
        finally:
            with self._lock:
                self._in_shutdown.discard(me)

    def _stop_accepting(self, close: bool = True) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:  # closed by an earlier shutdown()
            pass
        self._stopped.wait(5.0)
        if close:
            self.server_close()
        else:
            # Only the listener: others sharing it (the new workers) take what it queued.
            self.socket.close()

    def _close_connections(self, me: threading.Thread, grace: float, timeout: float) -> None:
        """Close every connection but the caller's own: 1001, then an abort after the grace."""
        total = Deadline(timeout)
        closing = Deadline(min(grace, timeout))
        with self._lock:
            others = [ws for ws, thread in self._connections.items() if thread is not me]
            mine = [ws for ws, thread in self._connections.items() if thread is me]
        for ws in others + mine:
            self._shorten_close(ws)
        code = self._close_code
        reason = "server restarting" if code == CloseCode.SERVICE_RESTART else "server shutting down"
        closers = [
            threading.Thread(target=ws.close, args=(code, reason), name="blockws close", daemon=True) for ws in others
        ]
        for t in closers:
            t.start()
        for t in closers:
            t.join(closing.remaining())
        self._wait_for_handlers(closing)
        with self._lock:
            late = [ws for ws, thread in self._connections.items() if thread is not me]
        # A peer that didn't answer in time (it doesn't read, it isn't a
        # WebSocket client, it's gone): abort, which also wakes the closer
        # and the handler blocked on it.
        for ws in late:
            ws.abort(code, "server shut down")
        self._wait_for_handlers(total)
        for t in closers:
            t.join(total.remaining())

    def _wait_for_handlers(self, deadline: Deadline) -> bool:
        """Wait until every handler thread has ended, except those inside shutdown()."""
        with self._changed:
            return self._changed.wait_for(lambda: self._threads <= self._in_shutdown, deadline.remaining())

    def _shorten_close(self, ws: WebSocket) -> None:
        """Bound the closing handshake of ``ws`` by the shutdown grace: its close() won't wait longer."""
        grace = self._grace
        if grace is not None and (ws.close_timeout is None or ws.close_timeout > grace):
            ws.close_timeout = grace
