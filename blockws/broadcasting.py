""":func:`broadcast`: one message to many connections, never waiting on a slow one.

The partial-send contract makes this safe: a connection takes the whole
message now (what its kernel buffer takes, and what fits under its
``write_limit``), or nothing at all, and is handed back to the caller. A
connection can't be left with half a frame or an open message, and a
peer that stops reading costs at most its ``write_limit`` and one message,
however many are broadcast.

Locks: each connection's send lock, taken without waiting (see
:meth:`Outbox.offer_whole <blockws.outbox.Outbox.offer_whole>`). The frame
cache shared among the connections (``shared``) is one call's own, used
by its thread only: several threads broadcasting at once each build their
own. The iterable of connections is read once; pass a copy (such as
:attr:`Server.connections <blockws.server.Server.connections>`, a list
made under the server's lock) rather than a set other threads change.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Union

from .connection import WebSocket
from .outbox import payload_of

__all__ = ["broadcast"]

BytesLike = Union[bytes, bytearray, memoryview]


def broadcast(connections: Iterable[WebSocket], message: str | BytesLike) -> list[WebSocket]:
    """Send ``message`` to every connection that can take all of it now; return the others.

    Never blocks: a connection whose buffers are full (its peer reads
    slowly or not at all), or on which another thread is in a blocking
    ``send()``, is skipped untouched and returned, so the application
    decides what to do with it (drop the message for it, close it with 1008
    or 1013, try again later). Other non-blocking senders (another
    ``broadcast()`` in another thread, the keepalive's pings) only make it
    wait the microseconds they hold the connection. Connections that are
    closed or closing are skipped and not returned.
    The frame is built once for all the connections that frame it alike
    (uncompressed, or compressed without context takeover)::

        with lock:
            slow = blockws.broadcast(clients, message)
        for ws in slow:
            ws.close(blockws.CloseCode.TRY_AGAIN_LATER, "too slow")

    Args:
        connections: the connections (any iterable; each is tried once).
        message: ``str`` (a text message) or bytes-like (binary).

    Returns:
        The connections that could not take the message now.
    """
    text, payload = payload_of(message)
    data = bytes(payload)
    shared: dict[object, bytes] = {}
    skipped = []
    for ws in connections:
        # WebSocket._offer is private to the library, not the connection's
        # business with its users: a whole message now or nothing.
        if ws._offer(data, text, shared) is False:
            skipped.append(ws)
    return skipped
