"""Running connection handlers: what a server does with one connection, whoever runs it.

:func:`run_handler` runs an application's handler for :class:`~blockws.Server`,
the embeddings (:func:`~blockws.wsgi_app`, :func:`~blockws.accept_http`)
and :class:`WebSocketHandler`: a peer that goes away is routine (INFO), any
other exception is a bug in the handler (logged, and the connection closed
with 1011). :class:`WebSocketHandler` is the :mod:`socketserver` request
handler that speaks WebSocket.

Locks: none; each call runs in its connection's thread.
"""

from __future__ import annotations

import logging
import socket
import socketserver
from collections.abc import Callable
from typing import Any

from .accepting import accept
from .codes import CloseCode
from .connection import WebSocket
from .exceptions import ConnectionClosed, InvalidHandshake

__all__ = ["run_handler", "WebSocketHandler"]

logger = logging.getLogger("blockws.server")


def _accept_or_log(sock: socket.socket, address: Any, options: dict[str, Any]) -> WebSocket | None:
    """:func:`accept`, or None once the failure is logged: a bad client is routine for a server."""
    try:
        return accept(sock, **options)
    except (InvalidHandshake, TimeoutError, OSError) as exc:
        logger.info("handshake with %s failed: %s", address, exc)
        return None


def run_handler(handler: Callable[[WebSocket], object], ws: WebSocket, address: Any) -> None:
    """Run a connection handler; a failure is logged and closes the connection with 1011.

    The peer going away or breaking the protocol is routine for a server
    (logged at INFO); any other exception is a bug in the handler.
    """
    try:
        handler(ws)
    except ConnectionClosed as exc:
        logger.info("connection from %s ended: %s", address, exc)
    except Exception:
        logger.exception("connection handler failed")
        if ws.state is not ws.state.CLOSED:
            ws.close(CloseCode.INTERNAL_ERROR, "internal error")


class WebSocketHandler(socketserver.BaseRequestHandler):
    """A :mod:`socketserver` request handler that speaks WebSocket.

    Override :meth:`handle_websocket`; set :attr:`accept_options` for
    :func:`accept`::

        class Echo(blockws.WebSocketHandler):
            def handle_websocket(self, ws):
                for message in ws:
                    ws.send(message)

        socketserver.ThreadingTCPServer(("", 8765), Echo).serve_forever()
    """

    accept_options: dict[str, Any] = {}
    request: socket.socket

    def handle(self) -> None:
        ws = _accept_or_log(self.request, self.client_address, self.accept_options)
        if ws is None:
            return
        with ws:
            self.handle_websocket(ws)

    def handle_websocket(self, ws: WebSocket) -> None:
        """Serve one connection; it is closed when this returns."""
        raise NotImplementedError
