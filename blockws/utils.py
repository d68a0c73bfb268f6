"""Small helpers shared by the I/O layers."""

from __future__ import annotations

import socket
import time

from .exceptions import InvalidHandshake
from .http import MAX_BODY, Response, find_head_end

__all__ = ["Deadline", "HeadCut", "read_http_head", "read_http_body"]


class HeadCut(InvalidHandshake):
    """The peer closed the connection before the end of an HTTP head."""


class Deadline:
    """One time budget for an operation made of several blocking steps.

    ``Deadline(None)`` never expires; ``Deadline(0)`` has already expired,
    which is how a non-blocking call is expressed.
    """

    __slots__ = ("when",)

    def __init__(self, timeout: float | None) -> None:
        self.when = None if timeout is None else time.monotonic() + timeout

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None for no limit."""
        if self.when is None:
            return None
        return max(self.when - time.monotonic(), 0.0)

    def lock_timeout(self) -> float:
        """The remaining time as ``Lock.acquire(timeout=...)`` takes it (-1: forever)."""
        remaining = self.remaining()
        return -1 if remaining is None else remaining

    def expired(self) -> bool:
        return self.when is not None and time.monotonic() >= self.when


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
    searched = 0
    while True:
        end = find_head_end(buf, searched, max_line=max_line)
        if end is not None:
            return bytes(buf[:end]), bytes(buf[end:])
        searched = len(buf)
        chunk = _recv_before(sock, deadline, 4096, what)
        if not chunk:
            raise HeadCut(f"connection closed during the {what}" + (f" after {len(buf)} bytes" if buf else ""))
        buf += chunk


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
    except socket.timeout:
        raise TimeoutError(f"timed out during the {what}") from None
