"""The server side: :func:`accept` on any socket, :class:`WebSocketHandler` for
:mod:`socketserver`, and :func:`serve` for a ready threaded server.

:class:`Server` runs a thread per connection, like
``socketserver.ThreadingTCPServer`` (threads reused from one connection to
the next: :mod:`blockws.handlers`), but its accept loop waits on a selector
that a socketpair wakes for :meth:`Server.shutdown` (no polling interval),
and it tracks and joins its handler threads. ``shutdown()`` works from any
thread, a handler's included, and is bounded by its grace whatever the
peers do.

The opening handshake is :mod:`blockws.accepting`'s, the listening sockets
:mod:`blockws.listening`'s, running a handler (and :class:`WebSocketHandler`)
:mod:`blockws.handling`'s, the shutdown's steps :mod:`blockws.stopping`'s;
:func:`accept`, :func:`run_handler` and :class:`WebSocketHandler` are
imported from here as ever.

Locks: ``Server._lock`` (with its condition ``_changed``) guards what the
accept loop, the handler threads and :meth:`Server.shutdown` share: the
handler threads, ``connections`` (copied under it for
:attr:`Server.connections`), the handshakes in flight, the count of active
connections, the threads inside ``shutdown()``, the grace and the Unix
socket file. ``_shutdown_requested`` is written under it (after the grace)
and read without it, as a flag. The refusals (:mod:`blockws.refusing`) and
the selector are the accept loop's alone. Each connection's own locks are
in :mod:`blockws.connection`.
"""

from __future__ import annotations

import errno
import inspect
import logging
import operator
import os
import selectors
import socket
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, Union

from . import deflate
from .accepting import Acceptor, accept, upgrade_gate
from .accepting import ProcessRequest as ProcessRequest
from .connection import WebSocket
from .exceptions import InvalidHandshake
from .frames import CloseCode
from .handlers import Pool
from .handling import WebSocketHandler as WebSocketHandler
from .handling import run_handler as run_handler
from .handshake import check_subprotocols
from .http import Response
from .keepalive import KeepAlive
from .listening import listen_tcp, listen_unix, remove_socket_file
from .refusing import PerAddress, Refusals, address_of, check_per_ip, too_many, too_many_from, unregister
from .settings import DEFAULT_OPEN_TIMEOUT as DEFAULT_OPEN_TIMEOUT
from .stopping import DEFAULT_SHUTDOWN_GRACE as DEFAULT_SHUTDOWN_GRACE
from .stopping import Stopping, check_grace

__all__ = ["accept", "serve", "Server", "WebSocketHandler"]
# Also imported from here by users, as before the handshake had a module of
# its own (hence the "import X as X" above): ProcessRequest, DEFAULT_OPEN_TIMEOUT.

logger = logging.getLogger("blockws.server")

# Windows before 3.10 has no AF_UNIX at all (a name, for the tests to clear).
_HAS_AF_UNIX = hasattr(socket, "AF_UNIX")
# A handshake's watch (see _watch_handshake) is a bare duplicate descriptor
# where sockets are descriptors; on Windows a socket.dup() (os.dup() can't
# duplicate a socket handle there).
_BARE_DUP = os.name == "posix"
_Watch = Union[int, socket.socket]


class _Opening:
    """One connection's opening handshake, as :class:`Server` tracks it."""

    __slots__ = ("ip", "counted", "cut", "done")

    def __init__(self, ip: str | None) -> None:
        self.ip = ip
        self.counted = False  # holds one of its address's max_connections_per_ip
        self.cut = False  # refused by shutdown(): no HTTP answer was sent
        self.done = False  # over (101 or not): no longer one of the handshakes under way


def check_options(options: dict[str, Any]) -> None:
    """Check :func:`accept`'s options once, not in every connection's thread later.

    Raises:
        TypeError: an unknown option.
        ValueError: a bad value.
    """
    inspect.signature(accept).bind(None, **options)
    check_subprotocols(options.get("subprotocols"))
    deflate.settings(options.get("compression", "deflate"))
    keepalive = options.get("keepalive", True)
    if keepalive is not True:  # (True would make the shared KeepAlive now)
        KeepAlive.resolve(keepalive)


class Server(Stopping):
    """A threaded WebSocket server: one thread per connection.

    A handler thread that is done waits a while for the next connection
    rather than ending (see :mod:`blockws.handlers`): a ``threading.local``
    value a handler leaves on it is seen by a later handler on that thread.

    Made by :func:`serve`. Use ``serve_forever()`` and ``shutdown()`` as with
    :mod:`socketserver`, or a ``with`` block (which shuts it down on exit).
    ``shutdown_grace`` (seconds, default 1.5) is how long :meth:`shutdown`
    waits for the peers' Close before it aborts their connections.
    """

    def __init__(
        self,
        handler: Callable[[WebSocket], Any],
        host: str | None = None,
        port: int | None = None,
        *,
        sock: socket.socket | None = None,
        path: str | os.PathLike[str] | None = None,
        family: int | None = None,
        dualstack_ipv6: bool | None = None,
        reuse_port: bool = False,
        max_connections: int | None = None,
        max_connections_per_ip: int | None = None,
        backlog: int = 128,
        shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE,
        **options: Any,
    ) -> None:
        self.handler = handler
        self.max_connections = max_connections
        self.max_connections_per_ip = check_per_ip(max_connections_per_ip)
        """The most open connections one client address may hold (None: no limit)."""
        self.shutdown_grace = check_grace("shutdown_grace", shutdown_grace)
        """Seconds :meth:`shutdown` waits for the peers' Close (settable)."""
        check_options(options)
        self.options = options
        self._accept = Acceptor(options)
        # server_close() removes the Unix socket file only if it is still ours.
        self._unix_file: tuple[str, tuple[int, int]] | None = None
        if sock is not None or path is not None:
            given = {"host": host, "port": port, "family": family, "dualstack_ipv6": dualstack_ipv6}
            extra = [name for name, value in given.items() if value is not None]
            if reuse_port:
                extra.append("reuse_port")
            if sock is not None and path is not None:
                extra.insert(0, "path")
            if extra:
                raise ValueError(f"serve(): {'sock' if sock is not None else 'path'} given, so not {', '.join(extra)}")
        if sock is not None:
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f"serve(sock=...) needs a SOCK_STREAM socket, not {sock.type!r}")
            sock.listen(backlog)  # harmless if the caller already did
            self.socket = sock
        elif path is not None:
            self.socket = self._listen_unix(os.fspath(path), backlog)
        else:
            self.socket = listen_tcp(host or "", port or 0, family, dualstack_ipv6, backlog, reuse_port)
        # A listener shared with other processes (sock=, pre-fork workers)
        # may be taken by them between select() and accept(): never block there.
        self.socket.setblocking(False)
        # What _accept_one() builds each new socket with.
        self._family, self._type, self._proto = int(self.socket.family), int(self.socket.type), self.socket.proto
        self.address: Any = self.socket.getsockname()
        """The address listened on, as ``socket.getsockname()`` gives it:
        ``(host, port)`` for IPv4, ``(host, port, flowinfo, scope_id)`` for
        IPv6, the path for a Unix socket."""
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._lock = threading.Lock()
        # Notified when a handler thread ends or a thread enters shutdown().
        self._changed = threading.Condition(self._lock)
        self._threads: set[threading.Thread] = set()  # those serving a connection now
        self._pool = Pool()  # handler threads, reused (see blockws.handlers)
        self._connections: dict[WebSocket, threading.Thread] = {}  # -> its handler's thread
        # Threads inside shutdown(): no shutdown() waits for them (a handler
        # calling it can't return while it runs).
        self._in_shutdown: set[threading.Thread] = set()
        # The smallest grace of the shutdown() calls so far: also bounds the
        # Close of a connection that comes to an end after they looked.
        self._grace: float | None = None
        # A duplicate descriptor of each socket whose opening handshake has
        # not sent its 101 yet: shutdown() cuts those short through it (TLS
        # wrapping replaces the socket object; the duplicate still reaches
        # the socket). Past the 101 a connection gets its 1001 instead.
        self._handshaking: set[_Watch] = set()
        self._active = 0
        # Handshakes under way (accepted by the loop, neither open nor failed yet).
        self._opening = 0
        # Open connections per client address, for max_connections_per_ip.
        self._per_ip = PerAddress()
        # stats(): counts under the lock; the message and byte counts of
        # connections still open are theirs, summed when asked, those of
        # ended ones folded into _ended when they end.
        self._accepted = 0
        self._refused = 0
        self._ended = [0, 0, 0, 0]  # messages received, sent, bytes received, sent
        self._closed: dict[int, int] = {}
        # The code shutdown() closes connections with (1012 for a restart).
        self._close_code: int = CloseCode.GOING_AWAY
        # shutdown() stopped the accept loop (or is about to): it doesn't start again.
        self._accepting_stopped = False
        self._refusals = Refusals(self._selector)
        self._shutdown_requested = False
        self._stopped = threading.Event()
        self._stopped.set()

    def _listen_unix(self, path: str, backlog: int) -> socket.socket:
        if not _HAS_AF_UNIX:
            raise OSError(errno.EAFNOSUPPORT, "serve(path=...): this platform has no Unix sockets (AF_UNIX)")
        sock, inode = listen_unix(path, backlog)
        if inode is not None:
            self._unix_file = (path, inode)
        return sock

    @property
    def port(self) -> int:
        """The TCP port listened on (the one picked for ``port=0``).

        Raises:
            ValueError: the server listens on a Unix socket (see
                :attr:`address`).
        """
        if self.socket.family not in (socket.AF_INET, socket.AF_INET6):
            raise ValueError(f"a Unix socket server has no port (its address is {self.address!r})")
        return int(self.address[1])

    @property
    def connections(self) -> list[WebSocket]:
        """The open connections."""
        with self._lock:
            return list(self._connections)

    def stats(self) -> dict[str, Any]:
        """What the server has done since it was made: a new dict each call.

        Safe from any thread at any time, and cheap (a sum over the open
        connections, under the server's lock: nothing is counted under a
        shared lock as messages go). The keys, all integers but ``closed``:

        - ``connections``: open now (their 101 sent, not yet ended);
        - ``accepted``: opening handshakes answered 101;
        - ``refused``: handshakes answered with another status: 503
          (``max_connections``), 429 (``max_connections_per_ip``), 401
          (``auth``'s challenge included), 403 (``origins``), 400 (a bad
          request, a plain HTTP request on a TLS port), ``process_request``'s
          answers (whatever their status) and its 500s;
        - ``messages_received``, ``messages_sent``: data messages received
          (counted as they arrive, whether or not the handler took them
          yet) and sent (accepted by ``send()``, :func:`~blockws.broadcast`
          included);
        - ``bytes_received``, ``bytes_sent``: their payload bytes, as the
          application sees them (after decompression; text as UTF-8);
        - ``closed``: a dict from close code to the number of connections
          that ended with it (1006: lost without a closing handshake).
        """
        with self._lock:
            received, sent, bytes_received, bytes_sent = self._ended
            for ws in self._connections:
                counts = ws._counts()  # private: the server's business, not the application's
                received += counts[0]
                sent += counts[1]
                bytes_received += counts[2]
                bytes_sent += counts[3]
            return {
                "connections": len(self._connections),
                "accepted": self._accepted,
                "refused": self._refused,
                "messages_received": received,
                "messages_sent": sent,
                "bytes_received": bytes_received,
                "bytes_sent": bytes_sent,
                "closed": dict(self._closed),
            }

    def serve_forever(self) -> None:
        """Accept connections until :meth:`shutdown` is called (at once if it was already)."""
        with self._lock:
            # Under the lock: shutdown() either sees this loop running or it
            # has already asked, and the loop never starts on a closed socket.
            if self._shutdown_requested or self._accepting_stopped:
                return
            self._stopped.clear()
        # Held while accepting: the keepalive thread stays for the next connection.
        keepalive = KeepAlive.resolve(self.options.get("keepalive", True))
        if keepalive is not None:
            keepalive.hold()
        try:
            self._selector.register(self.socket, selectors.EVENT_READ)
            self._selector.register(self._wake_r, selectors.EVENT_READ)
            while not self._shutdown_requested:
                # The only timeout is the next refused connection's linger deadline.
                wait = self._refusals.next_wait()
                for key, _ in self._selector.select(None if wait is None else max(wait, 0.0)):
                    if key.fileobj is self._wake_r:
                        return
                    if key.fileobj is not self.socket:
                        self._refusals.drain(key.fileobj)  # type: ignore[arg-type]
                        continue
                    try:
                        conn, addr = self._accept_one()
                    except OSError:
                        continue
                    self._start(conn, addr)
                self._refusals.expire()
        finally:
            unregister(self._selector, self.socket)
            unregister(self._selector, self._wake_r)
            self._refusals.forget_all()
            if keepalive is not None:
                keepalive.release()
            self._stopped.set()

    def _accept_one(self) -> tuple[socket.socket, Any]:
        """``self.socket.accept()``, without its cost per connection where that can be saved.

        ``socket.accept()`` turns the listener's family and type into enums
        for each new socket (with the watch's ``socket.dup()``, ~30,000
        instructions of a handshake's 577,000, counted): a plain listener's
        are given as the ints they are. The new socket is
        blocking either way (the listener is non-blocking, see ``__init__``).
        """
        listener = self.socket
        if type(listener) is not socket.socket:
            return listener.accept()
        fd, addr = listener._accept()  # type: ignore[attr-defined]
        return socket.socket(self._family, self._type, self._proto, fd), addr

    def _start(self, conn: socket.socket, addr: Any) -> None:
        ip = address_of(addr) if self.max_connections_per_ip is not None else None
        with self._lock:
            over = self.max_connections is not None and self._active >= self.max_connections
            # Checked again before the 101 (_commit_upgrade), exactly; this
            # one costs a flood from one address no thread.
            crowded = ip is not None and self._per_ip.full(ip, self.max_connections_per_ip)
            if over or crowded:
                self._refused += 1
            else:
                self._active += 1
                self._opening += 1
        if over or crowded:
            answer = too_many(self.max_connections) if over else too_many_from(ip or "", self.max_connections_per_ip)
            self._refusals.refuse(conn, answer, self.options.get("ssl_context"))
            return
        opening = _Opening(ip)
        # Under the lock: the thread is in _threads before its job can end and discard it.
        with self._lock:
            self._threads.add(self._pool.run(lambda: self._serve_one(conn, addr, opening), f"blockws {addr}"))

    def _serve_one(self, conn: socket.socket, addr: Any, opening: _Opening) -> None:
        ws = None
        try:
            watch = self._watch_handshake(conn)
            upgrade_gate.commit = lambda: self._commit_upgrade(watch, opening)
            refused = False
            try:
                ws = self._accept(conn)
            except InvalidHandshake as exc:
                # Answered with an HTTP status (sent or attempted), unless
                # shutdown() cut it before any answer.
                refused = not opening.cut
                logger.info("handshake with %s failed: %s", addr, exc)
            except (TimeoutError, OSError) as exc:
                logger.info("handshake with %s failed: %s", addr, exc)
            finally:
                upgrade_gate.commit = None
                self._unwatch_handshake(watch)
            with self._lock:
                opening.done = True
                self._opening -= 1
                if ws is not None:
                    self._accepted += 1
                    self._connections[ws] = threading.current_thread()
                elif refused:
                    self._refused += 1
                if self._shutdown_requested or self._accepting_stopped:  # (set under this lock before anyone waits)
                    self._changed.notify_all()  # a shutdown() may wait for the handshakes to end
            if ws is None or self._shutdown_requested:
                return
            run_handler(self.handler, ws, addr)
        finally:
            if ws is not None:
                code: int = CloseCode.NORMAL_CLOSURE
                if self._shutdown_requested:
                    # Closed after shutdown() looked (a handler that called
                    # it, or one accepted just then): the grace bounds it too.
                    code = self._close_code
                    self._shorten_close(ws)
                try:
                    ws.close(code)
                except Exception:  # pragma: no cover - close never raises for a closed peer
                    logger.exception("closing failed")
            else:
                conn.close()
            with self._lock:
                if ws is not None and self._connections.pop(ws, None) is not None:
                    self._fold(ws)
                if opening.counted and opening.ip is not None:
                    self._per_ip.remove(opening.ip)
                if not opening.done:  # (an exception past accept())
                    opening.done = True
                    self._opening -= 1
                self._active -= 1
                self._threads.discard(threading.current_thread())
                if self._shutdown_requested or self._accepting_stopped:  # only shutdown() waits, once it set one
                    self._changed.notify_all()

    def _watch_handshake(self, conn: socket.socket) -> _Watch | None:
        """Register a duplicate of ``conn`` for shutdown() to cut its handshake short."""
        try:
            # A bare descriptor where one can be used: socket.dup() builds a
            # socket object (and converts its family and type to enums again).
            watch: _Watch = os.dup(conn.fileno()) if _BARE_DUP else conn.dup()
        except OSError:  # out of descriptors: the handshake still ends by open_timeout
            return None
        with self._lock:
            self._handshaking.add(watch)
            if self._shutdown_requested:
                self._abort_handshakes()
        return watch

    def _unwatch_handshake(self, watch: _Watch | None) -> None:
        if watch is not None:
            with self._lock:
                self._handshaking.discard(watch)
            if isinstance(watch, int):
                os.close(watch)
            else:
                watch.close()

    def _fold(self, ws: WebSocket) -> None:
        """Add an ended connection's counts to the totals; hold the lock."""
        self._ended = list(map(operator.add, self._ended, ws._counts()))  # (see stats())
        code = ws.close_code
        if code is None:  # pragma: no cover - close() always leaves one
            code = CloseCode.ABNORMAL_CLOSURE
        self._closed[code] = self._closed.get(code, 0) + 1

    def _commit_upgrade(self, watch: _Watch | None, opening: _Opening) -> Response | None:
        """The 101 is about to go out: from now on shutdown() closes with 1001.

        Under the lock shutdown() takes, so a handshake is either cut short
        or committed, never cut after its 101 was sent. Returns the 429 to
        answer instead when the client's address holds
        ``max_connections_per_ip`` open connections already (it may have
        opened them while this handshake ran).
        """
        with self._lock:
            if self._shutdown_requested:
                opening.cut = True
                raise InvalidHandshake("the server is shutting down")
            ip = opening.ip
            if ip is not None:
                if self._per_ip.full(ip, self.max_connections_per_ip):
                    return too_many_from(ip, self.max_connections_per_ip)
                self._per_ip.add(ip)
                opening.counted = True
            if watch is not None:
                self._handshaking.discard(watch)
        return None

    def _abort_handshakes(self) -> None:
        """Make every opening handshake that hasn't sent its 101 fail at once; hold the lock."""
        for watch in self._handshaking:
            try:
                if isinstance(watch, int):
                    # Still open: it is closed only after it left the set, under the lock.
                    sock = socket.socket(fileno=watch)
                    try:
                        sock.shutdown(socket.SHUT_RDWR)
                    finally:
                        sock.detach()
                else:
                    watch.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def server_close(self) -> None:
        """Close the listening socket (done by :meth:`shutdown`); idempotent.

        A Unix socket file that :func:`serve` made (``path=``) is removed,
        unless another one replaced it meanwhile.
        """
        self.socket.close()
        self._pool.close()
        with self._lock:
            unix_file, self._unix_file = self._unix_file, None
        if unix_file is not None:
            remove_socket_file(*unix_file)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()


def serve(
    handler: Callable[[WebSocket], Any],
    host: str | None = None,
    port: int | None = None,
    *,
    sock: socket.socket | None = None,
    path: str | os.PathLike[str] | None = None,
    family: int | None = None,
    dualstack_ipv6: bool | None = None,
    reuse_port: bool = False,
    **options: Any,
) -> Server:
    """Make a threaded WebSocket server listening on ``host:port``, ``sock`` or ``path``.

    ``handler(ws)`` runs in a thread of its own for each connection; the
    connection is closed when it returns. Call ``serve_forever()``::

        def echo(ws):
            for message in ws:
                ws.send(message)

        with blockws.serve(echo, "localhost", 8765) as server:
            server.serve_forever()

    Args:
        handler: called with each open :class:`~blockws.WebSocket`, in a
            thread of its own.
        host: the address or name to listen on. None or ``""``: every IPv4
            interface (as before IPv6 support); ``"::"``: every interface,
            IPv4 ones too where the platform has dual-stack sockets
            (``socket.has_dualstack_ipv6()``); an IPv6 literal such as
            ``"::1"``: IPv6; a name: its IPv4 address, or its IPv6 one if it
            has none.
        port: the TCP port; 0 or None picks a free one (see
            :attr:`Server.port`).
        sock: a bound ``SOCK_STREAM`` socket made by the caller (any family:
            TCP, a Unix socket, one inherited from systemd); ``serve``
            calls ``listen(backlog)`` on it and the server closes it.
            Excludes ``host``, ``port``, ``path``, ``family`` and
            ``dualstack_ipv6``.
        path: listen on a Unix socket at this path (``"\\0name"``: Linux's
            abstract namespace). A stale socket file there (no server
            answers on it) is replaced; any other file is an error
            (``FileExistsError``), and so is a live server's socket
            (``OSError`` EADDRINUSE). The file is removed by
            :meth:`Server.server_close`. Excludes ``host``, ``port``,
            ``family`` and ``dualstack_ipv6``.
        family: ``socket.AF_INET`` or ``socket.AF_INET6``, to choose instead
            of guessing from ``host``.
        dualstack_ipv6: as for ``socket.create_server``: True accepts IPv4
            clients on an IPv6 socket (ValueError where unsupported), False
            refuses them; None (default): True for ``"::"`` where supported.
        reuse_port: set ``SO_REUSEPORT``, so that several processes (or
            servers) can listen on the same ``host:port``, every one
            binding with ``reuse_port=True`` (and, on Linux, as the same
            user). Linux spreads the incoming connections across them; other
            platforms let them bind but may not balance. A process that
            closes its listener drops the connections queued for it. Not
            with ``sock`` (set the option on it yourself) or ``path``.
        options: ``max_connections`` (excess connections get a 503 naming
            it, written by the accept loop: refusals cost no thread; over
            TLS after the TLS handshake), ``max_connections_per_ip`` (a
            client address that holds that many open connections gets 429
            with ``Retry-After``; open connections count, handshakes under
            way don't; default None, no limit: clients behind one NAT share
            an address, and behind a proxy every client is the proxy),
            ``backlog`` and ``shutdown_grace``
            (how long :meth:`Server.shutdown` waits for the peers' Close
            before it aborts their connections; default 1.5 s), plus those
            of :func:`accept` (``subprotocols``, ``origins``,
            ``process_request``, ``open_timeout``, ``close_timeout``,
            ``max_size``, ``max_line``, ``max_headers``, ``ssl_context``,
            ...).

    Raises:
        ValueError: ``sock`` or ``path`` given with an address option;
            ``reuse_port`` where the platform has no ``SO_REUSEPORT``; a
            negative ``shutdown_grace``; ``max_connections_per_ip`` not an
            integer of 1 or more.
        OSError: the address is taken or can't be bound (EADDRINUSE, also
            when the listener already there didn't set ``reuse_port``);
            ``path`` on a platform without Unix sockets (EAFNOSUPPORT);
            ``reuse_port`` refused by the kernel (ENOPROTOOPT).
    """
    return Server(
        handler,
        host,
        port,
        sock=sock,
        path=path,
        family=family,
        dualstack_ipv6=dualstack_ipv6,
        reuse_port=reuse_port,
        **options,
    )
