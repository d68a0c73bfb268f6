"""Small pieces several test modules share (fixtures live in conftest.py)."""

from __future__ import annotations

import resource
import threading
from typing import Any

import pytest

import blockws


class LateReader:
    """A server handler that reads nothing until ``reading`` is set, then collects every message.

    With a client that doesn't stop sending, this is a peer applying backpressure
    (serve it with ``keepalive=None``: a keepalive reads up to 1 MiB for a
    handler that doesn't).
    """

    def __init__(self) -> None:
        self.reading = threading.Event()
        self.received: list[Any] = []

    def __call__(self, ws: blockws.WebSocket) -> None:
        self.reading.wait(10)
        self.received.extend(ws)


class RecvErrors:
    """A server handler that records the ConnectionClosedError its first recv() raises."""

    def __init__(self) -> None:
        self.errors: list[blockws.ConnectionClosedError] = []

    def __call__(self, ws: blockws.WebSocket) -> None:
        try:
            ws.recv()
        except blockws.ConnectionClosedError as exc:
            self.errors.append(exc)


def send_in_parts(ws: blockws.WebSocket, data: bytes, on_timeout: Any) -> list[int]:
    """Send ``data`` with partial ``send()`` calls; call ``on_timeout(counts)`` when one
    accepts nothing. Returns how much each call accepted (each checked to be 1 to all)."""
    view = memoryview(data)
    counts: list[int] = []
    while view:
        try:
            n = ws.send(view)
        except TimeoutError:
            on_timeout(counts)
            continue
        assert 0 < n <= len(view)
        counts.append(n)
        view = view[n:]
    return counts


def raise_fd_limit(needed: int) -> None:
    """Raise the soft limit of open files to ``needed`` (skip the test if the hard limit is lower)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"needs {needed} file descriptors, the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
