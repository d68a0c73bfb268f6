"""The client: :func:`connect` opens a WebSocket to a ``ws://`` or ``wss://`` URL.

One :class:`~blockws.utils.Deadline` (``open_timeout``) bounds the whole
opening: DNS, TCP, TLS and the handshake.

Connection events (connecting, TLS, redirects, auth retries, the proxy,
open, closed) are logged at DEBUG on the ``blockws.client`` logger, a proxy
that fails or refuses the tunnel at INFO. Frames are not
(``WebSocket.trace`` shows them), and neither are credentials: URLs are
logged without their password and query string, headers not at all (an
auth retry names its scheme only: ``Basic ***``).

Locks: those of the :class:`~blockws.gating.ConnectGate` (its own module);
a slot is released by the connection's ``on_close`` callback, run once by
whichever thread ends it.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import socket
import ssl
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import deflate
from .auth import AuthOption, ClientAuth
from .connection import DEFAULT_CLOSE_TIMEOUT, DEFAULT_WRITE_LIMIT, WebSocket
from .exceptions import (
    BadPortError,
    CertificateVerifyError,
    InvalidHandshake,
    InvalidStatus,
    InvalidURI,
    TooManyRedirects,
)
from .gating import DEFAULT_GATE as DEFAULT_GATE
from .gating import ConnectGate as ConnectGate
from .handshake import check_response, client_request, make_key, parse_extensions
from .http import CREDENTIAL_HEADERS, MAX_HEADERS, MAX_LINE, Headers, HeadersLike, parse_response, redact_header
from .keepalive import KeepAlive
from .keepalive import attach as attach_keepalive
from .protocol import DEFAULT_MAX_FRAGMENTS, DEFAULT_MAX_SIZE, Side
from .proxy import ProxyURL, open_tunnel, proxy_from_environment, redact_proxy_url
from .settings import DEFAULT_OPEN_TIMEOUT, Settings, Trace
from .utils import Deadline, named_timeout, read_http_body, read_http_head, redact_url, split_url

__all__ = ["connect", "ConnectGate", "WebSocketURI", "parse_uri", "redact_url", "BAD_PORTS"]

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

logger = logging.getLogger("blockws.client")


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

    Error messages show the URL without its password.

    Raises:
        InvalidURI: not a ws/wss URL, no host, a fragment, a bad port number
            or characters that could inject header lines.
    """
    safe = redact_url(url)
    if any(c in url for c in "\r\n\x00") or any(ord(c) < 0x20 for c in url):
        raise InvalidURI(f"control characters in URL {safe!r}")
    try:
        parts, port = split_url(url)
    except ValueError as exc:
        # split_url's message masks the password and the error has no context.
        raise InvalidURI(f"invalid URL {safe!r}: {exc}") from None
    scheme = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}.get(parts.scheme.lower())
    if scheme is None:
        raise InvalidURI(f"{safe!r} is not a ws:// or wss:// URL")
    if not parts.hostname:
        raise InvalidURI(f"no host in URL {safe!r}")
    if parts.fragment:
        raise InvalidURI(f"a WebSocket URL can't have a fragment: {safe!r}")
    secure = scheme == "wss"
    resource = parts.path or "/"
    if " " in resource or " " in parts.query:
        raise InvalidURI(f"spaces in URL {safe!r}")
    if parts.query:
        resource += "?" + parts.query
    user = urllib.parse.unquote(parts.username) if parts.username is not None else None
    password = urllib.parse.unquote(parts.password) if parts.password is not None else None
    if port is None:
        port = 443 if secure else 80
    return WebSocketURI(secure, parts.hostname, port, resource, user, password)


class _FromEnvironment:
    def __repr__(self) -> str:
        return "<from the environment>"


#: The default of ``connect(proxy=...)``: use the proxy environment variables.
FROM_ENVIRONMENT = _FromEnvironment()

_REDIRECTS = frozenset({301, 302, 303, 307, 308})


def connect(
    url: str,
    *,
    timeout: float | None = None,
    open_timeout: float | None = DEFAULT_OPEN_TIMEOUT,
    close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
    subprotocols: Sequence[str] | None = None,
    headers: HeadersLike | None = None,
    origin: str | None = None,
    auth: AuthOption | None = None,
    proxy: str | _FromEnvironment | None = FROM_ENVIRONMENT,
    proxy_auth: AuthOption | None = None,
    max_redirects: int = 5,
    ssl_context: ssl.SSLContext | None = None,
    compression: str | deflate.PerMessageDeflate | None = "deflate",
    max_size: int | None = DEFAULT_MAX_SIZE,
    max_fragments: int | None = DEFAULT_MAX_FRAGMENTS,
    write_limit: int = DEFAULT_WRITE_LIMIT,
    allow_bad_ports: bool = False,
    connect_gate: ConnectGate | None = DEFAULT_GATE,
    keepalive: KeepAlive | bool | None = True,
    sock: socket.socket | None = None,
    server_hostname: str | None = None,
    max_line: int = MAX_LINE,
    max_headers: int = MAX_HEADERS,
    trace: Trace | None = None,
) -> WebSocket:
    """Open a WebSocket connection to ``url``.

    Args:
        url: ``ws://host[:port]/path`` or ``wss://...``.
        timeout: the connection's timeout after the handshake (None: blocking;
            0: non-blocking), as :meth:`WebSocket.settimeout`.
        open_timeout: bounds the whole opening (DNS, TCP, TLS, handshake,
            redirects, waiting at the connect gate).
        close_timeout: how long :meth:`WebSocket.close` waits for the peer.
        subprotocols: subprotocols to offer, in order of preference.
        headers: extra request headers (they may override the defaults).
            ``Authorization`` and ``Cookie`` are dropped when a redirect
            leads to another origin.
        origin: the Origin header to send.
        auth: ``(user, password)``, or a callable ``auth(challenge) ->
            (user, password) | None`` called on every 401 (Basic and Digest;
            ``challenge.scheme``, ``.realm``, ``.attempt``), so a program can
            ask its user again; None gives up with ``InvalidStatus`` (401).
            Credentials in the URL (``ws://user:pw@host/``) work the same.
        proxy: ``"http://[user:pw@]host:port"`` (CONNECT), ``"socks5://..."``,
            ``"socks5h://..."``, ``"socks4a://..."`` (SOCKS needs
            ``blockws[socks]``); by default taken from ``https_proxy`` (wss)
            or ``http_proxy`` (ws), ``all_proxy`` and ``no_proxy`` as
            :func:`urllib.request.getproxies` reads them (so ``HTTP_PROXY``
            is ignored in a CGI script); None: no proxy.
        proxy_auth: like ``auth``, for the proxy's 407 challenges.
        max_redirects: how many redirects (301, 302, 303, 307, 308) to
            follow; more raise ``TooManyRedirects``, as does a loop. A
            redirect from ``wss`` to ``ws`` is refused.
        ssl_context: for ``wss``; default: verified against the system CAs.
            Given with a ``ws://`` (or ``http://``) ``url``, it is a
            ``ValueError``: only ``url`` is checked, so a ``ws`` URL that
            redirects to ``wss`` uses the default context. For a server
            whose certificate your own CA signed:
            ``ssl.create_default_context(cafile="ca.pem")``.
        compression: ``"deflate"`` (the default) to offer permessage-deflate,
            a :class:`~blockws.PerMessageDeflate` to choose its settings, or
            None.
        max_size: the largest message accepted (bytes), None for no limit.
        max_fragments: the most frames a received message may come in.
        write_limit: bytes :meth:`WebSocket.send` may hold in user space.
        allow_bad_ports: allow the ports the Fetch standard bans for HTTP.
        connect_gate: the :class:`ConnectGate` (default: one per process):
            connections to one IP address open one at a time, and waiting
            for the others counts against ``open_timeout``. None: no gate,
            for load tests and pools that open many connections to one
            server at once.
        keepalive: True (the default): the process-wide
            :meth:`KeepAlive.shared` answers the server's pings and notices
            its Close while the application isn't reading, and pings every
            20 s; a :class:`~blockws.KeepAlive` to choose the interval and
            timeout; None to opt out (pings are then answered only inside
            :meth:`WebSocket.recv`).
        sock: an already connected socket (a Unix socket, a tunnel) to run
            the handshake on instead of connecting to the URL's host
            (redirects are then not followed).
        server_hostname: the name TLS verifies, if not the URL's host;
            with a ``ws://`` URL, a ``ValueError``, as ``ssl_context``.
        max_line: the longest line accepted in the server's (or the
            proxy's) HTTP answer, in bytes.
        max_headers: the most header lines accepted in that answer.
        trace: a callable given every frame sent (``">"``) and received
            (``"<"``), from the first: as :attr:`WebSocket.trace`, which,
            set after the handshake, may miss frames the keepalive thread
            already read.

    Raises:
        InvalidURI: ``url`` is not a WebSocket URL.
        ValueError: ``ssl_context`` or ``server_hostname`` with a ``ws://``
            URL.
        BadPortError: the port is banned (see ``allow_bad_ports``).
        InvalidStatus: the server answered with another status than 101.
        TooManyRedirects: more than ``max_redirects`` redirects, or a loop.
        InvalidHandshake: the server's answer is not a valid upgrade.
        TimeoutError: the opening took longer than ``open_timeout``
            (waiting at the connect gate included).
        CertificateVerifyError: the server's certificate failed verification
            (an :class:`ssl.SSLCertVerificationError`; the message names the
            host and what to do).
        OSError: the connection failed (refused, unreachable, TLS error);
            the message names the host and port.

    Connection events are logged at DEBUG on the ``blockws.client`` logger
    (see the module docstring); credentials never are.
    """
    compression_settings = deflate.settings(compression)
    uri = parse_uri(url)
    if not uri.secure:
        # Either would go unused: the caller probably meant wss:// (the same check as websockets').
        for name, value in (("ssl_context", ssl_context), ("server_hostname", server_hostname)):
            if value is not None:
                raise ValueError(f"{name} argument is incompatible with a ws:// URI")
    deadline = Deadline(open_timeout)
    request_headers = Headers(headers)
    proxy_credentials = proxy_auth
    if proxy_credentials is None and isinstance(proxy, str):
        parsed = ProxyURL(proxy)
        if parsed.user is not None:
            proxy_credentials = (parsed.user, parsed.password or "")
    settings = _ClientSettings(
        timeout=timeout,
        close_timeout=close_timeout,
        subprotocols=subprotocols,
        compression=compression_settings,
        ssl_context=ssl_context,
        max_size=max_size,
        max_fragments=max_fragments,
        write_limit=write_limit,
        max_line=max_line,
        max_headers=max_headers,
        trace=trace,
        origin=origin,
        server_hostname=server_hostname,
        proxy=proxy,
        proxy_auth=ClientAuth(proxy_credentials, proxy=True) if proxy_credentials is not None else None,
    )
    gate = connect_gate if sock is None else None  # a socket given is connected already: nothing to gate
    seen = {uri.url}
    redirects = 0
    credentials = auth if auth is not None else (uri.user, uri.password or "") if uri.user is not None else None
    client_auth = ClientAuth(credentials) if credentials is not None else None
    # Redirects and auth retries are bounded each (and raise their own
    # errors); this bounds their sum too, as a guard.
    auth_answers = client_auth.max_answers if client_auth else 0
    attempts = max_redirects + auth_answers + 2
    for _ in range(attempts):
        if uri.port in BAD_PORTS and not allow_bad_ports and sock is None:
            raise BadPortError(
                f"port {uri.port} is on the Fetch standard's list of banned ports; pass allow_bad_ports=True to use it"
            )
        logger.debug("connecting to %s", _loggable(uri))
        try:
            ws = _open(uri, deadline, sock, gate, request_headers, settings)
        except InvalidStatus as exc:
            if exc.status == 401 and client_auth is not None:
                answer = client_auth.authorize(exc.response, "GET", uri.resource)
                if answer is None:
                    raise InvalidStatus(exc.response, f"authentication failed: {client_auth.failure}") from exc
                request_headers["Authorization"] = answer
                logger.debug(
                    "HTTP 401 from %s: retrying with Authorization: %s",
                    _loggable(uri),
                    redact_header("Authorization", answer),
                )
                continue
            if exc.status not in _REDIRECTS or sock is not None:
                raise
            location = exc.headers.get("Location")
            if not location:
                raise InvalidStatus(
                    exc.response, f"{exc.status} redirect without a Location header (from {uri.url})"
                ) from exc
            target = _redirect_target(uri, location)
            if target.url in seen:
                raise TooManyRedirects(f"redirect loop: {target.url} was already visited") from exc
            redirects += 1
            if redirects > max_redirects:
                raise TooManyRedirects(f"more than {max_redirects} redirects (max_redirects={max_redirects})") from exc
            logger.debug("HTTP %d redirect from %s to %s", exc.status, _loggable(uri), _loggable(target))
            if _origin(target) != _origin(uri):
                for name in CREDENTIAL_HEADERS:
                    del request_headers[name]
                client_auth = None  # credentials stay with their origin
                logger.debug("credentials and cookies are not sent to %s (another origin)", _loggable(target))
            elif client_auth is not None and (answer := client_auth.preemptive("GET", target.resource)):
                request_headers["Authorization"] = answer  # Digest covers the path: recompute it
            seen.add(target.url)
            uri = target
            continue
        if gate is not None:
            ws.on_close(functools.partial(gate.release_host, uri.host))
        attach_keepalive(ws, keepalive)
        _log_open(ws, _loggable(uri))
        return ws
    raise InvalidHandshake(
        f"gave up after {attempts} requests (max_redirects={max_redirects} plus authentication retries)"
    )


def _loggable(uri: WebSocketURI) -> str:
    """The URL for a log: ``uri.url`` has no credentials, but a query often carries a token."""
    url, question, _ = uri.url.partition("?")
    return url + ("?..." if question else "")


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _log_open(ws: WebSocket, url: str) -> None:
    extras = [f"subprotocol {ws.subprotocol}"] if ws.subprotocol else []
    extras += [f"extensions {', '.join(ws.extensions)}"] if ws.extensions else []
    logger.debug("connection to %s open%s", url, f" ({'; '.join(extras)})" if extras else "")

    def closed() -> None:
        reason = f" {ws.close_reason!r}" if ws.close_reason else ""
        logger.debug("connection to %s closed: code %s%s", url, ws.close_code, reason)

    # connection.py doesn't log: the close is logged through its public callback.
    ws.on_close(closed)


def _origin(uri: WebSocketURI) -> tuple[bool, str, int]:
    return uri.secure, uri.host.lower(), uri.port


def _redirect_target(uri: WebSocketURI, location: str) -> WebSocketURI:
    base = f"{'https' if uri.secure else 'http'}://{uri.host_header}{uri.resource}"
    target = parse_uri(urllib.parse.urljoin(base, location.strip()))
    if uri.secure and not target.secure:
        raise InvalidHandshake(f"refusing to follow a redirect from wss:// to {target.url}")
    return target


@dataclass(frozen=True)
class _ClientSettings(Settings):
    """What every attempt of one connect() call shares."""

    origin: str | None
    server_hostname: str | None
    proxy: str | _FromEnvironment | None
    proxy_auth: ClientAuth | None


def _open(
    uri: WebSocketURI,
    deadline: Deadline,
    sock: socket.socket | None,
    gate: ConnectGate | None,
    headers: Headers,
    settings: _ClientSettings,
) -> WebSocket:
    """One attempt: TCP or a proxy tunnel (through the gate), TLS, handshake."""
    addresses: list[Any] = []
    proxy = settings.proxy
    if proxy is FROM_ENVIRONMENT:
        proxy = proxy_from_environment(uri.secure, uri.host, uri.port)
    if sock is None and proxy is None:
        try:
            addresses = socket.getaddrinfo(uri.host, uri.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise OSError(exc.errno, f"can't resolve {uri.host}: {exc.strerror}") from exc
    if gate is not None:
        gate.acquire_host(uri.host, deadline)
    try:
        if sock is not None:
            return _secure_and_handshake(sock, uri, deadline, headers, settings)
        if isinstance(proxy, str):
            logger.debug("tunnel to %s through the proxy %s", _hostport(uri.host, uri.port), redact_proxy_url(proxy))
            # Through a proxy we never learn the address: the host name stands for it.
            with gate.connecting(uri.host.lower(), deadline) if gate else contextlib.nullcontext():
                proxy_auth = settings.proxy_auth
                tunnel = open_tunnel(
                    proxy,
                    uri.host,
                    uri.port,
                    deadline,
                    proxy_auth=(lambda response: proxy_auth.authorize(response, "CONNECT", uri.host_header))
                    if proxy_auth is not None
                    else None,
                    max_line=settings.max_line,
                    max_headers=settings.max_headers,
                )
                return _secure_and_handshake(tunnel, uri, deadline, headers, settings)
        return _connect_each(addresses, uri, deadline, gate, headers, settings)
    except BaseException:
        if gate is not None:
            gate.release_host(uri.host)
        raise


def _connect_each(
    addresses: list[Any],
    uri: WebSocketURI,
    deadline: Deadline,
    gate: ConnectGate | None,
    headers: Headers,
    settings: _ClientSettings,
) -> WebSocket:
    """Try each address in turn; the gate is keyed by the address being tried.

    So "localhost" and "127.0.0.1" share one slot, and a name whose first
    address refuses does not hold the slot of the one that answers.
    """
    error: OSError | None = None
    tried: list[str] = []
    for family, kind, proto, _, address in addresses:
        with gate.connecting(_gate_key(address[0]), deadline) if gate else contextlib.nullcontext():
            sock = socket.socket(family, kind, proto)
            with named_timeout(f"connecting to {uri.host}:{uri.port}"):
                try:
                    sock.settimeout(deadline.remaining())
                    sock.connect(address)
                except OSError as exc:
                    sock.close()
                    if isinstance(exc, socket.timeout):
                        raise  # the deadline passed: no time for another address
                    logger.debug("can't connect to %s: %s", _hostport(address[0], uri.port), exc)
                    error = exc
                    tried.append(address[0])
                    continue
            logger.debug("TCP connection to %s", _hostport(address[0], uri.port))
            return _secure_and_handshake(sock, uri, deadline, headers, settings)
    assert error is not None
    # The bare "[Errno 111] Connection refused" says neither where nor which
    # address: keep the class and errno, add both.
    where = _hostport(uri.host, uri.port)
    if tried != [uri.host]:
        where += f" (tried {', '.join(tried)})"
    message = f"can't connect to {where}: {error.strerror or error}"
    raise (type(error)(error.errno, message) if error.errno is not None else type(error)(message)) from error


def _gate_key(ip: str) -> str:
    """One key per host: an IPv4-mapped IPv6 address is its IPv4 address."""
    try:
        address = ipaddress.ip_address(ip.partition("%")[0])
    except ValueError:
        return ip
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return str(mapped or address)


def _secure_and_handshake(
    sock: socket.socket, uri: WebSocketURI, deadline: Deadline, headers: Headers, settings: _ClientSettings
) -> WebSocket:
    """TLS (for wss) and the handshake on a connected socket; closes it on failure."""
    try:
        if uri.secure:
            context = settings.ssl_context or ssl.create_default_context()
            sock.settimeout(deadline.remaining())
            try:
                with named_timeout("during the TLS handshake"):
                    sock = context.wrap_socket(sock, server_hostname=settings.server_hostname or uri.host)
            except ssl.SSLCertVerificationError as exc:
                # OpenSSL's message names neither the host nor a way out.
                raise CertificateVerifyError.from_error(exc, uri.host, uri.port) from exc
            if isinstance(sock, ssl.SSLSocket):
                cipher = sock.cipher()
                logger.debug(
                    "TLS with %s: %s, %s", _hostport(uri.host, uri.port), sock.version(), cipher[0] if cipher else "?"
                )
        return _handshake(sock, uri, deadline, headers, settings)
    except BaseException:
        sock.close()
        raise


def _handshake(
    sock: socket.socket, uri: WebSocketURI, deadline: Deadline, headers: HeadersLike, settings: _ClientSettings
) -> WebSocket:
    key = make_key()
    compression = settings.compression
    offer = compression.offer() if compression is not None else None
    request = client_request(
        uri.host_header,
        uri.resource,
        key,
        origin=settings.origin,
        subprotocols=settings.subprotocols,
        extensions=offer,
        headers=headers,
    )
    sock.settimeout(deadline.remaining())
    with named_timeout("sending the opening handshake"):
        sock.sendall(request.serialize())
    head, leftover = read_http_head(sock, deadline, "opening handshake", settings.max_line)
    response = parse_response(head, max_line=settings.max_line, max_headers=settings.max_headers)
    if response.status != 101:
        response.body = read_http_body(sock, deadline, response, leftover)
    subprotocol = check_response(response, key, settings.subprotocols)
    accepted = response.headers.get_all("Sec-WebSocket-Extensions")
    if offer is not None:
        params = deflate.client_accept(accepted, offer)
    elif parse_extensions(accepted):
        raise InvalidHandshake(f"server accepted extensions we did not offer: {', '.join(accepted)}")
    else:
        params = None
    return settings.websocket(
        sock,
        Side.CLIENT,
        request,
        response,
        subprotocol=subprotocol,
        deflate=params,
        extensions=accepted if params else None,
        leftover=leftover,
        url=uri.url,
    )
