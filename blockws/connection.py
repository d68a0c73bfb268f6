"""The socket-like :class:`WebSocket`: a :class:`~blockws.protocol.Protocol` over a socket.

The shell: settings, state, timeouts, and the socket calls, each handed
to the half that owns its state. Sending is the :class:`~blockws.outbox.Outbox`'s
(the send lock, :attr:`Outbox.lock <blockws.outbox.Outbox.lock>`,
serializes every write to the socket; what was accepted and not yet
written), receiving the :class:`~blockws.inbox.Inbox`'s (the reader lock,
reading into the protocol, the messages received and put together). Beside
them: the socket with its deadlines (:mod:`blockws.transport`), the
outstanding pings (:mod:`blockws.pings`); how the connection ended is
recorded by the protocol. The keepalive thread sees a connection only
through its :class:`~blockws.link.KeepAliveLink` (the interface
:class:`blockws.keepalive.Watched`), made over the halves.

Locks
-----
A connection's state is guarded by these, each described where it lives;
a lock listed earlier may be held while a later one is taken, never the
other way round:

* the reader lock, :attr:`Inbox.lock <blockws.inbox.Inbox.lock>`
  (:mod:`blockws.inbox`): what is received;
* the send lock, :attr:`Outbox.lock <blockws.outbox.Outbox.lock>`
  (:mod:`blockws.outbox`): what is sent;
* the closing lock, ``WebSocket._closing`` (here): who ends the
  connection, and the :meth:`WebSocket.on_close` callbacks. Whoever ends it
  first (the application's ``close()``/``abort()``, the keepalive, a reader
  or sender that lost the socket) marks it finished and takes the callbacks
  under it; the callbacks run after, without it, each once. A callback
  registered while another thread closes is run, never lost;
* the protocol's queue lock (:mod:`blockws.protocol`): the frames the
  protocol queues itself and how the connection ended;
* the TLS lock (:mod:`blockws.transport`): one SSL object, one call at a time;
* the pings' lock (:mod:`blockws.pings`): the outstanding Pings.

Settings (``settimeout()``, ``close_timeout``, ``trace``) are the
application's: plain attributes, read by the other threads as they are.
``_closed_by_app`` is an ``|=`` of whichever ``close()`` calls ran: two
racing ``close()`` calls both compute it, either result is right.
"""

from __future__ import annotations

import functools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Union

from .codes import NO_STATUS_RCVD, NORMAL_CLOSURE, OP_PING, OP_PONG, CloseCode, Opcode
from .exceptions import ConnectionClosed, ConnectionClosedError, ProtocolError
from .frames import FrameHeader
from .inbox import Inbox
from .link import KeepAliveLink
from .outbox import Outbox
from .pings import Pings
from .protocol import Protocol, Side, State
from .transport import Transport
from .utils import Deadline

if TYPE_CHECKING:
    from .http import Request, Response

__all__ = ["WebSocket", "DEFAULT_WRITE_LIMIT", "DEFAULT_CLOSE_TIMEOUT"]

DEFAULT_WRITE_LIMIT = 64 * 1024
DEFAULT_CLOSE_TIMEOUT = 10.0

Message = Union[str, bytes]
BytesLike = Union[bytes, bytearray, memoryview]


class _Mode:
    """The connection's timeout mode, as the halves need it: which error a timeout is."""

    __slots__ = ("nonblocking",)

    def __init__(self) -> None:
        self.nonblocking = False

    def timeout_error(self, what: str) -> OSError:
        if self.nonblocking:
            return BlockingIOError(f"{what} would block")
        return TimeoutError(f"{what} timed out")


def _ended_error(
    proto: Protocol, exc: BaseException | None, code: int = CloseCode.ABNORMAL_CLOSURE, reason: str = ""
) -> ConnectionClosedError:
    """The error for a connection that ended (the peer's code, or the cause
    of the loss; ``code`` failing both), caused by ``exc``: :meth:`WebSocket._lose`'s,
    and all it does once the socket is closed (see ``_unwire``)."""
    err = ConnectionClosedError(proto.close_code or code, proto.close_reason or "")
    if exc is not None:
        err.__cause__ = exc
    return err


def _failed_after_end(proto: Protocol, exc: ProtocolError) -> ConnectionClosedError:
    """:meth:`WebSocket._fail` once the socket is closed (see ``_unwire``): a protocol
    error queued before the end is reached by a later recv()."""
    proto.fail(exc)
    return ConnectionClosedError(exc.close_code, str(exc))


class WebSocket:
    """A WebSocket connection that behaves like a BSD socket carrying messages.

    Made by :func:`blockws.connect`, :func:`blockws.accept` or a server; not
    meant to be constructed directly.

    Messages are ``str`` (text) or ``bytes`` (binary). :meth:`recv` returns
    ``None`` once the peer has closed; :meth:`send` says how much it accepted.
    """

    def __init__(
        self,
        sock: socket.socket,
        protocol: Protocol,
        *,
        request: Request | None = None,
        response: Response | None = None,
        subprotocol: str | None = None,
        extensions: list[str] | None = None,
        leftover: bytes = b"",
        timeout: float | None = None,
        close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
        write_limit: int = DEFAULT_WRITE_LIMIT,
        url: str | None = None,
        username: str | None = None,
        borrowed: bool = False,
    ) -> None:
        self._transport = Transport(sock, borrowed)
        self._proto = protocol
        self.request = request
        self.response = response
        self.subprotocol = subprotocol
        self.extensions = extensions or []
        self.close_timeout = close_timeout
        #: The URL finally connected to (client), the authenticated user name (server).
        self.url = url
        self.username = username
        #: Whether the last message :meth:`recv_into` wrote was text (its
        #: UTF-8 bytes) rather than binary.
        self.received_text = False
        self.local_address: Any
        self.remote_address: Any
        self.local_address, self.remote_address = self._transport.addresses()
        # Whether a timeout is BlockingIOError (non-blocking mode) or TimeoutError,
        # for the halves: an object of its own, not a method of this one (see _unwire).
        self._mode = _Mode()
        self._out = Outbox(self._transport, protocol, write_limit, self._lose, self._mode.timeout_error)
        self._pings = Pings()
        self._inbox = Inbox(
            self._transport, protocol, self._out, self._pings, self._lose, self._fail, self._mode.timeout_error
        )
        self._apply_timeout(timeout)
        # close() was called before the connection ended otherwise: the
        # application ended it (reconnect() then stops, whatever the code).
        self._closed_by_app = False
        self._on_close: list[Callable[[], None]] = []
        # The closing lock: whoever ends the connection first (the
        # application, the keepalive, a reader or sender that lost it) takes
        # the callbacks; one registered meanwhile is never lost.
        self._closing = threading.Lock()
        self._keepalive = self._inbox.link = self._out.link = KeepAliveLink(
            self._inbox, self._out, self._transport, protocol, self._pings, self.abort, self.on_close
        )
        if leftover:
            protocol.receive_data(leftover)
            if protocol.has_output:
                self._out.flush_when_free(Deadline(0))

    # -- properties ----------------------------------------------------------

    @property
    def write_limit(self) -> int:
        """The most bytes held here, accepted by :meth:`send` and not yet taken by the kernel.

        :attr:`buffered_amount` goes past it by one control frame of ours at
        most (a pong, the Close or a keepalive ping: 131 bytes or less);
        :func:`~blockws.broadcast` may hold one whole message for a peer
        that has nothing else held.
        """
        return self._out.limit

    @write_limit.setter
    def write_limit(self, limit: int) -> None:
        self._out.limit = limit

    @property
    def latency(self) -> float | None:
        """The last measured ping round trip, in seconds (a keepalive ping's too)."""
        return self._pings.latency

    @latency.setter
    def latency(self, value: float | None) -> None:
        self._pings.latency = value

    @property
    def state(self) -> State:
        """``State.OPEN``, ``CLOSING`` (a Close was sent or received) or ``CLOSED``."""
        return self._proto.state

    @property
    def close_code(self) -> int | None:
        """Why the connection ended: the peer's close code; the code we failed
        the connection with (1002, 1007, 1009, 1011); 1006 when it was lost
        without a Close, or closed before the peer answered our Close
        (``close_timeout`` expired); None while it is open."""
        return self._proto.close_code

    @property
    def close_reason(self) -> str | None:
        return self._proto.close_reason

    @property
    def buffered_amount(self) -> int:
        """Bytes accepted by :meth:`send` and held in user space, not yet given to the kernel."""
        return len(self._out.buf)

    @property
    def trace(self) -> Callable[[str, FrameHeader, bytes], None] | None:
        """A callable given every frame sent (``">"``) and received (``"<"``):
        its :class:`~blockws.frames.FrameHeader` and the first bytes of its
        unmasked payload. For teaching and debugging; None to stop."""
        return self._proto.trace

    @trace.setter
    def trace(self, callback: Callable[[str, FrameHeader, bytes], None] | None) -> None:
        self._proto.trace = callback

    @property
    def side(self) -> Side:
        return self._proto.side

    @property
    def max_size(self) -> int | None:
        return self._proto.max_size

    def __repr__(self) -> str:
        return f"<WebSocket {self.side.value} {self.state.name} {self.remote_address!r}>"

    # -- timeouts --------------------------------------------------------------

    def settimeout(self, timeout: float | None) -> None:
        """Like :meth:`socket.socket.settimeout`: None blocks, 0 is non-blocking.

        In non-blocking mode the keepalive thread leaves reading to the
        application (it still pings): ``select()`` then sees every byte
        that arrives, and :meth:`recv` answers the peer's pings. A
        non-blocking :meth:`send` reads what has arrived too (a program
        that only sends still answers pings, shows the peer alive and
        learns of its Close): a message it read waits for :meth:`recv`,
        and :meth:`pending` says so, so check it before ``select()``.
        """
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be None or >= 0")
        was = self._timeout
        self._apply_timeout(timeout)
        if timeout == 0 and was != 0:
            # A read the keepalive thread began before this call is
            # non-blocking and short: once it has fed the protocol,
            # pending() knows what it took from the kernel.
            while self._keepalive.servicing:
                time.sleep(0.0005)
        elif was == 0 and timeout != 0:
            wake = self._keepalive.wake
            if wake is not None:
                wake()  # the keepalive may read for us again

    def _apply_timeout(self, timeout: float | None) -> None:
        """The timeout, and what the parts keep of it: recv()'s (the inbox's),
        the halves' error type (``_mode``), send()'s fast path (``_blocking``:
        blocking, on a plain socket)."""
        self._timeout = timeout
        self._inbox.timeout = timeout
        self._mode.nonblocking = timeout == 0
        self._blocking = timeout is None and not self._transport.nonblocking

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self.settimeout(None if flag else 0.0)

    def fileno(self) -> int:
        """The socket's descriptor, for ``select()`` (check :meth:`pending` first).

        -1 once the connection is closed, as :meth:`socket.socket.fileno`.
        """
        return -1 if self._proto.finished else self._transport.fd

    def pending(self) -> int:
        """Bytes read from the kernel that :meth:`recv` can return without reading it again.

        ``select()`` can't see them: when this is non-zero, call :meth:`recv`
        before waiting in ``select()``. Zero while what was read is only part
        of a message (``recv()`` would need the kernel for the rest, and
        ``select()`` says when it comes).
        """
        return self._inbox.pending()

    def _counts(self) -> tuple[int, int, int, int]:
        """Data messages received and sent, and their payload bytes, so far (for :meth:`Server.stats`).

        Each half keeps its own (no lock of its own to count: the parser's
        and the send lock's holders bump them), read here without a lock.
        """
        received, received_bytes = self._inbox.counts()
        sent, sent_bytes = self._out.counts()
        return received, sent, received_bytes, sent_bytes

    def _timeout_error(self, what: str) -> OSError:
        return self._mode.timeout_error(what)

    # -- writing -----------------------------------------------------------------

    def _lose(
        self, exc: BaseException | None, code: int = CloseCode.ABNORMAL_CLOSURE, reason: str = ""
    ) -> ConnectionClosedError:
        """The connection is gone without a closing handshake: close the socket.

        Closed, not only shut down, so that whatever holds resources for the
        connection (a connect gate's slot, the keepalive) lets go at once,
        whether or not the application calls close().
        """
        self._proto.lose(code, reason or (str(exc) if exc else "connection lost"))
        self._close_socket()
        return _ended_error(self._proto, exc, code)

    # -- sending -------------------------------------------------------------------

    def send(self, data: str | BytesLike, fin: bool = True) -> int:
        """Send a prefix of ``data`` as frames of the current message; return its length.

        ``str`` is sent as text (the count is in characters), bytes-like as
        binary. In blocking mode all of ``data`` is accepted. With a timeout
        or in non-blocking mode, what fits now is accepted (the kernel's
        buffer plus at most ``write_limit`` bytes held here); if nothing
        fits, ``TimeoutError`` / ``BlockingIOError`` is raised, exactly like
        :meth:`socket.socket.send`. The message ends when all of ``data`` is
        accepted and ``fin`` is true; otherwise the next call continues it.

        Accepted data is never dropped: it reaches the peer, in order, before
        any later frame and before the Close, unless the connection is lost.

        Raises:
            ConnectionClosed: the connection is closed or closing.
            TypeError: ``data`` continues a message of the other type.
        """
        if fin and self._blocking:
            # The common case, kept to one lock and one system call: a whole
            # small message, blocking, with nothing open or queued before it.
            # Anything else (or a closed connection) takes the general path.
            cls = type(data)
            if cls is bytes:
                if self._out.send_small(data, False):  # type: ignore[arg-type]
                    return len(data)
            elif cls is str and self._out.send_small(data.encode("utf-8"), True):  # type: ignore[union-attr]
                return len(data)
        if self._timeout == 0:
            self._read_for_keepalive()
        return self._out.send(data, fin, self._timeout)

    def sendall(self, data: str | BytesLike) -> None:
        """Send ``data`` as the end of the current message (a whole message if none is open).

        The timeout covers the whole call. If it expires, part of ``data``
        may have been accepted and the message stays open; unlike
        :meth:`socket.socket.sendall`, the ``TimeoutError`` (or
        ``BlockingIOError``) says how much: its ``accepted`` attribute counts
        the bytes (characters for ``str``) taken, and
        ``sendall(data[exc.accepted:])`` finishes the message.
        """
        if self._timeout is None:
            self.send(data)  # blocking: send() accepts everything anyway
            return
        if self._timeout == 0:
            self._read_for_keepalive()
        self._out.sendall(data, self._timeout)

    def _read_for_keepalive(self) -> None:
        """Non-blocking mode: what the keepalive would read, read by a sender.

        The keepalive leaves reading to the application then, so that
        ``select()`` sees every byte; a program that only sends would never
        read the pongs that show the peer alive, nor the peer's Close
        (:meth:`KeepAliveLink.take_arrived <blockws.link.KeepAliveLink.take_arrived>`).
        """
        link = self._keepalive
        if link.wake is not None:
            link.take_arrived()

    def _offer(self, payload: bytes, text: bool, shared: dict[object, bytes]) -> bool | None:
        """:func:`~blockws.broadcast`'s part: the whole message now, or nothing, never waiting for the peer.

        False: it doesn't fit now (or another thread is in a send that may
        wait for the peer); None: the connection is closed or closing.
        """
        return self._out.offer_whole(payload, text, shared)

    def _send_control(self, opcode: Opcode, payload: bytes, deadline: Deadline) -> None:
        self._proto.check_control(payload)
        with self._out.sending(deadline, None):
            # Framed under the send lock: a client's masking key is drawn
            # from the pool the senders draw from.
            self._out.queue(self._proto.encode_control(opcode, payload))
            if not self._out.flush(deadline):
                raise self._timeout_error("ping")

    def ping(self, data: bytes = b"") -> float:
        """Send a Ping and wait for its Pong; return the round trip in seconds.

        An empty ``data`` is replaced by a random payload so that concurrent
        pings are told apart. Honours the timeout.
        """
        payload = bytes(data) or os.urandom(4)
        deadline = Deadline(self._timeout)
        ping = self._pings.expect(payload)
        try:
            self._send_control(OP_PING, payload, deadline)
            self._inbox.await_pong(ping, deadline)
        except TimeoutError:
            raise self._timeout_error("ping") from None
        finally:
            self._pings.forget(payload)
        assert ping.round_trip is not None
        return ping.round_trip

    def pong(self, data: bytes = b"") -> None:
        """Send an unsolicited Pong (a unidirectional heartbeat)."""
        self._send_control(OP_PONG, bytes(data), Deadline(self._timeout))

    # -- receiving -------------------------------------------------------------

    def recv(self) -> Message | None:
        """Receive the next message: ``str`` (text) or ``bytes`` (binary).

        Returns None once the peer has closed the connection (its Close was
        received): the clean end of the stream, like ``b""`` from
        :meth:`socket.socket.recv`; :attr:`close_code` and :attr:`close_reason`
        say why. Timeouts raise ``TimeoutError`` (``BlockingIOError`` in
        non-blocking mode) and lose nothing: a message that arrived in part
        is kept for the next call.

        Raises:
            ConnectionClosedError: the connection was lost without a Close,
                or failed because the peer broke the protocol.
        """
        return self._inbox.recv()

    def recv_into(self, buffer: Any, nbytes: int = 0) -> int | None:
        """Receive the next message into ``buffer``; return its length in bytes.

        Like :meth:`socket.socket.recv_into`: ``buffer`` is any writable
        buffer (``bytearray``, ``memoryview``, ``array``, ``mmap``...), of
        which the first ``nbytes`` bytes may be used (0, the default: all of
        it). A binary message's bytes are written as they are; a text
        message's as UTF-8, and :attr:`received_text` is then true (false
        after a binary message). The bytes of the buffer past the message
        are left alone.

        Returns None once the peer has closed the connection, exactly where
        :meth:`recv` returns None: not 0, which :meth:`socket.socket.recv_into`
        returns at the end of a stream, because 0 is the length of an
        empty message.

        Large uncompressed binary messages are read from the kernel
        straight into ``buffer``, without passing through any other memory
        (a client's masked payload is unmasked there, in place): the way to
        download large messages at the speed of the socket. Other messages
        are copied into it.

        A message that doesn't fit raises :exc:`~blockws.BufferTooSmall`
        (its ``size`` and ``nbytes`` say how far off) and is not consumed:
        the next :meth:`recv`, or ``recv_into()`` with a larger buffer,
        returns it whole. What ``buffer`` holds after the error is
        unspecified. Timeouts raise ``TimeoutError`` (``BlockingIOError``
        in non-blocking mode) and lose nothing either: a message that
        arrived in part is kept for the next call, whichever it is.

        Raises:
            BufferTooSmall: the next message is larger than the buffer.
            ConnectionClosedError: the connection was lost without a Close,
                or failed because the peer broke the protocol.
            TypeError: ``buffer`` isn't a writable, contiguous buffer.
        """
        received = self._inbox.recv_into(buffer, nbytes, self._timeout)
        if received is None:
            return None
        size, self.received_text = received
        return size

    def recv_fragments(self) -> Iterator[Message]:
        """Iterate over the pieces of the next message as they arrive.

        For messages too large to hold: text pieces are ``str`` (never
        splitting a character), binary pieces ``bytes``. The iterator is
        empty if the peer has closed. The receive lock is held only while a
        piece is fetched, never while the caller holds a piece, so a
        consumer that stops iterating blocks nobody.

        A message whose pieces are not all taken is discarded: once the
        iterator is closed (``break`` out of the ``for`` loop) or the next
        :meth:`recv` or ``recv_fragments()`` is called, the rest of it is
        skipped and the next call starts at the next message. Resuming an
        iterator whose message was skipped raises ``RuntimeError``.

        ``max_size`` still bounds the whole message, not each piece (the
        connection fails with 1009 past it): connect or serve with
        ``max_size=None`` to stream messages of any size.
        """
        return self._inbox.fragments(self.gettimeout)

    def _fail(self, exc: ProtocolError) -> ConnectionClosedError:
        """The peer broke the protocol: send our Close (queued by the protocol) and end.

        Called by the :class:`~blockws.inbox.Inbox`'s reader, which holds the reader lock.
        """
        self._proto.fail(exc)
        self._finish(Deadline(self.close_timeout), reader=True)
        return ConnectionClosedError(exc.close_code, str(exc))

    # -- closing ----------------------------------------------------------------

    def _close_socket(self) -> None:
        proto = self._proto
        with self._closing:
            # One thread closes, and runs each callback once: a connect
            # gate's slot released twice would free another connection's.
            if proto.finished:
                return
            proto.transport_closed()
            callbacks, self._on_close = self._on_close, []
        self._transport.close()
        self._out.wake_waiters()
        for callback in callbacks:
            callback()
        self._unwire()

    def _unwire(self) -> None:
        """Finished: the halves and the keepalive link let go of this WebSocket and of each other.

        They called it back through bound methods (and the link and the
        halves point at each other), so every connection's objects formed
        reference cycles that only the cyclic garbage collector freed (9 %
        of a server's handshake went to collecting them; on free-threaded
        CPython, collections stop every thread). Once the socket is closed, what
        they may still be asked (another thread's recv() or send()) needs
        none of it: the errors come from the protocol's record of the end,
        as this WebSocket's own methods would give them (both do nothing
        else now). Each swap is one attribute store: a thread that already
        took the old callback still gets the same answer.
        """
        proto = self._proto
        self._inbox.unwire(functools.partial(_ended_error, proto), functools.partial(_failed_after_end, proto))
        self._out.unwire(functools.partial(_ended_error, proto))
        self._keepalive.unwire()

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once, when the socket is closed (for limits and keepalive)."""
        with self._closing:
            if not self._proto.finished:
                self._on_close.append(callback)
                return
        callback()

    def _finish(self, deadline: Deadline, reader: bool = False) -> None:
        """Our Close is queued: write it, wait for the peer's, close TCP.

        The server closes TCP as soon as the closing handshake is done; the
        client waits for the server to do so (RFC 6455 section 7.1.1).
        ``reader`` says the caller already holds the reader lock.
        """
        try:
            self._out.flush_when_free(deadline)
        except ConnectionClosed:
            pass
        self._inbox.await_close(deadline, reader)
        proto = self._proto
        if proto.close_rcvd is None:  # lost (1006), RFC 6455 section 7.1.5: say how
            proto.lose(reason="the peer closed TCP without a Close" if proto.eof else "no Close from the peer in time")
        self._close_socket()

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the connection with the closing handshake; idempotent.

        Data already accepted by :meth:`send` is written first, then our
        Close; we wait up to ``close_timeout`` for the peer's Close (and, on
        the client, for the server to close TCP), then close the socket.
        Messages still arriving are discarded: use ``shutdown(SHUT_WR)`` to
        keep reading them. When this answers the peer's Close and ``code`` is
        left at its default, the peer's code is echoed (RFC 6455 section 5.5.1).
        A peer that doesn't answer in time leaves :attr:`close_code` 1006.
        """
        if self._proto.finished:
            return
        self._closed_by_app |= self._proto.close_rcvd is None and self._proto.lost is None
        send: int | None = code
        rcvd = self._proto.close_rcvd
        if rcvd is not None and code == NORMAL_CLOSURE and not reason:
            send = None if rcvd.code == NO_STATUS_RCVD else rcvd.code
        deadline = Deadline(self.close_timeout)
        self._queue_close(send, reason, deadline)
        self._finish(deadline)

    def _queue_close(self, code: int | None, reason: str, deadline: Deadline) -> None:
        if self._proto.close_sent is not None or self._proto.lost is not None:
            return
        if not self._out.lock.acquire(True, deadline.lock_timeout()):
            # A sender is stuck on a peer that does not read: give up on it.
            self._transport.shutdown()
            return
        try:
            self._proto.send_close(code, reason)
            self._out.notify_waiters()  # senders waiting for another thread's message: no data may follow
        finally:
            self._out.release()

    def shutdown(self, how: int) -> None:
        """Half-close like :meth:`socket.socket.shutdown`.

        ``SHUT_WR``: send our Close now (after the data already accepted);
        further :meth:`send` raises ``ConnectionClosedOK`` while :meth:`recv`
        keeps returning the peer's messages until its Close, then None.
        ``SHUT_RDWR``: send Close and close the socket without waiting.
        """
        if how == socket.SHUT_WR:
            deadline = Deadline(self.close_timeout)
            self._queue_close(NORMAL_CLOSURE, "", deadline)
            self._out.flush_when_free(deadline)
        elif how == socket.SHUT_RDWR:
            if not self._proto.finished:
                self._queue_close(NORMAL_CLOSURE, "", Deadline(0))
                try:
                    self._out.flush_when_free(Deadline(0))
                except ConnectionClosed:
                    pass
                self._close_socket()
        else:
            raise ValueError("shutdown() takes socket.SHUT_WR or socket.SHUT_RDWR")

    def abort(self, code: int = CloseCode.ABNORMAL_CLOSURE, reason: str = "") -> None:
        """Drop the connection at once, without a closing handshake.

        Threads blocked in :meth:`recv` or :meth:`send` wake with
        ``ConnectionClosedError``; :attr:`close_code` becomes ``code``.
        """
        self._lose(None, code, reason)

    def __enter__(self) -> WebSocket:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[Message]:
        """Iterate over received messages until the peer closes."""
        # recv() until it returns None, the end: called by the iterator
        # itself (C), with no generator and no call of ours in between.
        return iter(self._inbox.recv, None)
