"""Small helpers shared by the I/O layers.

A :class:`Deadline` belongs to one call, in one thread (a read counts
itself against it). The module-level ones that some layers share
(``Deadline(None)``, the expired ``outbox.EXPIRED``) are never counted
against: they stay read-only.
"""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.parse
from collections.abc import Iterator

from .exceptions import HeadCut
from .http import MAX_BODY, Response, find_head_end

# HeadCut is defined in exceptions.py with the other errors; importable from here as before.
__all__ = [
    "Deadline",
    "HeadCut",
    "named_timeout",
    "read_http_head",
    "read_http_body",
    "has_scheme",
    "redact_url",
    "split_url",
]


class Deadline:
    """One time budget for an operation made of several blocking steps.

    ``Deadline(None)`` never expires; ``Deadline(0)`` has already expired,
    which is how a non-blocking call is expressed.
    """

    __slots__ = ("when", "reads")

    def __init__(self, timeout: float | None) -> None:
        self.when = None if timeout is None else time.monotonic() + timeout
        #: Reads made against this deadline (a connection counts them).
        self.reads = 0

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None for no limit."""
        if self.when is None:
            return None
        left = self.when - time.monotonic()
        return left if left > 0.0 else 0.0

    def lock_timeout(self) -> float:
        """The remaining time as ``Lock.acquire(timeout=...)`` takes it (-1: forever)."""
        when = self.when
        if when is None:
            return -1
        # Not max(): a builtin with two arguments costs ~2,000 instructions on
        # 3.11, and this runs several times per handshake (as remaining()).
        left = when - time.monotonic()
        return left if left > 0.0 else 0.0

    def expired(self) -> bool:
        return self.when is not None and time.monotonic() >= self.when


@contextlib.contextmanager
def named_timeout(what: str) -> Iterator[None]:
    """Turn a ``socket.timeout`` in the block into ``TimeoutError("timed out <what>")``.

    Before Python 3.10 ``socket.timeout`` is not the builtin ``TimeoutError``
    that callers catch, and on any version its message ("timed out") doesn't
    say which step of a multi-step opening ran out of time. The original is
    dropped from the context: it adds nothing to the message.
    """
    try:
        yield
    except socket.timeout:
        raise TimeoutError(f"timed out {what}") from None


def read_http_head(
    sock: socket.socket, deadline: Deadline, what: str, max_line: int | None = None
) -> tuple[bytes, bytes]:
    """Read one HTTP head from ``sock``: returns ``(head, bytes read past it)``.

    ``max_line`` refuses a line longer than that while it is still arriving.

    Raises:
        TimeoutError: the deadline passed (``what`` names the step).
        InvalidHandshake: the head is malformed or too large;
            :class:`HeadCut` if the peer closed the connection first.
    """
    buf = bytearray()
    while True:
        chunk = _recv_before(sock, deadline, 4096, what)
        if not chunk:
            raise HeadCut(f"connection closed during the {what}" + (f" after {len(buf)} bytes" if buf else ""))
        searched = len(buf)
        buf += chunk
        end = find_head_end(buf, searched, max_line=max_line)
        if end is not None:
            return bytes(buf[:end]), bytes(buf[end:])


def read_http_body(sock: socket.socket, deadline: Deadline, response: Response, leftover: bytes) -> bytes:
    """Read a (bounded) body announced by Content-Length; best effort."""
    try:
        length = min(int(response.headers.get("Content-Length") or "0"), MAX_BODY)
    except ValueError:
        return b""
    body = leftover[:length]
    try:
        while len(body) < length:
            chunk = _recv_before(sock, deadline, length - len(body), "response body")
            if not chunk:
                break
            body += chunk
    except (TimeoutError, OSError):
        pass
    return body


def _recv_before(sock: socket.socket, deadline: Deadline, size: int, what: str) -> bytes:
    remaining = deadline.remaining()
    if remaining is not None and remaining <= 0:
        raise TimeoutError(f"timed out during the {what}")
    sock.settimeout(remaining)
    try:
        return sock.recv(size)
    except socket.timeout:  # named_timeout(), without its cost per read
        raise TimeoutError(f"timed out during the {what}") from None


def has_scheme(url: str) -> bool:
    """Whether ``url`` starts with ``scheme://`` (a well-formed scheme or not).

    A scheme holds no ``:``, so a ``://`` after the first ``:`` is in a
    password (``user:pa://ss@host``), not after a scheme.
    """
    colon = url.find(":")
    return colon >= 0 and url.startswith("//", colon + 1)


def _userinfo_span(url: str, no_path: bool) -> tuple[int, int] | None:
    """Where the userinfo of ``url`` is, as ``(start, index of its "@")``; None: no userinfo.

    By RFC 3986 the authority ends at the first ``/``, ``?`` or ``#``. A URL
    that has no path (a proxy URL) can have an ``@`` only in its userinfo, so
    with ``no_path`` it runs to the last ``@``: a password with an unencoded
    ``/`` is masked too. A string without ``//`` starts with the authority,
    as in ``user:pw@host``.
    """
    if url.startswith("//"):
        start = 2
    elif has_scheme(url):
        start = url.index("://") + 3
    else:
        # The text starts with the authority, as people type "user:pw@host"
        # (and as a proxy URL may be given), even if its password holds "//".
        start = 0
    end = len(url)
    if not no_path:
        end = min((i for i in (url.find(c, start) for c in "/?#") if i >= 0), default=end)
    at = url.rfind("@", start, end)
    return (start, at) if at >= 0 else None


def redact_url(url: str, *, no_path: bool = False) -> str:
    """``url`` with the password of its userinfo replaced by ``***`` (for messages).

    Works on strings :func:`urllib.parse.urlsplit` refuses too, since those
    end up in error messages as well.

    Args:
        url: any string, preferably a URL.
        no_path: ``url`` has no path, query or fragment (a proxy URL), so
            everything up to its last ``@`` is userinfo.
    """
    span = _userinfo_span(url, no_path)
    if span is None:
        return url
    start, at = span
    user, colon, _ = url[start:at].partition(":")
    return f"{url[:start]}{user}{':***' if colon else ''}{url[at:]}"


def split_url(url: str, *, no_path: bool = False) -> tuple[urllib.parse.SplitResult, int | None]:
    """:func:`urllib.parse.urlsplit` and the port, with errors that never show the password.

    Returns:
        The parts and the port (None if the URL has none).

    Raises:
        ValueError: ``url`` can't be split, or its port is not a number in
            range (0 included: nothing can be reached there). The message masks the password, and the exception has no
            context (urlsplit's own error may quote the userinfo).
    """
    if any(ord(c) < 0x20 or c == "\x7f" for c in url):
        # urlsplit drops tabs and newlines, so its message could quote an unmasked variant.
        raise ValueError("control characters in the URL")
    span = _userinfo_span(url, no_path)
    userinfo = url[span[0] : span[1]] if span else ""
    if no_path and any(c in userinfo for c in "/?#"):
        # urlsplit would end the host inside the userinfo, and quote a piece of the password.
        raise ValueError("percent-encode any '/', '?' or '#' in the user name or password")
    error = None
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        error = str(exc)
    else:
        if port == 0:
            # urlsplit accepts it, and "port or default" would then quietly
            # connect to the default port instead.
            raise ValueError("port 0 is not a port a connection can be made to")
        return parts, port
    user, colon, _ = userinfo.partition(":")
    if colon:
        error = error.replace(userinfo, f"{user}:***")  # its NFKC check quotes the whole netloc
    raise ValueError(error)  # outside the except block: no context to show in a traceback
