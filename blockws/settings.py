"""The settings :func:`~blockws.connect`, :func:`~blockws.accept` and
:func:`~blockws.serve` share, and the one place a :class:`WebSocket` is made.

Each entry point checks its keyword arguments once and freezes them in a
:class:`Settings` (the client and the server add their own handshake
options in a subclass), so every attempt of a ``connect()`` and every
connection of a ``serve()`` starts from the same values.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .connection import WebSocket
from .deflate import DeflateParams, PerMessageDeflate
from .frames import FrameHeader
from .http import Request, Response
from .protocol import Protocol, Side

__all__ = ["DEFAULT_OPEN_TIMEOUT", "Settings", "Trace"]

#: Given every frame sent (">") and received ("<"): its header and the first bytes of its payload.
Trace = Callable[[str, FrameHeader, bytes], None]

DEFAULT_OPEN_TIMEOUT = 10.0


@dataclass(frozen=True)
class Settings:
    """What both sides take from their keyword arguments, already checked.

    No defaults here: those of ``connect()`` and ``accept()`` are the public
    ones, and a second copy could drift from them.
    """

    timeout: float | None
    close_timeout: float | None
    subprotocols: Sequence[str] | None
    compression: PerMessageDeflate | None
    ssl_context: ssl.SSLContext | None
    max_size: int | None
    max_fragments: int | None
    write_limit: int
    max_line: int
    max_headers: int
    trace: Trace | None

    def websocket(
        self,
        sock: socket.socket,
        side: Side,
        request: Request,
        response: Response,
        *,
        subprotocol: str | None,
        deflate: DeflateParams | None,
        extensions: list[str] | None,
        leftover: bytes,
        url: str | None = None,
        username: str | None = None,
        borrowed: bool = False,
    ) -> WebSocket:
        """The connection over ``sock`` once the handshake has succeeded.

        Args:
            deflate: the negotiated permessage-deflate parameters, if any.
            extensions: the Sec-WebSocket-Extensions values agreed on.
            leftover: bytes read past the handshake (the first frames).
            borrowed: ``sock`` belongs to a web server, which closes it:
                the connection only shuts it down.
        """
        protocol = Protocol(
            side,
            max_size=self.max_size,
            max_fragments=self.max_fragments,
            deflate=deflate,
            compression=self.compression,
        )
        protocol.trace = self.trace  # before the first frame (the leftover) is parsed
        return WebSocket(
            sock,
            protocol,
            request=request,
            response=response,
            subprotocol=subprotocol,
            extensions=extensions,
            leftover=leftover,
            timeout=self.timeout,
            close_timeout=self.close_timeout,
            write_limit=self.write_limit,
            url=url,
            username=username,
            borrowed=borrowed,
        )
