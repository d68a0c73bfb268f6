"""The socket under a :class:`~blockws.connection.WebSocket`: reads and writes with deadlines.

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

This module knows nothing of WebSocket frames; the caller holds the locks:
reads under the connection's reader lock, writes (and ``drained``,
``congested``) under its send lock. Its own TLS lock only makes the one
SSL object's reads and writes take turns (OpenSSL's rule); it is a leaf,
held for one non-blocking call.
"""

from __future__ import annotations

import select
import socket
import ssl
import threading
import time
from typing import Any, Union

from . import _accel
from .utils import Deadline

__all__ = ["Transport", "MSG_DONTWAIT", "READ_SIZE", "LARGE_READ_SIZE", "poll_ms"]

MSG_DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)
READ_SIZE = 64 * 1024
# In the middle of a large frame the caller asks for more at once: fewer
# passes through the parser per megabyte.
LARGE_READ_SIZE = 256 * 1024

BytesLike = Union[bytes, bytearray, memoryview]
_FOREVER = Deadline(None)

# send(fd, data) that never waits and keeps the GIL (bytes sent, 0 when the
# kernel has no room): the C accelerator's, where it is built. With many
# threads busy, taking the GIL back after socket.send() costs a wait and a
# thread switch, more than the send itself.
_send_now = _accel.send_now if MSG_DONTWAIT else None
# Larger writes let the GIL go: copying them into the kernel takes long
# enough for other threads to want it.
KEEP_GIL_BELOW = 64 * 1024


def poll_ms(deadline: Deadline) -> int:
    """The time left, in ``poll``'s milliseconds (-1: for ever)."""
    remaining = deadline.remaining()
    return -1 if remaining is None else int(remaining * 1000 + 0.999)


# select.poll where the platform has it (not Windows).
_POLL = getattr(select, "poll", None)


class Waiter:
    """Waits until one descriptor is readable or writable, in milliseconds (-1: for ever).

    ``poll`` where the platform has it (no ``FD_SETSIZE`` limit); ``select``
    where it doesn't (Windows). An error or hang-up counts as readable: the
    read that follows reports it. Each ``poll`` object is made the first
    time it is needed: a blocking connection that never waits with a
    timeout never needs one.
    """

    __slots__ = ("_fd", "_rpoll", "_wpoll", "_rwpoll")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._rpoll: Any = None
        self._wpoll: Any = None
        self._rwpoll: Any = None

    def _poller(self, events: int) -> Any:
        # Two threads may both make one: each works, the last one is kept.
        assert _POLL is not None
        poller = _POLL()
        poller.register(self._fd, events)
        return poller

    def _select(self, read: bool, write: bool, ms: int) -> tuple[bool, bool]:
        fds = [self._fd]
        r, w, x = select.select(fds if read else [], fds if write else [], fds, None if ms < 0 else ms / 1000)
        return bool(r or x), bool(w)

    def readable(self, ms: int) -> bool:
        if _POLL is None:
            return self._select(True, False, ms)[0]
        poller = self._rpoll
        if poller is None:
            poller = self._rpoll = self._poller(select.POLLIN)
        return bool(poller.poll(ms))

    def writable(self, ms: int) -> bool:
        if _POLL is None:
            return any(self._select(False, True, ms))
        poller = self._wpoll
        if poller is None:
            poller = self._wpoll = self._poller(select.POLLOUT)
        return bool(poller.poll(ms))

    def either(self, ms: int) -> tuple[bool, bool]:
        """(readable or failed, writable); both False when the time ran out."""
        if _POLL is None:
            return self._select(True, True, ms)
        poller = self._rwpoll
        if poller is None:
            poller = self._rwpoll = self._poller(select.POLLIN | select.POLLOUT)
        events = poller.poll(ms)
        if not events:
            return False, False
        mask = events[0][1]
        return bool(mask & ~select.POLLOUT), bool(mask & select.POLLOUT)


class Transport:
    """One connected stream socket, plain or TLS, read and written against deadlines.

    ``drained`` counts the bytes the kernel took after it had refused some
    (its buffer was full, so room came back only because the peer read):
    the keepalive takes that as a sign of life. Bytes written into a buffer
    with room prove nothing: a dead peer's buffer takes them too.
    """

    __slots__ = ("sock", "borrowed", "tls", "nonblocking", "fd", "waiter", "drained", "congested", "_tls_lock")

    def __init__(self, sock: socket.socket, borrowed: bool = False) -> None:
        self.sock = sock
        # A socket lent by a web server (wsgi_app, accept_http) is shut down
        # at the end but not closed: the server still holds it, and a write
        # of its own then fails as "client gone" instead of on a dead descriptor.
        self.borrowed = borrowed
        self.tls = isinstance(sock, ssl.SSLSocket)
        # One SSL object must not read and write at once (OpenSSL's rule; the
        # ssl module releases the GIL in both): a reader thread and a sender
        # thread take turns here. Held only for one non-blocking call.
        self._tls_lock = threading.Lock() if self.tls else None
        # Flags can't make a TLS socket's calls non-blocking, and some
        # platforms have no MSG_DONTWAIT: such sockets are non-blocking for
        # good and every wait goes through the waiter. The others stay in
        # blocking mode: a blocking send or recv is then one system call.
        self.nonblocking = self.tls or not MSG_DONTWAIT
        if self.nonblocking:
            sock.setblocking(False)
        else:
            sock.settimeout(None)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass  # not TCP (a Unix socket given as sock=)
        self.fd = sock.fileno()
        self.waiter = Waiter(self.fd)
        self.drained = 0
        self.congested = False

    def addresses(self) -> tuple[Any, Any]:
        """(local, remote) addresses; (None, None) when the socket is no longer connected."""
        try:
            return self.sock.getsockname(), self.sock.getpeername()
        except OSError:
            return None, None

    def buffered(self) -> int:
        """Bytes TLS decrypted and holds, which ``poll`` can't see."""
        if self._tls_lock is None:
            return 0
        with self._tls_lock:
            return self.sock.pending()  # type: ignore[attr-defined, no-any-return]

    def recv_some(self, size: int, deadline: Deadline) -> bytes:
        """Read up to ``size`` bytes the kernel has (b"" at EOF); TimeoutError when the deadline passes."""
        sock = self.sock
        waiter = self.waiter
        if self.nonblocking:
            tls = self.tls
            if tls:
                size = READ_SIZE
            while True:
                if not (tls and self.buffered()) and not waiter.readable(poll_ms(deadline)):
                    raise TimeoutError
                try:
                    if self._tls_lock is None:
                        return sock.recv(size)
                    with self._tls_lock:
                        return sock.recv(size)
                except (ssl.SSLWantReadError, BlockingIOError):
                    if deadline.expired():
                        raise TimeoutError from None
                except ssl.SSLWantWriteError:
                    waiter.writable(poll_ms(deadline))
        when = deadline.when
        if when is None:
            return sock.recv(size)
        if time.monotonic() >= when:  # (deadline.expired(), a call fewer per keepalive read)
            # Nothing to wait for (a non-blocking read, the keepalive's):
            # one system call rather than poll() and then recv().
            try:
                return sock.recv(size, MSG_DONTWAIT)
            except BlockingIOError:
                raise TimeoutError from None
        while True:
            if not waiter.readable(poll_ms(deadline)):
                raise TimeoutError
            try:
                return sock.recv(size, MSG_DONTWAIT)
            except BlockingIOError:
                if deadline.expired():
                    raise TimeoutError from None

    def recv_into(self, view: memoryview, deadline: Deadline) -> int:
        """:meth:`recv_some` reading into ``view`` (bytes, not empty) instead: how many (0 at EOF)."""
        sock = self.sock
        waiter = self.waiter
        if self.nonblocking:
            tls = self.tls
            while True:
                if not (tls and self.buffered()) and not waiter.readable(poll_ms(deadline)):
                    raise TimeoutError
                try:
                    if self._tls_lock is None:
                        return sock.recv_into(view)
                    with self._tls_lock:
                        return sock.recv_into(view)
                except (ssl.SSLWantReadError, BlockingIOError):
                    if deadline.expired():
                        raise TimeoutError from None
                except ssl.SSLWantWriteError:
                    waiter.writable(poll_ms(deadline))
        if deadline.when is None:
            return sock.recv_into(view)
        while True:
            if not waiter.readable(poll_ms(deadline)):
                raise TimeoutError
            try:
                return sock.recv_into(view, 0, MSG_DONTWAIT)
            except BlockingIOError:
                if deadline.expired():
                    raise TimeoutError from None

    def send_some(self, data: BytesLike, deadline: Deadline) -> int:
        """Write a prefix of ``data`` without waiting past the deadline (maybe 0 bytes)."""
        sock = self.sock
        while True:
            try:
                if self._tls_lock is not None:
                    with self._tls_lock:
                        n = sock.send(data)
                elif self.nonblocking:
                    n = sock.send(data)
                elif _send_now is not None and len(data) < KEEP_GIL_BELOW:
                    n = _send_now(sock.fileno(), data)
                else:
                    n = sock.send(data, MSG_DONTWAIT)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                n = 0
            if n or not data:
                if self.congested:
                    self.drained += n
                self.congested = n < len(data)
                return n
            self.congested = True
            if deadline.expired() or not self.waiter.writable(poll_ms(deadline)):
                return 0

    def send_all(self, data: BytesLike, deadline: Deadline) -> None:
        """Write all of ``data``; TimeoutError if the deadline passes first.

        Even without a deadline this waits in ``poll`` rather than in a
        blocking ``sendall``, so that the keepalive thread sees the progress
        of a long write to a slow peer (``drained``).
        """
        view = memoryview(data)
        while view:
            n = self.send_some(view, deadline)
            if not n and deadline.expired():
                raise TimeoutError
            view = view[n:]

    def send_whole(self, frame: bytes) -> None:
        """Write all of ``frame``, blocking (not for non-blocking sockets).

        One system call when the kernel has room; when it hasn't, the wait is
        in ``poll``, as in :meth:`send_all`.
        """
        if _send_now is not None and len(frame) < KEEP_GIL_BELOW:
            n = _send_now(self.sock.fileno(), frame)
        else:
            try:
                n = self.sock.send(frame, MSG_DONTWAIT)
            except BlockingIOError:
                n = 0
        if n < len(frame):
            self.send_rest(memoryview(frame)[n:])

    def send_rest(self, rest: BytesLike) -> None:
        """Write the rest of a frame the kernel took only part of (or none), blocking."""
        self.congested = True
        self.send_all(rest, _FOREVER)

    def send_frame(self, header: bytes, body: BytesLike, deadline: Deadline) -> None:
        """Write a frame given as header and payload, without joining a large payload to its header."""
        if self.nonblocking:
            self.send_all(header + body, deadline)
            return
        try:
            n = self.sock.sendmsg([header, body], [], MSG_DONTWAIT)
        except BlockingIOError:
            n = 0
        if n < len(header) + len(body):
            self.congested = True
            rest = memoryview(header + body)[n:] if n < len(header) else memoryview(body)[n - len(header) :]
            self.send_all(rest, deadline)

    def linger(self, deadline: Deadline) -> None:
        """Half-close, then discard what the peer still sends until its EOF.

        Closing a socket with unread data makes the kernel send RST, which
        can destroy our last frame before the peer reads it and breaks the
        peer's sends in flight; reading to the peer's EOF (bounded by the
        deadline) lets it see that frame and end cleanly.
        """
        try:
            self._shutdown(socket.SHUT_WR)
            while self.recv_some(READ_SIZE, deadline):
                pass
        except OSError:  # TimeoutError included
            pass

    def half_close(self) -> None:
        """Send our FIN now: the peer sees the end of our stream; reading goes on."""
        try:
            self._shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def shutdown(self) -> None:
        """Stop the socket both ways: wakes any thread blocked on it."""
        try:
            self._shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _shutdown(self, how: int) -> None:
        # SSLSocket.shutdown() also drops its SSL object, and a read after
        # that returns the raw TCP bytes: the peer's ciphertext would reach
        # the parser as frames. Shutting the descriptor down keeps the SSL
        # object, so a later read sees the end, as on a plain socket.
        socket.socket.shutdown(self.sock, how)

    def close(self) -> None:
        self.shutdown()
        if not self.borrowed:
            self.sock.close()

    def set_tcp_keepalive(self, idle: int, interval: int, count: int) -> None:
        """Turn on ``SO_KEEPALIVE`` with the options this platform has."""
        sock = self.sock
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            for name, value in (("TCP_KEEPIDLE", idle), ("TCP_KEEPINTVL", interval), ("TCP_KEEPCNT", count)):
                if hasattr(socket, name):  # not every platform has them all
                    sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
        except OSError:
            pass
