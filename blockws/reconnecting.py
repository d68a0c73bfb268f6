"""Reconnecting clients: :func:`reconnect` yields a fresh connection whenever one ends.

Which failures are worth another attempt, and which connection ends call for
a new connection, is decided here; :func:`blockws.connect` does each attempt.
"""

from __future__ import annotations

import email.utils
import inspect
import logging
import random
import re
import ssl
import time
from collections.abc import Generator
from datetime import timezone
from typing import Any

from .client import _loggable, connect, parse_uri
from .codes import CloseCode
from .connection import WebSocket
from .exceptions import HeadCut, InvalidStatus, ProxyError

__all__ = ["reconnect", "RECONNECT_CODES", "RETRY_STATUSES", "MAX_RETRY_AFTER"]

logger = logging.getLogger("blockws.client")

#: Close codes after which :func:`reconnect` makes a new connection; any
#: other code ends the iteration. 1006: lost without a Close; 1011: the
#: server's internal error, or our keepalive found the server dead; 1001,
#: 1012, 1013, 1014: going away, restarting, overloaded, bad gateway.
RECONNECT_CODES = frozenset(
    {
        CloseCode.GOING_AWAY,
        CloseCode.ABNORMAL_CLOSURE,
        CloseCode.INTERNAL_ERROR,
        CloseCode.SERVICE_RESTART,
        CloseCode.TRY_AGAIN_LATER,
        CloseCode.BAD_GATEWAY,
    }
)

#: HTTP statuses answered to the upgrade that are retried: 429 and the 5xx
#: ones but 501 (Not Implemented) and 505 (HTTP Version Not Supported),
#: which the same request would get again.
RETRY_STATUSES = frozenset({429} | set(range(500, 600)) - {501, 505})

#: The longest ``Retry-After`` honoured, in seconds: a longer one waits this long.
MAX_RETRY_AFTER = 3600.0

_SECONDS = re.compile(r"[0-9]+")


def reconnect(
    url: str,
    *,
    initial_delay: float = 0.1,
    max_delay: float = 30.0,
    reset_after: float = 60.0,
    **options: Any,
) -> Generator[WebSocket, None, None]:
    """Yield an open :class:`~blockws.WebSocket` to ``url``, and a new one each time one ends.

    Each connection is made by ``blockws.connect(url, **options)``. The loop
    body owns the connection it is given. When the body returns to the
    loop, the iterator closes the connection if it is still open, and who
    ended it, and its :attr:`~blockws.WebSocket.close_code` at that moment,
    decide:

    - the body called :meth:`~blockws.WebSocket.close` before the
      connection ended otherwise: the iteration ends, whatever the code
      (1000 as the server echoes it, or 1006 when it didn't answer within
      ``close_timeout``);
    - lost (1006), or closed by the server with 1001 (going away), 1011
      (internal error; also the code of a server our keepalive found
      dead), 1012 (service restart), 1013 (try again later) or 1014 (bad
      gateway): a new connection is made;
    - None, the connection still open (the body returned without reading
      to the end): it is closed with 1000 and a new one is made, as the
      ``websockets`` package does (returning to the loop means "done with
      this connection"; ``break`` means "done");
    - any other code ends the iteration: the server closed with 1000, 1003,
      1008, 4000-4999, ...; or we failed the connection because the server
      broke the protocol (1002, 1007, 1009).
      The loop variable still holds the last connection: ``ws.close_code``
      after the loop says why.

    Leaving the loop (``break``, ``return``, an exception) closes the
    current connection and stops, leaving no thread or socket behind. (The
    ``for`` statement drops the iterator, which closes it; if you keep a
    reference, call its ``close()`` or use :func:`contextlib.closing`.)

    ``for message in ws`` ends quietly when the server closes, whatever the
    code (:meth:`~blockws.WebSocket.recv` returns None), but a lost or
    failed connection raises :class:`~blockws.ConnectionClosedError`, and
    an exception in the loop body leaves the loop: it never reaches the
    iterator. So catch it in the body to reconnect::

        import blockws

        for ws in blockws.reconnect("ws://127.0.0.1:8765/", open_timeout=5):
            try:
                ws.sendall("subscribe")
                for message in ws:      # ends when the server closes (any code)
                    print(message)
            except blockws.ConnectionClosedError:
                continue                # lost or failed: the close code decides
        print("done:", ws.close_code)   # a code that means "stop", e.g. 1000

    Retried, each failure logged at INFO on the ``blockws.client`` logger
    with the delay: connection refused or reset, timeouts, DNS errors,
    other ``OSError`` (TLS cut short), a connection closed during the
    handshake, HTTP 429 and 5xx (but 501 and 505), a proxy that can't be
    reached or answers 429 or 5xx. Raised at once by ``next()``:
    :class:`~blockws.InvalidURI`, :class:`~blockws.BadPortError`,
    ``ValueError``, :class:`~blockws.InvalidStatus` for any other status
    (4xx, 401 once authentication gave up, 501, 505, unfollowed 3xx),
    :class:`~blockws.TooManyRedirects`, other
    :class:`~blockws.InvalidHandshake` (an invalid answer, a proxy's 4xx),
    :class:`~blockws.exceptions.CertificateVerifyError` (any
    :class:`ssl.SSLCertVerificationError`).

    Delays: capped exponential backoff with full jitter, the n-th wait
    (n = 0, 1, ...) random between 0 and ``min(max_delay, initial_delay *
    2**n)``. A ``Retry-After`` on a 429 or 503 (seconds or an HTTP date)
    lengthens that delay, even above ``max_delay`` (up to an hour), but
    never shortens it: ``Retry-After: 0``, or a date already past (the
    clocks disagree), waits the backoff's delay and n still grows. A
    connection that ends counts as a failed attempt, so a server that
    accepts and closes at once isn't hammered; n starts from 0 again after
    a connection that lived ``reset_after`` seconds. The first attempt
    doesn't wait; waits are ``time.sleep`` in the iterating thread.

    Args:
        url: as for :func:`blockws.connect`.
        initial_delay: the first backoff bound, in seconds.
        max_delay: the largest backoff bound, in seconds.
        reset_after: how long a connection must live, in seconds, for the
            backoff to start again from ``initial_delay``.
        options: :func:`blockws.connect`'s keyword arguments (``timeout``,
            ``open_timeout``, ``headers``, ``auth``, ...), checked now; all
            but ``sock`` (a socket can't be connected twice).

    Raises:
        TypeError: an option :func:`blockws.connect` doesn't take (at once,
            not at the first ``next()``).
        ValueError: ``sock``; ``initial_delay`` not positive, ``max_delay``
            below it, ``reset_after`` negative.
        InvalidURI: ``url`` is not a WebSocket URL (at once).
    """
    try:
        inspect.signature(connect).bind(url, **options)
    except TypeError as exc:
        raise TypeError(f"reconnect() {exc}") from None
    if "sock" in options:
        raise ValueError("reconnect() can't take sock=: each attempt needs a new connection")
    if not initial_delay > 0:
        raise ValueError(f"initial_delay must be positive, not {initial_delay!r}")
    if not max_delay >= initial_delay:
        raise ValueError(f"max_delay ({max_delay!r}) must be at least initial_delay ({initial_delay!r})")
    if not reset_after >= 0:
        raise ValueError(f"reset_after must be 0 or more, not {reset_after!r}")
    where = _loggable(parse_uri(url))
    return _connections(url, options, where, _Backoff(initial_delay, max_delay), reset_after)


class _Backoff:
    """Capped exponential backoff with full jitter."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.waits = 0  # since the last reset

    def bound(self) -> float:
        return min(self.maximum, self.initial * (1 << min(self.waits, 64)))

    def next_delay(self, retry_after: float | None = None) -> float:
        delay = random.uniform(0.0, self.bound())
        self.waits += 1
        # The server's Retry-After may lengthen the wait, never shorten it:
        # "0" or a date already past (clock skew) would retry in a tight loop.
        return delay if retry_after is None else max(delay, retry_after)


def _connections(
    url: str, options: dict[str, Any], where: str, backoff: _Backoff, reset_after: float
) -> Generator[WebSocket, None, None]:
    while True:
        try:
            ws = connect(url, **options)
        except Exception as exc:
            transient, retry_after = _transient(exc)
            if not transient:
                raise
            delay = backoff.next_delay(retry_after)
            logger.info("can't connect to %s: %s; retrying in %.3f s", where, _describe(exc), delay)
            time.sleep(delay)
            continue
        opened = time.monotonic()
        try:
            yield ws
            # The body returned to the loop: done with this connection.
            code = ws.close_code
            # Whatever the code: 1006 too, when the server didn't answer in time.
            # Private to the library: whether close() came before any other end.
            closed_by_body = ws._closed_by_app
        finally:
            ws.close()  # idempotent; after break or an exception in the body, the last thing done
        if closed_by_body:
            logger.info("connection to %s closed by the application (code %s): not reconnecting", where, code)
            return
        if code is not None and code not in RECONNECT_CODES:
            logger.info("connection to %s closed with code %d: not reconnecting", where, code)
            return
        if time.monotonic() - opened >= reset_after:
            backoff.waits = 0
        delay = backoff.next_delay()
        how = "left open by the application" if code is None else f"closed with code {code}"
        logger.info("connection to %s %s; reconnecting in %.3f s", where, how, delay)
        time.sleep(delay)


def _transient(exc: Exception) -> tuple[bool, float | None]:
    """Whether another attempt may succeed where ``exc`` failed, and the server's Retry-After."""
    if isinstance(exc, InvalidStatus):
        if exc.status not in RETRY_STATUSES:
            return False, None
        return True, _retry_after(exc.headers.get("Retry-After")) if exc.status in (429, 503) else None
    if isinstance(exc, ProxyError):
        # The proxy couldn't reach the server, or answered 5xx: the server may be back soon.
        response = getattr(exc, "response", None)
        if response is not None:
            return response.status in RETRY_STATUSES, None
        return isinstance(exc.__cause__, (OSError, HeadCut)), None
    if isinstance(exc, HeadCut):
        return True, None  # the server closed the connection during the handshake (shutting down?)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return False, None
    return isinstance(exc, OSError), None  # refused, reset, unreachable, DNS, timeouts, TLS cut


def _retry_after(value: str | None) -> float | None:
    """The delay a ``Retry-After`` header asks for: seconds or an HTTP date; None if absent or invalid."""
    if value is None:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return MAX_RETRY_AFTER if len(value) > 9 else min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):  # TypeError: Python < 3.10
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)  # "-0000": UTC, as an HTTP date is
    return min(max(0.0, when.timestamp() - time.time()), MAX_RETRY_AFTER)


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"
