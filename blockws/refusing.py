"""Connections the server refuses for its own limits: ``max_connections`` (503) and
``max_connections_per_ip`` (429).

:class:`Refusals` answers each one the accept loop refuses at once (over TLS
once its handshake is done, driven by the accept loop's selector like the
rest), sends a FIN, and drains what the client sends until it closes or the
linger passes, so that the close is a FIN and not a reset that could
destroy the answer in flight. :class:`~blockws.server.Server` owns the
selector and the loop. :class:`PerAddress` counts the open connections of
each client address for ``max_connections_per_ip``; a handshake that finds
its address full just before its 101 answers :func:`too_many_from` itself.

Locks: none. :class:`Refusals` is the accept loop's alone; :class:`PerAddress`
is used under the server's lock.
"""

from __future__ import annotations

import selectors
import socket
import ssl
import time
from typing import Any

from .http import Response

__all__ = ["Refusals", "PerAddress", "unregister", "check_per_ip", "address_of", "too_many", "too_many_from"]

# A connection the accept loop refuses gets its 503 (or 429) from the loop
# (no thread); the loop then waits this long at most for the client to read
# it and leave, so the close is a FIN and not a reset that could destroy the
# answer in flight. At most _MAX_REFUSED wait at once; more are closed at once.
_REFUSED_LINGER = 2.0
_MAX_REFUSED = 256
# The Retry-After of a 429 for max_connections_per_ip (whole seconds, >= 1).
_PER_IP_RETRY_AFTER = 1


def check_per_ip(limit: int | None) -> int | None:
    """``max_connections_per_ip`` checked: None, or an int of 1 or more."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"max_connections_per_ip takes a number of connections, 1 or more (or None), not {limit!r}")
    return limit


def address_of(addr: Any) -> str | None:
    """The client address ``max_connections_per_ip`` counts by; None for a Unix socket peer."""
    if not isinstance(addr, tuple) or not addr or not isinstance(addr[0], str):
        return None
    host: str = addr[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]  # an IPv4 client of a dual-stack socket is the same client as over IPv4
    return host


def too_many(max_connections: int | None) -> Response:
    """The answer over ``max_connections``: 503."""
    body = f"too many connections (max_connections={max_connections})\n".encode()
    return Response(503, headers={"Retry-After": "1", "Connection": "close"}, body=body)


def too_many_from(address: str, limit: int | None) -> Response:
    """The answer to an address that holds ``max_connections_per_ip`` connections: 429."""
    body = f"too many connections from {address} (max_connections_per_ip={limit})\n".encode()
    return Response(429, headers={"Retry-After": str(_PER_IP_RETRY_AFTER), "Connection": "close"}, body=body)


class PerAddress:
    """Open connections per client address, for ``max_connections_per_ip``; under the server's lock."""

    __slots__ = ("_open",)

    def __init__(self) -> None:
        self._open: dict[str, int] = {}

    def full(self, address: str, limit: int | None) -> bool:
        """Whether ``address`` holds ``limit`` open connections already (None: no limit)."""
        return limit is not None and self._open.get(address, 0) >= limit

    def add(self, address: str) -> None:
        self._open[address] = self._open.get(address, 0) + 1

    def remove(self, address: str) -> None:
        left = self._open[address] - 1
        if left:
            self._open[address] = left
        else:
            del self._open[address]  # the dict holds only addresses with connections


def unregister(selector: selectors.BaseSelector, sock: socket.socket) -> None:
    """Take ``sock`` out of ``selector``, if it is there."""
    try:
        selector.unregister(sock)
    except (KeyError, ValueError):  # never registered, or closed: nothing to undo
        pass


class Refusals:
    """The refused connections lingering in the accept loop's selector; the loop's thread only."""

    __slots__ = ("_selector", "_refused", "_unsent")

    def __init__(self, selector: selectors.BaseSelector) -> None:
        self._selector = selector
        self._refused: dict[socket.socket, float] = {}  # socket -> when to close it anyway
        self._unsent: dict[ssl.SSLSocket, bytes] = {}  # a TLS refusal -> the answer still to write

    def next_wait(self) -> float | None:
        """Seconds until the next linger ends (None: nothing lingers)."""
        return min(self._refused.values()) - time.monotonic() if self._refused else None

    def expire(self) -> None:
        """Close the refused connections whose linger has ended."""
        if not self._refused:
            return  # the accept loop asks after every connection
        now = time.monotonic()
        for conn in [c for c, when in self._refused.items() if when <= now]:
            self._forget(conn)

    def forget_all(self) -> None:
        for conn in list(self._refused):
            self._forget(conn)

    def refuse(self, conn: socket.socket, answer: Response, ssl_context: ssl.SSLContext | None) -> None:
        """Answer ``answer`` (:func:`too_many`'s 503, :func:`too_many_from`'s
        429) from the accept loop, without a thread and without blocking.

        The request is not read: the answer goes out at once (a fresh
        socket's send buffer always has room for it), then a FIN; what the
        client sends is drained and dropped until it closes or
        ``_REFUSED_LINGER`` passes. On a TLS server the answer waits for the
        TLS handshake, which the accept loop's selector drives in the same
        way (never a plaintext answer on a TLS port), within the same linger.
        """
        data = answer.serialize()
        if ssl_context is not None:
            if len(self._refused) >= _MAX_REFUSED:
                conn.close()  # a flood: not even a handshake
                return
            try:
                conn.setblocking(False)
                tls = ssl_context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
            except OSError:
                conn.close()
                return
            self._unsent[tls] = data
            self._linger(tls)
            self._answer_over_tls(tls)
            return
        try:
            conn.setblocking(False)
            conn.send(data)
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            conn.close()
            return
        if len(self._refused) >= _MAX_REFUSED:
            conn.close()  # a flood: don't keep even the descriptors
            return
        self._linger(conn)

    def _linger(self, conn: socket.socket) -> None:
        self._refused[conn] = time.monotonic() + _REFUSED_LINGER
        self._selector.register(conn, selectors.EVENT_READ)

    def _answer_over_tls(self, conn: ssl.SSLSocket) -> None:
        """One step of a TLS refusal: handshake, write the answer, close_notify and FIN."""
        try:
            conn.do_handshake()  # returns at once once done
            data = self._unsent[conn]
            while data:
                data = data[conn.send(data) :]
                self._unsent[conn] = data
        except ssl.SSLWantReadError:
            self._selector.modify(conn, selectors.EVENT_READ)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(conn, selectors.EVENT_WRITE)
            return
        except OSError:  # not TLS, reset, ...: no answer to give
            self._forget(conn)
            return
        del self._unsent[conn]
        try:
            conn.unwrap()  # sends close_notify; the client's may not have come yet
        except OSError:
            pass
        try:
            # Drops the TLS layer too: the drain reads raw bytes from now on.
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            self._forget(conn)
            return
        self._selector.modify(conn, selectors.EVENT_READ)

    def drain(self, conn: socket.socket) -> None:
        if isinstance(conn, ssl.SSLSocket) and conn in self._unsent:
            self._answer_over_tls(conn)
            return
        try:
            data = conn.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._forget(conn)

    def _forget(self, conn: socket.socket) -> None:
        self._refused.pop(conn, None)
        if isinstance(conn, ssl.SSLSocket):
            self._unsent.pop(conn, None)
        unregister(self._selector, conn)
        conn.close()
