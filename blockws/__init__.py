"""blockws: a threaded, blocking WebSocket (RFC 6455) library on the socket module.

A :class:`WebSocket` behaves like a BSD socket that carries messages::

    import blockws

    with blockws.connect("ws://127.0.0.1:8765/") as ws:
        ws.sendall("hello")
        print(ws.recv())      # a str or bytes message, or None once the peer closed
"""

from __future__ import annotations

from .auth import BasicAuth, Challenge, DigestAuth
from .broadcasting import broadcast
from .client import ConnectGate, connect, parse_uri
from .codes import CloseCode, Opcode
from .connection import WebSocket
from .deflate import PerMessageDeflate
from .embedding import accept_http, wsgi_app
from .exceptions import (
    BadPortError,
    BufferTooSmall,
    CertificateVerifyError,
    ConnectionClosed,
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    PayloadTooBig,
    ProtocolError,
    ProxyError,
    TooManyRedirects,
    WebSocketError,
)
from .http import Headers, Request, Response
from .keepalive import KeepAlive
from .protocol import State
from .reconnecting import reconnect
from .server import Server, WebSocketHandler, accept, serve

__version__ = "0.1.0"

__all__ = [
    "connect",
    "reconnect",
    "ConnectGate",
    "parse_uri",
    "serve",
    "accept",
    "Server",
    "broadcast",
    "wsgi_app",
    "accept_http",
    "WebSocketHandler",
    "WebSocket",
    "KeepAlive",
    "PerMessageDeflate",
    "BasicAuth",
    "DigestAuth",
    "Challenge",
    "State",
    "CloseCode",
    "Opcode",
    "Headers",
    "Request",
    "Response",
    "WebSocketError",
    "InvalidURI",
    "BadPortError",
    "InvalidHandshake",
    "InvalidStatus",
    "TooManyRedirects",
    "ProxyError",
    "ProtocolError",
    "PayloadTooBig",
    "BufferTooSmall",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "CertificateVerifyError",
]
