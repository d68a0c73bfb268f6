"""The socket-like :class:`WebSocket`: a :class:`~blockws.protocol.Protocol` over a socket.

Locks: ``_send_cond`` (a condition over the send lock) serializes every write
to the socket, so frames never interleave and the unsent tail of a frame
(``_wbuf``) is always written before anything else. ``_recv_lock`` admits
one reader at a time; whoever holds it feeds the protocol. Pongs found by
any reader wake the threads waiting in :meth:`WebSocket.ping`.

The kernel socket stays in blocking mode for plain TCP, so the common
blocking ``send``/``recv`` is a single system call; deadlines are kept with
``poll`` plus ``MSG_DONTWAIT``, never by changing the socket's mode under
another thread's feet. TLS sockets can't take flags, so they are put in
non-blocking mode once and every wait goes through ``poll``; so are plain
sockets where the platform has no ``MSG_DONTWAIT`` (Windows).

Platform assumptions, each with its fallback: ``select.poll`` (``select``
where it is missing: Windows), ``MSG_DONTWAIT`` (a non-blocking socket),
``sendmsg`` (header and payload joined), ``TCP_NODELAY`` (skipped for
sockets that aren't TCP, such as ``AF_UNIX``).
"""

from __future__ import annotations

import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Union

from .exceptions import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, ProtocolError
from .frames import CloseCode, FrameHeader, Opcode
from .protocol import Close, Data, Protocol, Side, State
from .utils import Deadline

if TYPE_CHECKING:
    from .http import Request, Response

__all__ = ["WebSocket", "DEFAULT_WRITE_LIMIT", "DEFAULT_CLOSE_TIMEOUT"]

DEFAULT_WRITE_LIMIT = 64 * 1024
DEFAULT_CLOSE_TIMEOUT = 10.0
_READ_SIZE = 64 * 1024
_LARGE_READ_SIZE = 256 * 1024
_MSG_DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)
# Messages smaller than this are joined to their header and written in one
# call; larger ones go out with sendmsg (no copy of the payload).
_JOIN_BELOW = 16384

Message = Union[str, bytes]
BytesLike = Union[bytes, bytearray, memoryview]


_FOREVER = Deadline(None)
_ABANDONED = object()


def _utf8_length(lead: int) -> int:
    """The length of the UTF-8 sequence that starts with byte ``lead``."""
    return 1 if lead < 0xC0 else 2 if lead < 0xE0 else 3 if lead < 0xF0 else 4


def _poll_ms(deadline: Deadline) -> int:
    remaining = deadline.remaining()
    return -1 if remaining is None else int(remaining * 1000 + 0.999)


class _Waiter:
    """Waits until one descriptor is readable or writable, in milliseconds (-1: for ever).

    ``poll`` where the platform has it (no ``FD_SETSIZE`` limit); ``select``
    where it doesn't (Windows). An error or hang-up counts as readable: the
    read that follows reports it.
    """

    __slots__ = ("_fd", "_rpoll", "_wpoll", "_rwpoll")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        poll = getattr(select, "poll", None)
        if poll is None:
            self._rpoll = self._wpoll = self._rwpoll = None
            return
        self._rpoll = poll()
        self._rpoll.register(fd, select.POLLIN)
        self._wpoll = poll()
        self._wpoll.register(fd, select.POLLOUT)
        self._rwpoll = poll()
        self._rwpoll.register(fd, select.POLLIN | select.POLLOUT)

    def _select(self, read: bool, write: bool, ms: int) -> tuple[bool, bool]:
        fds = [self._fd]
        r, w, x = select.select(fds if read else [], fds if write else [], fds, None if ms < 0 else ms / 1000)
        return bool(r or x), bool(w)

    def readable(self, ms: int) -> bool:
        if self._rpoll is None:
            return self._select(True, False, ms)[0]
        return bool(self._rpoll.poll(ms))

    def writable(self, ms: int) -> bool:
        if self._wpoll is None:
            return any(self._select(False, True, ms))
        return bool(self._wpoll.poll(ms))

    def either(self, ms: int) -> tuple[bool, bool]:
        """(readable or failed, writable); both False when the time ran out."""
        if self._rwpoll is None:
            return self._select(True, True, ms)
        events = self._rwpoll.poll(ms)
        if not events:
            return False, False
        mask = events[0][1]
        return bool(mask & ~select.POLLOUT), bool(mask & select.POLLOUT)


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
    ) -> None:
        self._sock = sock
        self._proto = protocol
        self.request = request
        self.response = response
        self.subprotocol = subprotocol
        self.extensions = extensions or []
        self.close_timeout = close_timeout
        self.write_limit = write_limit
        #: The URL finally connected to (client), the authenticated user name (server).
        self.url = url
        self.username = username
        #: The last measured ping round trip, in seconds.
        self.latency: float | None = None
        self._timeout = timeout
        self._tls = isinstance(sock, ssl.SSLSocket)
        # Flags can't make a TLS socket's calls non-blocking, and some
        # platforms have no MSG_DONTWAIT: such sockets are non-blocking for
        # good and every wait goes through the waiter. The others stay in
        # blocking mode: a blocking send or recv is then one system call.
        self._nonblocking = self._tls or not _MSG_DONTWAIT
        if self._nonblocking:
            sock.setblocking(False)
        else:
            sock.settimeout(None)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass  # not TCP (a Unix socket given as sock=)
        self._fd = sock.fileno()
        self._waiter = _Waiter(self._fd)
        try:
            self.local_address: Any = sock.getsockname()
            self.remote_address: Any = sock.getpeername()
        except OSError:
            self.local_address = self.remote_address = None
        self._send_cond = threading.Condition(threading.Lock())
        self._recv_lock = threading.Lock()
        self._wbuf = bytearray()
        self._msg_owner: int | None = None
        self._msg_text = False
        self._parts: list[Any] = []
        # The recv_fragments() iterator in the middle of a message (its
        # token), or _ABANDONED: the rest of that message is to be skipped.
        self._fragments: object | None = None
        self._pings: dict[bytes, list[Any]] = {}
        self._ping_lock = threading.Lock()
        self._close_rcvd_event = threading.Event()
        # Whether the application took the peer's Close (recv() returned
        # None), and how often it called recv(): the keepalive answers a
        # Close only for an application that stopped reading.
        self._close_taken = False
        self._recv_calls = 0
        self._tcp_closed = False
        self._lost_code: int | None = None
        self._lost_reason = ""
        self._on_close: list[Callable[[], None]] = []
        # Set by a KeepAlive: called when a reader releases the connection
        # after the keepalive thread found it busy (keepalive_wanted).
        self._keepalive_hook: Callable[[WebSocket], None] | None = None
        self.keepalive_wanted = False
        self._servicing = False
        self.last_received = time.monotonic()
        # Write progress the keepalive counts as a sign of life: bytes the
        # kernel took after it had refused some (its buffer was full, so room
        # came back only because the peer read). Bytes written into a buffer
        # with room prove nothing: a dead peer's buffer takes them too.
        self._drained = 0
        self._congested = False
        if leftover:
            protocol.receive_data(leftover)
            if protocol.has_output:
                with self._send_cond:
                    self._flush(Deadline(0))

    # -- properties ----------------------------------------------------------

    @property
    def state(self) -> State:
        """``State.OPEN``, ``CLOSING`` (a Close was sent or received) or ``CLOSED``."""
        if self._tcp_closed or self._lost_code is not None:
            return State.CLOSED
        proto = self._proto
        if proto.close_sent is not None and proto.close_rcvd is not None:
            return State.CLOSED
        if proto.close_sent is not None or proto.close_rcvd is not None:
            return State.CLOSING
        return State.OPEN

    @property
    def close_code(self) -> int | None:
        """Why the connection ended: the peer's close code; the code we failed
        the connection with (1002, 1007, 1009, 1011); 1006 when it was lost
        without a Close; None while it is open."""
        rcvd = self._proto.close_rcvd
        if rcvd is not None:
            return rcvd.code
        if self._lost_code is not None:
            return self._lost_code
        return None

    @property
    def close_reason(self) -> str | None:
        rcvd = self._proto.close_rcvd
        if rcvd is not None:
            return rcvd.reason
        return self._lost_reason if self._lost_code is not None else None

    @property
    def buffered_amount(self) -> int:
        """Bytes accepted by :meth:`send` and held in user space, not yet given to the kernel."""
        return len(self._wbuf)

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
        that arrives, and :meth:`recv` answers the peer's pings.
        """
        if timeout is not None and timeout < 0:
            raise ValueError("timeout must be None or >= 0")
        was = self._timeout
        self._timeout = timeout
        if timeout == 0 and was != 0:
            # A read the keepalive thread began before this call is
            # non-blocking and short: once it has fed the protocol,
            # pending() counts what it took from the kernel.
            while self._servicing:
                time.sleep(0.0005)
        elif was == 0 and timeout != 0:
            hook = self._keepalive_hook
            if hook is not None:
                hook(self)  # the keepalive may read for us again

    def gettimeout(self) -> float | None:
        return self._timeout

    def setblocking(self, flag: bool) -> None:
        self.settimeout(None if flag else 0.0)

    def fileno(self) -> int:
        """The socket's descriptor, for ``select()`` (check :meth:`pending` first).

        -1 once the connection is closed, as :meth:`socket.socket.fileno`.
        """
        return -1 if self._tcp_closed else self._fd

    def pending(self) -> int:
        """Bytes already read from the kernel but not yet returned by :meth:`recv`.

        ``select()`` can't see them: when this is non-zero, :meth:`recv` has
        something to work on without reading the socket.
        """
        proto = self._proto
        total = len(proto._buf) + sum(len(p) for p in self._parts)
        for event in proto.events:
            total += len(event.payload) if type(event) is Data else 1
        if proto.failure is not None:
            total += 1
        if self._tls:
            total += self._sock.pending()  # type: ignore[attr-defined]
        return total

    def _timeout_error(self, what: str) -> OSError:
        if self._timeout == 0:
            return BlockingIOError(f"{what} would block")
        return TimeoutError(f"{what} timed out")

    # -- low-level I/O ------------------------------------------------------

    def _recv_some(self, deadline: Deadline) -> bytes:
        """Read what the kernel has (b"" at EOF); TimeoutError when the deadline passes."""
        sock = self._sock
        waiter = self._waiter
        if self._nonblocking:
            tls = self._tls
            size = _READ_SIZE if tls else min(max(self._proto._remaining, _READ_SIZE), _LARGE_READ_SIZE)
            while True:
                if not (tls and sock.pending()) and not waiter.readable(_poll_ms(deadline)):  # type: ignore[attr-defined]
                    raise TimeoutError
                try:
                    return sock.recv(size)
                except (ssl.SSLWantReadError, BlockingIOError):
                    if deadline.expired():
                        raise TimeoutError from None
                except ssl.SSLWantWriteError:
                    waiter.writable(_poll_ms(deadline))
        # In the middle of a large frame, read more at once: fewer passes
        # through the parser per megabyte.
        size = min(max(self._proto._remaining, _READ_SIZE), _LARGE_READ_SIZE)
        if deadline.when is None:
            return sock.recv(size)
        while True:
            if not waiter.readable(_poll_ms(deadline)):
                raise TimeoutError
            try:
                return sock.recv(size, _MSG_DONTWAIT)
            except BlockingIOError:
                if deadline.expired():
                    raise TimeoutError from None

    def _send_some(self, data: BytesLike, deadline: Deadline) -> int:
        """Write a prefix of ``data`` without waiting past the deadline (maybe 0 bytes)."""
        sock = self._sock
        while True:
            try:
                n = sock.send(data) if self._nonblocking else sock.send(data, _MSG_DONTWAIT)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                self._congested = True
            else:
                if self._congested:
                    self._drained += n
                self._congested = n < len(data)
                return n
            if deadline.expired() or not self._waiter.writable(_poll_ms(deadline)):
                return 0

    def _send_all(self, data: BytesLike, deadline: Deadline) -> None:
        """Write all of ``data``; TimeoutError if the deadline passes first.

        Even without a deadline this waits in ``poll`` rather than in a
        blocking ``sendall``, so that the keepalive thread sees the progress
        of a long write to a slow peer (``_drained``).
        """
        view = memoryview(data)
        while view:
            n = self._send_some(view, deadline)
            if not n and deadline.expired():
                raise TimeoutError
            view = view[n:]

    # -- sending ----------------------------------------------------------------

    def _closed_error(self) -> ConnectionClosed:
        proto = self._proto
        code = self.close_code
        if code is None:
            code = proto.close_sent.code if proto.close_sent is not None else CloseCode.ABNORMAL_CLOSURE
        reason = self.close_reason or ""
        sent = proto.close_sent
        clean = self._lost_code is None and (
            code in (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD)
            and (
                sent is None or sent.code in (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY, CloseCode.NO_STATUS_RCVD)
            )
        )
        cls = ConnectionClosedOK if clean else ConnectionClosedError
        return cls(code, reason)

    def _check_open_for_sending(self) -> None:
        """Raise ConnectionClosed unless data may still be sent; hold the send lock.

        The peer's Close is answered at once (the protocol queues our Close),
        so ``close_sent`` covers both ways of closing.
        """
        proto = self._proto
        if proto.close_sent is not None or self._lost_code is not None or self._tcp_closed:
            if proto.has_output and self._lost_code is None and not self._tcp_closed:
                # Our answer to the peer's Close, queued by a reader that
                # couldn't take the send lock: nobody else may write it.
                try:
                    self._flush(Deadline(0))
                except ConnectionClosed:
                    pass
            raise self._closed_error()

    def _lose(
        self, exc: BaseException | None, code: int = CloseCode.ABNORMAL_CLOSURE, reason: str = ""
    ) -> ConnectionClosedError:
        """The connection is gone without a closing handshake: shut it down."""
        if self._lost_code is None and self._proto.close_rcvd is None:
            self._lost_code = code
            self._lost_reason = reason or (str(exc) if exc else "connection lost")
        self._shutdown_socket()
        err = ConnectionClosedError(self.close_code or code, self.close_reason or "")
        if exc is not None:
            err.__cause__ = exc
        return err

    def _queue(self, *frames: BytesLike) -> None:
        """Append whole frames to the user-space buffer, after the protocol's own."""
        wbuf = self._wbuf
        if self._proto.has_output:
            wbuf += b"".join(self._proto.data_to_send())
        for frame in frames:
            wbuf += frame

    def _flush(self, deadline: Deadline) -> bool:
        """Write user-space bytes and the protocol's own frames; hold the send lock.

        Returns True when everything was written; raises ConnectionClosedError
        if the socket fails.
        """
        self._queue()
        wbuf = self._wbuf
        try:
            while wbuf:
                n = self._send_some(wbuf, deadline)
                if not n:
                    return False
                del wbuf[:n]
        except OSError as exc:
            raise self._lose(exc) from exc
        return True

    def _acquire_send(self, deadline: Deadline, text: bool | None) -> None:
        """Take the send lock, waiting while another thread owns an open message."""
        cond = self._send_cond
        if not cond.acquire(timeout=deadline.lock_timeout()):
            raise self._timeout_error("send")
        me = threading.get_ident()
        while self._msg_owner is not None and self._msg_owner != me and text is not None:
            if self._lost_code is not None or self._tcp_closed:
                return  # the caller's state check raises ConnectionClosed
            # Bounded waits: the owner may die with the connection and never notify.
            remaining = deadline.remaining()
            cond.wait(1.0 if remaining is None else min(remaining, 1.0))
            if deadline.expired():
                cond.release()
                raise self._timeout_error("send")

    def _end_message(self) -> None:
        self._msg_owner = None
        self._send_cond.notify_all()

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
        if fin and not self._nonblocking and self._timeout is None:
            # The common case in one place: a whole small message, blocking,
            # nothing queued before it. Anything else takes the general path.
            cls = type(data)
            if cls is str:
                payload: bytes = data.encode("utf-8")  # type: ignore[union-attr]
            elif cls is bytes:
                payload = data  # type: ignore[assignment]
            else:
                return self._send(data, fin, False)
            cond = self._send_cond
            cond.acquire()
            try:
                proto = self._proto
                if (
                    self._msg_owner is None
                    and not self._wbuf
                    and not proto._out
                    and proto.close_sent is None
                    and self._lost_code is None
                    and not self._tcp_closed
                    and len(payload) < _JOIN_BELOW
                ):
                    frame = proto.encode_message(payload, cls is str)
                    try:
                        try:
                            n = self._sock.send(frame, _MSG_DONTWAIT)
                        except BlockingIOError:
                            n = 0
                        if n < len(frame):  # the kernel's buffer is full: wait in poll
                            self._congested = True
                            self._send_all(memoryview(frame)[n:], _FOREVER)
                    except OSError as exc:
                        raise self._lose(exc) from exc
                    return len(data)
            finally:
                cond.release()
        return self._send(data, fin, False)

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
        else:
            self._send(data, True, True)

    def _send(self, data: str | BytesLike, fin: bool, everything: bool) -> int:
        text = isinstance(data, str)
        if text:
            payload: BytesLike = data.encode("utf-8")  # type: ignore[union-attr]
        elif isinstance(data, (bytes, bytearray, memoryview)):
            payload = data
        else:
            raise TypeError(f"data must be str or bytes-like, not {type(data).__name__}")
        timeout = self._timeout
        deadline = Deadline(timeout)
        self._acquire_send(deadline, text)
        try:
            self._check_open_for_sending()
            if self._msg_owner is not None and self._msg_text != text:
                kind = "text" if self._msg_text else "binary"
                raise TypeError(f"a {kind} message is open: finish it with the same type")
            if timeout is None:
                self._send_whole(payload, text, fin, deadline)
                return len(data)
            if not everything:
                return self._send_partial(data, payload, text, fin, deadline)
            view = memoryview(payload)
            done = 0
            while True:
                try:
                    n = self._send_partial(view[done:], view[done:], False, fin, deadline, text)
                except (TimeoutError, BlockingIOError) as exc:
                    # Unlike socket.sendall, say how much was accepted, so the
                    # caller can finish the message with the rest.
                    exc.accepted = len(str(view[:done], "utf-8")) if text else done  # type: ignore[union-attr]
                    raise
                done += n
                if done == len(view):
                    return len(data)
        finally:
            self._send_cond.release()

    def _send_whole(self, payload: BytesLike, text: bool, fin: bool, deadline: Deadline) -> None:
        header, body = self._proto.encode_data(payload, text, fin)
        self._note_message(text, fin)
        try:
            if self._wbuf or self._proto.has_output:
                self._queue(header, body)
                if not self._flush(deadline):
                    raise self._timeout_error("send")  # pragma: no cover - blocking flush
                return
            if len(body) < _JOIN_BELOW or self._nonblocking:
                self._send_all(header + body, deadline)
            else:
                try:
                    n = self._sock.sendmsg([header, body], [], _MSG_DONTWAIT)
                except BlockingIOError:
                    n = 0
                if n < len(header) + len(body):
                    self._congested = True
                    self._send_all(
                        memoryview(header + body)[n:] if n < len(header) else memoryview(body)[n - len(header) :],
                        deadline,
                    )
        except OSError as exc:
            raise self._lose(exc) from exc

    def _note_message(self, text: bool, fin: bool) -> None:
        if fin:
            if self._msg_owner is not None:
                self._end_message()
        elif self._msg_owner is None:
            self._msg_owner = threading.get_ident()
            self._msg_text = text

    def _send_partial(
        self,
        data: str | BytesLike,
        payload: BytesLike,
        count_chars: bool,
        fin: bool,
        deadline: Deadline,
        text: bool | None = None,
    ) -> int:
        """Accept what fits now (after waiting until the deadline for some room).

        Returns the bytes accepted, or the characters when ``count_chars``.
        """
        if text is None:
            text = count_chars
        limit = self.write_limit
        view = memoryview(payload)
        # Room for at least the first character: a text frame can't carry
        # part of one, and accepting nothing must raise, as socket.send does.
        need = _utf8_length(view[0]) if text and view else 1
        # Wait until there is room in user space, as socket.send waits for
        # room in the kernel.
        while True:
            self._flush(Deadline(0))
            if limit - len(self._wbuf) >= need or not self._wbuf:
                break
            if deadline.expired() or not self._waiter.writable(_poll_ms(deadline)):
                raise self._timeout_error("send")
        total = len(view)
        done = 0
        while True:
            # The first piece always fits (a write_limit below 4 bytes must
            # still take a 4-byte character when nothing is held).
            room = limit - len(self._wbuf) if done else max(limit - len(self._wbuf), need)
            if room <= 0:
                break
            cut = min(done + room, total)
            if text and cut < total:
                while cut > done and (view[cut] & 0xC0) == 0x80:
                    cut -= 1  # never split a character between frames
                if cut == done:
                    break
            last = cut == total
            header, body = self._proto.encode_data(view[done:cut], text, fin and last)
            self._note_message(text, fin and last)
            self._queue(header, body)
            done = cut
            self._flush(Deadline(0))
            if last:
                break
        if not count_chars or done == total:
            return len(data) if done == total else done
        return len(bytes(view[:done]).decode("utf-8"))

    def _send_control(self, frame: bytes, deadline: Deadline) -> None:
        self._acquire_send(deadline, None)
        try:
            self._check_open_for_sending()
            self._queue(frame)
            if not self._flush(deadline):
                raise self._timeout_error("ping")
        finally:
            self._send_cond.release()

    def ping(self, data: bytes = b"") -> float:
        """Send a Ping and wait for its Pong; return the round trip in seconds.

        An empty ``data`` is replaced by a random payload so that concurrent
        pings are told apart. Honours the timeout.
        """
        payload = bytes(data) or os.urandom(4)
        deadline = Deadline(self._timeout)
        wake = threading.Event()
        with self._ping_lock:
            if payload in self._pings:
                raise ValueError("a ping with this payload is already waiting")
            start = time.monotonic()
            record: list[Any] = [wake, start, None]
            self._pings[payload] = record
        try:
            self._send_control(self._proto.encode_control(Opcode.PING, payload), deadline)
            while record[2] is None:
                if self._recv_lock.acquire(blocking=False):
                    try:
                        if record[2] is None:
                            self._read(deadline)
                    finally:
                        self._release_reader()
                else:
                    wake.clear()
                    if record[2] is None and not wake.wait(deadline.remaining()):
                        raise self._timeout_error("ping")
                if self._proto.close_rcvd is not None and record[2] is None:
                    raise self._closed_error()
        except TimeoutError:
            raise self._timeout_error("ping") from None
        finally:
            with self._ping_lock:
                self._pings.pop(payload, None)
        return float(record[2])

    def send_keepalive_ping(self, payload: bytes) -> bool:
        """Queue a Ping without waiting (for the keepalive thread).

        Returns False if a sender holds the connection: the ping is skipped
        rather than blocking the thread that serves every connection. The
        pong only updates :attr:`latency` and the time of last reception.
        """
        if not self._send_cond.acquire(blocking=False):
            return False
        try:
            self._check_open_for_sending()
            with self._ping_lock:
                self._pings = {k: v for k, v in self._pings.items() if v[0] is not None}
                self._pings[payload] = [None, time.monotonic(), None]
            self._queue(self._proto.encode_control(Opcode.PING, payload))
            self._flush(Deadline(0))
            return True
        except ConnectionClosed:
            return False
        finally:
            self._send_cond.release()

    def service(self, limit: int) -> bool:
        """Read what has arrived without blocking, if no other thread is reading.

        Used by the keepalive thread so that pings are answered and pongs
        and Close frames noted while the application is busy. Messages stay
        queued, in order, for the next :meth:`recv`; nothing is read once
        ``limit`` bytes wait here, so a peer can't make us buffer without
        bound. Returns False when the connection is busy or over the limit
        (:attr:`keepalive_wanted` is then set and the keepalive hook is called
        when the reader is done), and when its input has ended
        (:attr:`input_ended`: stop watching it for good).
        """
        if self.input_ended:
            return False
        self._servicing = True
        try:
            if self._timeout == 0:
                return False  # non-blocking: the application's select() loop reads (see settimeout)
            return self._service(limit)
        finally:
            self._servicing = False

    def _service(self, limit: int) -> bool:
        if self.pending() >= limit or not self._recv_lock.acquire(blocking=False):
            self.keepalive_wanted = True
            # The reader may have left between the check and the flag: then
            # nobody would call the hook, so try once more.
            if self.pending() >= limit or not self._recv_lock.acquire(blocking=False):
                return False
            self.keepalive_wanted = False
        try:
            self._read(Deadline(0))
        except (TimeoutError, BlockingIOError, ConnectionClosed):
            pass
        finally:
            self._release_reader()
        # At EOF (or once lost) the socket stays readable for ever: the
        # caller must stop watching it or it would spin.
        return not self.input_ended

    @property
    def input_ended(self) -> bool:
        """True once nothing more will be read: the peer's Close, EOF or a
        protocol error was seen, or the connection is lost or closed. The
        keepalive thread then stops reading and timing the connection; the
        next :meth:`recv` reports how it ended (1006 when lost)."""
        proto = self._proto
        return (
            proto.eof
            or proto.close_rcvd is not None
            or proto.failure is not None
            or self._lost_code is not None
            or self._tcp_closed
        )

    @property
    def _close_unanswered(self) -> bool:
        """The peer's Close arrived, the application hasn't taken it with
        :meth:`recv`, and we haven't closed: the keepalive's grace applies."""
        proto = self._proto
        return (
            proto.close_rcvd is not None
            and proto.close_sent is None
            and not self._close_taken
            and self._lost_code is None
            and not self._tcp_closed
        )

    def _answer_close(self) -> bool:
        """Answer the peer's Close now (for the keepalive thread, once the
        application has stopped reading): its next :meth:`send` raises
        ``ConnectionClosedOK``, :meth:`recv` still returns what arrived,
        then None. An open message is finished first (RFC 6455 section
        5.5.1). False when a sender holds the connection: try again later.
        """
        if not self._send_cond.acquire(blocking=False):
            return False
        try:
            if self._close_unanswered:
                self._proto.answer_close()
                self._flush(Deadline(0))
        except ConnectionClosed:
            pass
        finally:
            self._send_cond.release()
        return True

    def pong(self, data: bytes = b"") -> None:
        """Send an unsolicited Pong (a unidirectional heartbeat)."""
        self._send_control(self._proto.encode_control(Opcode.PONG, bytes(data)), Deadline(self._timeout))

    def _release_reader(self) -> None:
        self._recv_lock.release()
        if self._pings:
            # Threads waiting in ping() may have to read for themselves now.
            with self._ping_lock:
                for record in self._pings.values():
                    if record[0] is not None:
                        record[0].set()
        if self.keepalive_wanted:
            # The keepalive thread stepped aside while we were reading.
            self.keepalive_wanted = False
            hook = self._keepalive_hook
            if hook is not None:
                hook(self)

    # -- receiving -------------------------------------------------------------

    def _read(self, deadline: Deadline) -> None:
        """Read once and feed the protocol; hold the recv lock."""
        if self._proto.eof:
            return
        try:
            if self._wbuf:
                self._flush_while_waiting(deadline)
            data = self._recv_some(deadline)
        except TimeoutError:
            raise self._timeout_error("recv") from None
        except OSError as exc:
            raise self._lose(exc) from exc
        proto = self._proto
        self.last_received = time.monotonic()
        if data:
            proto.receive_data(data)
        else:
            proto.receive_eof()
        if proto.pongs:
            self._pongs_received()
        if proto.has_output and self._send_cond.acquire(blocking=False):
            # Answer pings now; if a sender holds the lock it will flush them.
            try:
                self._flush(Deadline(0))
            finally:
                self._send_cond.release()

    def _flush_while_waiting(self, deadline: Deadline) -> None:
        """Write bytes accepted by a partial send while we wait to read.

        Nothing else would write them once the senders have returned, and
        the peer may be waiting for them before it answers what this reader
        waits for. Returns when there is something to read (or a sender is
        writing, or no progress can be made); TimeoutError at the deadline.
        """
        sock = self._sock
        writable = False
        while self._wbuf:
            if not self._send_cond.acquire(blocking=False):
                return  # a sender holds the connection: it writes them
            try:
                held = len(self._wbuf)
                if self._flush(Deadline(0)) or writable and len(self._wbuf) == held:
                    return  # all written, or writable without progress (TLS): don't spin
            finally:
                self._send_cond.release()
            if self._tls and sock.pending():  # type: ignore[attr-defined]
                return
            readable, writable = self._waiter.either(_poll_ms(deadline))
            if readable:
                return  # (or an error that the read will report)
            if not writable:
                raise TimeoutError

    def _pongs_received(self) -> None:
        now = time.monotonic()
        pongs = self._proto.pongs
        with self._ping_lock:
            while pongs:
                payload = pongs.popleft()
                record = self._pings.get(payload)
                if record is not None and record[2] is None:
                    record[2] = now - record[1]
                    self.latency = record[2]
                    if record[0] is None:  # a keepalive ping: nobody waits for it
                        del self._pings[payload]
                    else:
                        record[0].set()

    def _next_event(self, deadline: Deadline) -> Data | None:
        """The next data piece, reading as needed; None once the peer closed."""
        proto = self._proto
        while True:
            try:
                event = proto.next_event()
            except ProtocolError as exc:
                raise self._fail(exc) from exc
            if event is None:
                if proto.close_rcvd is not None:
                    return None  # the end of the peer's stream, every time
                if proto.eof or self._tcp_closed or self._lost_code is not None:
                    raise self._lose(None)
                self._read(deadline)
                continue
            if type(event) is Data:
                return event
            assert type(event) is Close
            self._close_taken = True
            self._close_rcvd_event.set()
            return None

    def _fail(self, exc: ProtocolError) -> ConnectionClosedError:
        """The peer broke the protocol: send our Close (queued by the protocol) and end."""
        self._lost_code = exc.close_code
        self._lost_reason = str(exc)
        self._finish(Deadline(self.close_timeout), reader=True)
        return ConnectionClosedError(exc.close_code, str(exc))

    def _acquire_recv(self, deadline: Deadline) -> None:
        if not self._recv_lock.acquire(timeout=deadline.lock_timeout()):
            raise self._timeout_error("recv")

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
        self._recv_calls += 1
        if self._timeout is None:
            deadline = _FOREVER
            self._recv_lock.acquire()
        else:
            deadline = Deadline(self._timeout)
            self._acquire_recv(deadline)
        try:
            if self._fragments is not None:
                self._skip_abandoned(deadline)
            parts = self._parts
            proto = self._proto
            events = proto.events
            while True:
                if events:
                    if not parts:
                        first = events[0]
                        if type(first) is Data and first.fin:
                            # The common case: a whole message is already parsed.
                            events.popleft()
                            return first.payload
                elif (
                    proto.failure is None
                    and not proto.eof
                    and proto.close_rcvd is None
                    and self._lost_code is None
                    and not self._tcp_closed
                ):
                    self._read(deadline)  # nothing parsed yet and nothing ended: read
                    continue
                event = self._next_event(deadline)
                if event is None:
                    return None
                if event.fin:
                    if not parts:
                        return event.payload
                    parts.append(event.payload)
                    message = ("" if event.text else b"").join(parts)
                    parts.clear()
                    return message
                parts.append(event.payload)
        finally:
            self._release_reader()

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
        token = object()
        try:
            while True:
                self._recv_calls += 1
                deadline = Deadline(self._timeout)
                piece: Any = None
                self._acquire_recv(deadline)
                try:
                    if self._fragments is not None and self._fragments is not token:
                        self._skip_abandoned(deadline)  # another iterator's message
                    if self._parts:
                        # Pieces kept by a recv() that timed out: hand them
                        # over first, after letting go of the lock.
                        piece = ("" if isinstance(self._parts[0], str) else b"").join(self._parts)
                        self._parts.clear()
                        fin = False
                    else:
                        event = self._next_event(deadline)
                        if event is None:
                            self._fragments = None
                            return
                        piece, fin = event.payload, event.fin
                    self._fragments = None if fin else token
                finally:
                    self._release_reader()
                yield piece
                if fin:
                    return
                if self._fragments is not token:
                    raise RuntimeError("the rest of this message was discarded: recv() was called before it was read")
        finally:
            if self._fragments is token:
                self._fragments = _ABANDONED  # left part-way: skip the rest

    def _skip_abandoned(self, deadline: Deadline) -> None:
        """Discard the rest of a message that recv_fragments() left part-way; hold the recv lock.

        A timeout keeps the skipping state, so the next call goes on with it.
        """
        self._fragments = _ABANDONED
        while True:
            event = self._next_event(deadline)
            if event is None or event.fin:
                self._fragments = None
                return

    # -- closing ----------------------------------------------------------------

    def _shutdown_socket(self) -> None:
        """Stop the socket both ways: wakes any thread blocked on it."""
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _close_socket(self) -> None:
        if self._tcp_closed:
            return
        self._tcp_closed = True
        self._shutdown_socket()
        self._sock.close()
        self._close_rcvd_event.set()
        callbacks, self._on_close = self._on_close, []
        for callback in callbacks:
            callback()

    def on_close(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` once, when the socket is closed (for limits and keepalive)."""
        if self._tcp_closed:
            callback()
        else:
            self._on_close.append(callback)

    def _finish(self, deadline: Deadline, reader: bool = False) -> None:
        """Our Close is queued: write it, wait for the peer's, close TCP.

        The server closes TCP as soon as the closing handshake is done; the
        client waits for the server to do so (RFC 6455 section 7.1.1).
        ``reader`` says the caller already holds the recv lock.
        """
        try:
            if self._send_cond.acquire(timeout=deadline.lock_timeout()):
                try:
                    self._flush(deadline)
                finally:
                    self._send_cond.release()
        except ConnectionClosed:
            pass
        proto = self._proto
        if reader or self._recv_lock.acquire(timeout=deadline.lock_timeout()):
            try:
                client = proto.side is Side.CLIENT
                while not proto.eof and not self._tcp_closed:
                    if not client and proto.close_rcvd is not None:
                        break  # the closing handshake is done: the server closes first
                    if not client and self._lost_code is not None:
                        self._linger(deadline)  # we failed the connection
                        break
                    if proto.close_rcvd is None and proto.failure is None:
                        # Drop messages still in flight: the caller chose to close.
                        proto.events.clear()
                    try:
                        self._read(deadline)
                    except (TimeoutError, BlockingIOError, ConnectionClosed):
                        break
                    if proto.close_rcvd is not None:
                        self._close_rcvd_event.set()
            finally:
                if not reader:
                    self._recv_lock.release()
        else:
            # Another thread is receiving: it will see the peer's Close.
            self._close_rcvd_event.wait(deadline.remaining())
        self._close_socket()

    def _linger(self, deadline: Deadline) -> None:
        """Half-close, then discard what the peer still sends until its EOF.

        Closing a socket with unread data makes the kernel send RST, which
        can destroy our Close before the peer reads it and breaks the peer's
        sends in flight; reading to the peer's EOF (bounded by the close
        deadline) lets it see our Close and end cleanly.
        """
        try:
            self._sock.shutdown(socket.SHUT_WR)
            while self._recv_some(deadline):
                pass
        except OSError:  # TimeoutError included
            pass

    def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Close the connection with the closing handshake; idempotent.

        Data already accepted by :meth:`send` is written first, then our
        Close; we wait up to ``close_timeout`` for the peer's Close (and, on
        the client, for the server to close TCP), then close the socket.
        Messages still arriving are discarded: use ``shutdown(SHUT_WR)`` to
        keep reading them. When this answers the peer's Close and ``code`` is
        left at its default, the peer's code is echoed (RFC 6455 section 5.5.1).
        """
        if self._tcp_closed:
            return
        send: int | None = code
        rcvd = self._proto.close_rcvd
        if rcvd is not None and code == CloseCode.NORMAL_CLOSURE and not reason:
            send = None if rcvd.code == CloseCode.NO_STATUS_RCVD else rcvd.code
        deadline = Deadline(self.close_timeout)
        self._queue_close(send, reason, deadline)
        self._finish(deadline)

    def _queue_close(self, code: int | None, reason: str, deadline: Deadline) -> None:
        if self._proto.close_sent is not None or self._lost_code is not None:
            return
        if not self._send_cond.acquire(timeout=deadline.lock_timeout()):
            # A sender is stuck on a peer that does not read: give up on it.
            self._shutdown_socket()
            return
        try:
            self._proto.send_close(code, reason)
        finally:
            self._send_cond.release()

    def shutdown(self, how: int) -> None:
        """Half-close like :meth:`socket.socket.shutdown`.

        ``SHUT_WR``: send our Close now (after the data already accepted);
        further :meth:`send` raises ``ConnectionClosedOK`` while :meth:`recv`
        keeps returning the peer's messages until its Close, then None.
        ``SHUT_RDWR``: send Close and close the socket without waiting.
        """
        if how == socket.SHUT_WR:
            deadline = Deadline(self.close_timeout)
            self._queue_close(CloseCode.NORMAL_CLOSURE, "", deadline)
            if self._send_cond.acquire(timeout=deadline.lock_timeout()):
                try:
                    self._flush(deadline)
                finally:
                    self._send_cond.release()
        elif how == socket.SHUT_RDWR:
            if not self._tcp_closed:
                self._queue_close(CloseCode.NORMAL_CLOSURE, "", Deadline(0))
                if self._send_cond.acquire(blocking=False):
                    try:
                        self._flush(Deadline(0))
                    except ConnectionClosed:
                        pass
                    finally:
                        self._send_cond.release()
                self._close_socket()
        else:
            raise ValueError("shutdown() takes socket.SHUT_WR or socket.SHUT_RDWR")

    def abort(self, code: int = CloseCode.ABNORMAL_CLOSURE, reason: str = "") -> None:
        """Drop the connection at once, without a closing handshake.

        Threads blocked in :meth:`recv` or :meth:`send` wake with
        ``ConnectionClosedError``; :attr:`close_code` becomes ``code``.
        """
        self._lose(None, code, reason)
        self._close_rcvd_event.set()

    def __enter__(self) -> WebSocket:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __iter__(self) -> Iterator[Message]:
        """Iterate over received messages until the peer closes."""
        while True:
            message = self.recv()
            if message is None:
                return
            yield message
