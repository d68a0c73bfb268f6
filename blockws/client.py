"""The client: :func:`connect` opens a WebSocket to a ``ws://`` or ``wss://`` URL.

One :class:`~blockws.utils.Deadline` (``open_timeout``) bounds the whole
opening: DNS, TCP, TLS and the handshake.
"""

from __future__ import annotations

import socket
import ssl
import urllib.parse
from collections.abc import Sequence

from .connection import DEFAULT_CLOSE_TIMEOUT, DEFAULT_WRITE_LIMIT, WebSocket
from .exceptions import BadPortError, InvalidURI
from .handshake import check_response, client_request, make_key
from .http import HeadersLike, parse_response
from .protocol import DEFAULT_MAX_SIZE, Protocol, Side
from .utils import Deadline, read_http_body, read_http_head

__all__ = ["connect", "WebSocketURI", "parse_uri", "BAD_PORTS"]

# The Fetch standard's "bad ports" (https://fetch.spec.whatwg.org/#port-blocking):
# ports of other protocols that a browser must never speak HTTP to.
BAD_PORTS = frozenset(
    {
        0, 1, 7, 9, 11, 13, 15, 17, 19, 20, 21, 22, 23, 25, 37, 42, 43, 53, 69, 77, 79,
        87, 95, 101, 102, 103, 104, 109, 110, 111, 113, 115, 117, 119, 123, 135, 137,
        139, 143, 161, 179, 389, 427, 465, 512, 513, 514, 515, 526, 530, 531, 532, 540,
        548, 554, 556, 563, 587, 601, 636, 989, 990, 993, 995, 1719, 1720, 1723, 2049,
        3659, 4045, 4190, 5060, 5061, 6000, 6566, 6665, 6666, 6667, 6668, 6669, 6679,
        6697, 10080,
    }
)  # fmt: skip

DEFAULT_OPEN_TIMEOUT = 10.0


class WebSocketURI:
    """The parts of a ``ws://`` or ``wss://`` URL that matter to the client."""

    __slots__ = ("secure", "host", "port", "resource", "user", "password")

    def __init__(
        self, secure: bool, host: str, port: int, resource: str, user: str | None = None, password: str | None = None
    ) -> None:
        self.secure = secure
        self.host = host
        self.port = port
        self.resource = resource
        self.user = user
        self.password = password

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.secure else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL without credentials."""
        return f"{'wss' if self.secure else 'ws'}://{self.host_header}{self.resource}"

    def __repr__(self) -> str:
        return f"WebSocketURI({self.url!r})"  # never the password


def parse_uri(url: str) -> WebSocketURI:
    """Parse a WebSocket URL; http(s) URLs map to ws(s).

    Raises:
        InvalidURI: not a ws/wss URL, no host, a fragment, a bad port number
            or characters that could inject header lines.
    """
    if any(c in url for c in "\r\n\x00") or any(ord(c) < 0x20 for c in url):
        raise InvalidURI(f"control characters in URL {url!r}")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidURI(f"invalid URL {url!r}: {exc}") from exc
    scheme = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}.get(parts.scheme.lower())
    if scheme is None:
        raise InvalidURI(f"{url!r} is not a ws:// or wss:// URL")
    if not parts.hostname:
        raise InvalidURI(f"no host in URL {url!r}")
    if parts.fragment:
        raise InvalidURI(f"a WebSocket URL can't have a fragment: {url!r}")
    secure = scheme == "wss"
    resource = parts.path or "/"
    if " " in resource or " " in parts.query:
        raise InvalidURI(f"spaces in URL {url!r}")
    if parts.query:
        resource += "?" + parts.query
    user = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    return WebSocketURI(secure, parts.hostname, port or (443 if secure else 80), resource, user, password)


def connect(
    url: str,
    *,
    timeout: float | None = None,
    open_timeout: float | None = DEFAULT_OPEN_TIMEOUT,
    close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
    subprotocols: Sequence[str] | None = None,
    headers: HeadersLike | None = None,
    origin: str | None = None,
    ssl_context: ssl.SSLContext | None = None,
    compression: str | None = "deflate",
    max_size: int | None = DEFAULT_MAX_SIZE,
    write_limit: int = DEFAULT_WRITE_LIMIT,
    allow_bad_ports: bool = False,
    sock: socket.socket | None = None,
    server_hostname: str | None = None,
) -> WebSocket:
    """Open a WebSocket connection to ``url``.

    Args:
        url: ``ws://host[:port]/path`` or ``wss://...``.
        timeout: the connection's timeout after the handshake (None: blocking;
            0: non-blocking), as :meth:`WebSocket.settimeout`.
        open_timeout: bounds the whole opening (DNS, TCP, TLS, handshake).
        close_timeout: how long :meth:`WebSocket.close` waits for the peer.
        subprotocols: subprotocols to offer, in order of preference.
        headers: extra request headers (they may override the defaults).
        origin: the Origin header to send.
        ssl_context: for ``wss``; default: verified against the system CAs.
        compression: ``"deflate"`` to offer permessage-deflate, or None.
            (Negotiation is not implemented yet: nothing is offered.)
        max_size: the largest message accepted (bytes), None for no limit.
        write_limit: bytes :meth:`WebSocket.send` may hold in user space.
        allow_bad_ports: allow the ports the Fetch standard bans for HTTP.
        sock: an already connected socket (a Unix socket, a tunnel) to run
            the handshake on instead of connecting to the URL's host.
        server_hostname: the name TLS verifies, if not the URL's host.

    Raises:
        InvalidURI: ``url`` is not a WebSocket URL.
        BadPortError: the port is banned (see ``allow_bad_ports``).
        InvalidStatus: the server answered with another status than 101.
        InvalidHandshake: the server's answer is not a valid upgrade.
        TimeoutError: the opening took longer than ``open_timeout``.
        OSError: the connection failed (refused, unreachable, TLS error).
    """
    uri = parse_uri(url)
    if compression not in (None, "deflate"):
        raise ValueError(f"unsupported compression {compression!r}: use 'deflate' or None")
    if uri.port in BAD_PORTS and not allow_bad_ports and sock is None:
        raise BadPortError(
            f"port {uri.port} is on the Fetch standard's list of banned ports; pass allow_bad_ports=True to use it"
        )
    deadline = Deadline(open_timeout)
    if sock is None:
        try:
            sock = socket.create_connection((uri.host, uri.port), timeout=deadline.remaining())
        except socket.timeout:
            raise TimeoutError(f"timed out connecting to {uri.host}:{uri.port}") from None
    try:
        if uri.secure:
            context = ssl_context or ssl.create_default_context()
            sock.settimeout(deadline.remaining())
            try:
                sock = context.wrap_socket(sock, server_hostname=server_hostname or uri.host)
            except socket.timeout:
                raise TimeoutError("timed out during the TLS handshake") from None
        return _handshake(
            sock, uri, deadline, timeout, close_timeout, subprotocols, headers, origin, max_size, write_limit
        )
    except BaseException:
        sock.close()
        raise


def _handshake(
    sock: socket.socket,
    uri: WebSocketURI,
    deadline: Deadline,
    timeout: float | None,
    close_timeout: float | None,
    subprotocols: Sequence[str] | None,
    headers: HeadersLike | None,
    origin: str | None,
    max_size: int | None,
    write_limit: int,
) -> WebSocket:
    key = make_key()
    request = client_request(
        uri.host_header, uri.resource, key, origin=origin, subprotocols=subprotocols, headers=headers
    )
    sock.settimeout(deadline.remaining())
    try:
        sock.sendall(request.serialize())
    except socket.timeout:
        raise TimeoutError("timed out sending the opening handshake") from None
    head, leftover = read_http_head(sock, deadline, "opening handshake")
    response = parse_response(head)
    if response.status != 101:
        response.body = read_http_body(sock, deadline, response, leftover)
    subprotocol = check_response(response, key, subprotocols)
    ws = WebSocket(
        sock,
        Protocol(Side.CLIENT, max_size=max_size),
        request=request,
        response=response,
        subprotocol=subprotocol,
        leftover=leftover,
        timeout=timeout,
        close_timeout=close_timeout,
        write_limit=write_limit,
    )
    ws.url = uri.url
    return ws
