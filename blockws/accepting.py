"""The server side of the opening handshake: :func:`accept` on a connected socket.

It reads the request, checks it (credentials, ``process_request``,
Origin, the WebSocket headers) and answers 101, or an HTTP error that
says why; a plain HTTP request on a TLS port gets a plain HTTP answer.
Listening and threads are :mod:`blockws.server`'s.
"""

from __future__ import annotations

import inspect
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from . import deflate
from .auth import BasicAuth, DigestAuth
from .connection import DEFAULT_CLOSE_TIMEOUT, DEFAULT_WRITE_LIMIT, WebSocket
from .deflate import DeflateParams
from .exceptions import InvalidHandshake
from .handshake import HandshakeFailure, accept_response, check_request, check_subprotocols, select_subprotocol
from .http import MAX_HEADERS, MAX_LINE, Request, Response, parse_request
from .keepalive import KeepAlive
from .keepalive import attach as attach_keepalive
from .protocol import DEFAULT_MAX_FRAGMENTS, DEFAULT_MAX_SIZE, Side
from .settings import DEFAULT_OPEN_TIMEOUT, Settings, Trace
from .utils import Deadline, named_timeout, read_http_head

__all__ = ["accept", "ProcessRequest", "upgrade_gate"]

logger = logging.getLogger("blockws.server")

ProcessRequest = Callable[[Request], Optional[Response]]

# Set by Server for the handshake running in the current thread: called
# just before the 101 goes out; it raises to abort the upgrade (shutdown),
# or returns a Response to answer instead (a limit the server enforces).
upgrade_gate = threading.local()


@dataclass(frozen=True)
class _ServerSettings(Settings):
    """What every handshake of one accept() call (or one server) checks."""

    origins: Sequence[str | None] | None
    process_request: ProcessRequest | None
    auth: BasicAuth | DigestAuth | None


def _reply(sock: socket.socket, response: Response, deadline: Deadline) -> None:
    try:
        sock.settimeout(deadline.remaining())
        sock.sendall(response.serialize())
    except OSError:
        pass


def accept(
    sock: socket.socket,
    *,
    subprotocols: Sequence[str] | None = None,
    origins: Sequence[str | None] | None = None,
    process_request: ProcessRequest | None = None,
    open_timeout: float | None = DEFAULT_OPEN_TIMEOUT,
    close_timeout: float | None = DEFAULT_CLOSE_TIMEOUT,
    timeout: float | None = None,
    max_size: int | None = DEFAULT_MAX_SIZE,
    max_fragments: int | None = DEFAULT_MAX_FRAGMENTS,
    write_limit: int = DEFAULT_WRITE_LIMIT,
    compression: str | deflate.PerMessageDeflate | None = "deflate",
    ssl_context: ssl.SSLContext | None = None,
    keepalive: KeepAlive | bool | None = True,
    auth: BasicAuth | DigestAuth | None = None,
    max_line: int = MAX_LINE,
    max_headers: int = MAX_HEADERS,
    trace: Trace | None = None,
) -> WebSocket:
    """Run the server side of the opening handshake on an accepted socket.

    Args:
        sock: a connected socket (for example from ``listener.accept()``).
        subprotocols: subprotocols the server supports; the first one the
            client offered is chosen.
        origins: allowed Origin values (``None`` in the list allows requests
            without one); others get 403.
        process_request: called with the request before the upgrade; a
            :class:`~blockws.http.Response` it returns is sent instead (to
            reject, redirect or challenge). If it raises (an
            :class:`Exception`), or returns a response that can't be sent
            as it is (:meth:`Response.check <blockws.http.Response.check>`:
            a CR or LF in a header built from the request, say), the
            client gets a 500, the error is logged at ERROR on
            ``blockws.server`` and :class:`InvalidHandshake` raised.
        max_size: the largest message accepted (bytes; None: no limit);
            larger ones fail the connection with 1009.
        max_fragments: the most frames a message may come in (1009 past it).
        open_timeout: bounds the handshake (a client that sends nothing is
            dropped).
        ssl_context: wrap ``sock`` in TLS first.
        keepalive: True (the default): the process-wide
            :meth:`KeepAlive.shared` answers the client's pings and notices
            its Close while the handler isn't reading, and pings every 20 s;
            a :class:`~blockws.KeepAlive` to choose the interval and
            timeout; None to opt out.
        auth: :class:`~blockws.BasicAuth` or :class:`~blockws.DigestAuth`:
            requests without valid credentials get 401 with a challenge;
            the user name is then in ``ws.username``.
        compression: ``"deflate"`` (the default) to accept permessage-deflate
            when the client offers it, a :class:`~blockws.PerMessageDeflate`
            to choose its settings, or None.
        max_line: the longest request line or header line accepted, in
            bytes (longer: 400 naming ``max_line``).
        max_headers: the most header lines accepted (more: 400 naming
            ``max_headers``).
        trace: a callable given every frame sent (``">"``) and received
            (``"<"``), from the first: as :attr:`WebSocket.trace`, which,
            set after the handshake, may miss frames the keepalive thread
            already read.

    Raises:
        InvalidHandshake: the request was refused; the HTTP answer (4xx, or
            the process_request response, or a 500) was already sent.
        TimeoutError: the handshake took longer than ``open_timeout``.
    """
    settings = server_settings(locals())  # first: the locals are exactly the arguments
    ws = _accept_tls(sock, Deadline(open_timeout), settings)
    attach_keepalive(ws, keepalive)
    return ws


def server_settings(options: Mapping[str, Any]) -> _ServerSettings:
    """The settings of :func:`accept`'s keyword arguments (all of them, defaults included)."""
    return _ServerSettings(
        timeout=options["timeout"],
        close_timeout=options["close_timeout"],
        subprotocols=check_subprotocols(options["subprotocols"]),
        compression=deflate.settings(options["compression"]),
        ssl_context=options["ssl_context"],
        max_size=options["max_size"],
        max_fragments=options["max_fragments"],
        write_limit=options["write_limit"],
        max_line=options["max_line"],
        max_headers=options["max_headers"],
        trace=options["trace"],
        origins=options["origins"],
        process_request=options["process_request"],
        auth=options["auth"],
    )


class Acceptor:
    """:func:`accept` with its options checked and its settings built once: a server's.

    A server accepts every connection with the same options; building the
    settings per connection showed in the handshake's profile.

    Raises:
        TypeError: an option :func:`accept` doesn't take, named.
    """

    __slots__ = ("settings", "open_timeout", "keepalive")

    def __init__(self, options: Mapping[str, Any]) -> None:
        arguments = accept_options(options)
        self.settings = server_settings(arguments)
        self.open_timeout: float | None = arguments["open_timeout"]
        self.keepalive: KeepAlive | bool | None = arguments["keepalive"]

    def __call__(self, sock: socket.socket) -> WebSocket:
        """:func:`accept` ``sock`` with these options."""
        ws = _accept_tls(sock, Deadline(self.open_timeout), self.settings)
        attach_keepalive(ws, self.keepalive)
        return ws


def accept_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` checked against :func:`accept`'s keyword arguments, with its defaults added.

    Raises:
        TypeError: an option :func:`accept` doesn't take, named.
    """
    bound = inspect.signature(accept).bind(None, **options)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    del arguments["sock"]
    return arguments


def _accept_tls(sock: socket.socket, deadline: Deadline, settings: _ServerSettings) -> WebSocket:
    ssl_context = settings.ssl_context
    if ssl_context is not None:
        sock.settimeout(deadline.remaining())
        with named_timeout("during the TLS handshake"):
            first = sock.recv(1, socket.MSG_PEEK)
        if first and first not in (b"\x16", b"\x80"):  # neither a TLS nor an SSLv2-style hello
            _refuse_plaintext(sock, deadline)
        with named_timeout("during the TLS handshake"):
            sock = ssl_context.wrap_socket(sock, server_side=True)
        try:
            return _accept(sock, deadline, settings)
        except BaseException:
            sock.close()  # the caller's socket was detached into this one
            raise
    return _accept(sock, deadline, settings)


def _refuse_plaintext(sock: socket.socket, deadline: Deadline) -> None:
    """Answer a plain HTTP request on a TLS port in plain HTTP, so the client learns why.

    (Left to OpenSSL, it ends in a bare reset.)
    """
    try:
        read_http_head(sock, deadline, "opening handshake")
    except (InvalidHandshake, TimeoutError, OSError):
        pass  # answer anyway: the message is what matters
    body = b"this server speaks TLS: use a wss:// URL\n"
    _reply(sock, Response(400, headers={"Connection": "close"}, body=body), deadline)
    raise InvalidHandshake("a plain HTTP request on a TLS port (the client should use wss://)")


def _accept(sock: socket.socket, deadline: Deadline, settings: _ServerSettings) -> WebSocket:
    try:
        head, leftover = read_http_head(sock, deadline, "opening handshake", settings.max_line)
        request = parse_request(head, max_line=settings.max_line, max_headers=settings.max_headers)
    except InvalidHandshake as exc:
        _reply(sock, Response(400, body=f"{exc}\n".encode()), deadline)
        raise
    upgrade = answer(request, settings)
    if upgrade.refusal is not None:
        _reply(sock, upgrade.response, deadline)
        raise upgrade.refusal
    commit: Callable[[], Response | None] | None = getattr(upgrade_gate, "commit", None)
    if commit is not None:
        refusal = commit()
        if refusal is not None:  # the server's own limit (max_connections_per_ip)
            _reply(sock, refusal, deadline)
            why = refusal.body.decode(errors="replace").strip()
            raise InvalidHandshake(f"refused with HTTP {refusal.status}: {why}")
    return switch(sock, request, upgrade, leftover, deadline, settings)


@dataclass
class Upgrade:
    """The server's answer to one upgrade request, decided without I/O by :func:`answer`."""

    response: Response
    #: Why the answer is not 101 (raised once ``response`` is sent); None: it is 101.
    refusal: InvalidHandshake | None = None
    deflate: DeflateParams | None = None
    extension: str | None = None
    username: str | None = None


def answer(request: Request, settings: _ServerSettings) -> Upgrade:
    """Check credentials, ``process_request``, Origin and the WebSocket headers, in that order."""
    username = None
    auth = settings.auth
    if auth is not None:
        username = auth.check(request)
        if username is None:
            refused = "wrong credentials" if "Authorization" in request.headers else "no credentials"
            return Upgrade(auth.challenge(request), InvalidHandshake(f"authentication failed: {refused}"))
    if settings.process_request is not None:
        answered = _process_request(settings.process_request, request)
        if answered is not None:
            return answered
    try:
        if settings.origins is not None and request.headers.get("Origin") not in settings.origins:
            raise HandshakeFailure(f"origin {request.headers.get('Origin')!r} is not allowed", 403)
        key = check_request(request)
    except HandshakeFailure as exc:
        return Upgrade(exc.response(), exc)
    accepted = None
    if settings.compression is not None:
        accepted = settings.compression.accept(request.headers.get_all("Sec-WebSocket-Extensions"))
    subprotocol = select_subprotocol(request, settings.subprotocols)
    extension, params = accepted if accepted else (None, None)
    return Upgrade(accept_response(key, subprotocol, extension), None, params, extension, username)


def _process_request(process_request: ProcessRequest, request: Request) -> Upgrade | None:
    """``process_request``'s answer: its response checked, or a 500 if it raised or gave one that can't go out.

    Here, where every server (serve(), accept(), wsgi_app, accept_http)
    takes it: a failure is logged once on ``blockws.server`` and the
    client gets a 500 whichever server answers, rather than a traceback
    and a dropped connection, or a header line injected by a server that
    doesn't check what it sends.
    """
    try:
        response = process_request(request)
    except Exception as exc:  # a bug in the application's hook: KeyboardInterrupt and SystemExit go on
        logger.exception("process_request failed")
        refusal = InvalidHandshake(f"process_request raised {type(exc).__name__}: HTTP 500")
        refusal.__cause__ = exc  # for accept()'s caller; serve() logs only the message (the traceback is above)
        return Upgrade(_internal_error(), refusal)
    if response is None:
        return None
    try:
        if not isinstance(response, Response):
            raise TypeError(f"it returned {type(response).__name__}, not a Response or None")
        response.check()
    except (TypeError, ValueError) as exc:
        # The message names the header, never its value (a credential, maybe).
        logger.error("process_request's response can't be sent (answered 500 instead): %s", exc)
        return Upgrade(_internal_error(), InvalidHandshake("process_request's response can't be sent: HTTP 500"))
    return Upgrade(response, InvalidHandshake(f"request refused by process_request: HTTP {response.status}"))


def _internal_error() -> Response:
    return Response(500, headers={"Content-Type": "text/plain"}, body=b"internal server error\n")


def switch(
    sock: socket.socket,
    request: Request,
    upgrade: Upgrade,
    leftover: bytes,
    deadline: Deadline,
    settings: _ServerSettings,
    borrowed: bool = False,
) -> WebSocket:
    """Send the 101 of an accepted upgrade: the connection speaks WebSocket from here."""
    sock.settimeout(deadline.remaining())
    try:
        sock.sendall(upgrade.response.serialize())
    except socket.timeout:  # named_timeout(), without its cost per handshake
        raise TimeoutError("timed out sending the handshake response") from None
    return settings.websocket(
        sock,
        Side.SERVER,
        request,
        upgrade.response,
        subprotocol=upgrade.response.headers.get("Sec-WebSocket-Protocol"),
        deflate=upgrade.deflate,
        extensions=[upgrade.extension] if upgrade.extension else None,
        leftover=leftover,
        username=upgrade.username,
        borrowed=borrowed,
    )
