"""WebSockets inside web servers people already run: :func:`wsgi_app` and :func:`accept_http`.

A WSGI server (Werkzeug, gunicorn) or :mod:`http.server` has read and
parsed the upgrade request already; the handshake goes on from that parsed
request, and the connection then runs on the server's own socket, in the
thread that server gave the request. Refusals (426 for a request that is
not an upgrade, 401, 403, ...) go out through the server, as any HTTP
answer, so its HTTP connection stays usable; only the 101 is written on
the socket directly.

The socket is *borrowed*: when the WebSocket ends it is shut down both
ways, not closed, because the server still holds it. Whatever the server
writes after that (a WSGI server writes the status line of the answer to
the WSGI call) fails as "client gone", which every server handles quietly,
and reaches no one; the server then closes the socket itself.
"""

from __future__ import annotations

import io
import logging
import socket
import ssl
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, cast

from .accepting import Upgrade, _ServerSettings, accept_options, answer, server_settings, switch
from .codes import CloseCode
from .connection import WebSocket
from .handshake import not_websocket
from .http import Headers, Request, Response
from .keepalive import attach as attach_keepalive
from .server import run_handler
from .transport import READ_SIZE
from .utils import Deadline

__all__ = ["wsgi_app", "accept_http", "WSGIWebSocketApp", "SOCKET_KEYS"]

#: Where WSGI servers put the client's socket in the environ (Werkzeug, gunicorn).
SOCKET_KEYS = ("werkzeug.socket", "gunicorn.socket")

logger = logging.getLogger("blockws.server")

StartResponse = Callable[..., Callable[[bytes], object]]


class _RequestHandler(Protocol):
    """What :func:`accept_http` uses of an :class:`http.server.BaseHTTPRequestHandler`."""

    command: str
    path: str
    headers: Any
    connection: socket.socket
    rfile: Any
    wfile: Any
    close_connection: bool

    def send_response(self, code: int, message: str | None = None) -> None: ...
    def send_header(self, keyword: str, value: str) -> None: ...
    def end_headers(self) -> None: ...
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None: ...
    def finish(self) -> None: ...


def _settings(options: Mapping[str, Any]) -> tuple[_ServerSettings, float | None, Any]:
    """``options`` as :func:`accept` takes them: the settings, ``open_timeout``, ``keepalive``."""
    arguments = accept_options(options)
    if arguments["ssl_context"] is not None:
        raise TypeError("ssl_context: the web server does TLS here (give it the certificate instead)")
    return server_settings(arguments), arguments["open_timeout"], arguments["keepalive"]


def _answer(request: Request, settings: _ServerSettings) -> Upgrade:
    """:func:`~blockws.accepting.answer`, but 426 first for a request that is not an upgrade.

    A plain GET on the WebSocket's path is a mistake of a page or a
    crawler: it is told what the path is for, not challenged for
    credentials.
    """
    refusal = not_websocket(request)
    if refusal is not None:
        return Upgrade(refusal.response(), refusal)
    return answer(request, settings)


def _read_buffered(stream: Any, sock: socket.socket) -> bytes:
    """The bytes a server read past the request head, without waiting for more.

    A client may send its first frame right behind the handshake (RFC 6455
    forbids it before the 101, but a busy network can deliver both at
    once): they sit in the server's read buffer, and are the start of the
    WebSocket stream. Knows :class:`io.BufferedReader` (Werkzeug,
    :mod:`http.server`) and gunicorn's body reader; for others, nothing.
    """
    unreader = getattr(getattr(stream, "reader", None), "unreader", None)
    if unreader is not None:  # gunicorn: the read-ahead is in its "unreader"
        take = getattr(unreader, "take_buffered", None)
        if take is not None:
            return cast(bytes, take())
        buf = getattr(unreader, "buf", None)
        if isinstance(buf, io.BytesIO):
            unreader.buf = io.BytesIO()
            return buf.getvalue()
        return b""
    if not isinstance(stream, io.BufferedReader):
        return b""
    # read1() returns what is buffered; only when nothing is does it read
    # the socket once, and non-blocking, that read can't wait.
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return stream.read1(READ_SIZE) or b""
    except (BlockingIOError, ssl.SSLWantReadError):
        return b""
    finally:
        sock.settimeout(timeout)


def _headers_of(environ: Mapping[str, Any]) -> Headers:
    headers = Headers()
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            name = key[5:]
        elif key in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            name = key
        else:
            continue
        headers.add("-".join(part.capitalize() for part in name.split("_")), value)
    return headers


def request_from_environ(environ: Mapping[str, Any]) -> Request:
    """The HTTP request a WSGI environ describes, its target as the client sent it."""
    target = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if not target:
        from urllib.parse import quote

        path = environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")
        target = quote(path.encode("latin-1")) or "/"
        if environ.get("QUERY_STRING"):
            target += "?" + environ["QUERY_STRING"]
    return Request(environ.get("REQUEST_METHOD", "GET"), target, _headers_of(environ))


# An application must leave hop-by-hop headers to the server (PEP 3333);
# Upgrade stays: a 426 names the protocol to switch to.
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer"})


def _wsgi_answer(
    start_response: StartResponse, response: Response, upgrade: bool = True, head: bool = False
) -> list[bytes]:
    # Checked as serialize() checks what serve() sends: a WSGI server may
    # write a CR or LF in a header as it is (Werkzeug does).
    response.check()
    # Without ``upgrade`` (a server that lends no socket, so can't switch
    # protocols), Upgrade goes too: waitress and wsgiref reject it as
    # hop-by-hop, and would turn the 426 into a 500.
    drop = _HOP_BY_HOP if upgrade else _HOP_BY_HOP | {"upgrade"}
    headers = [(name, value) for name, value in response.headers.items() if name.lower() not in drop]
    if "Content-Length" not in response.headers:
        headers.append(("Content-Length", str(len(response.body))))
    start_response(f"{response.status} {response.reason}", headers)
    # A HEAD gets the headers a GET would (Content-Length included) and no
    # body: gunicorn drops it, but Werkzeug would send it.
    return [] if head else [response.body]


class WSGIWebSocketApp:
    """The WSGI application :func:`wsgi_app` makes: see there."""

    def __init__(self, handler: Callable[[WebSocket], object], options: Mapping[str, Any]) -> None:
        self.handler = handler
        self._settings, self._open_timeout, self._keepalive = _settings(options)
        self._warned = False  # about a server that runs one request at a time

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        request = request_from_environ(environ)
        upgrade = _answer(request, self._settings)
        sock = next((environ[key] for key in SOCKET_KEYS if environ.get(key) is not None), None)
        if upgrade.refusal is not None:
            head = environ.get("REQUEST_METHOD") == "HEAD"
            return _wsgi_answer(start_response, upgrade.response, sock is not None, head)
        if sock is None:
            server = environ.get("SERVER_SOFTWARE") or "this WSGI server"
            raise RuntimeError(
                f"blockws.wsgi_app: {server} does not lend the client's socket to the application"
                f" (no {' or '.join(SOCKET_KEYS)} in the WSGI environ), so it can't carry a WebSocket:"
                " run the app with Werkzeug, gunicorn (-k gthread) or http.server, or use blockws.serve()"
            )
        if not environ.get("wsgi.multithread") and not self._warned:
            self._warned = True
            logger.warning(
                "%s runs one request at a time here: nothing else is served while a WebSocket is open"
                " (Werkzeug: threaded=True; gunicorn: -k gthread)",
                environ.get("SERVER_SOFTWARE") or "the WSGI server",
            )
        leftover = _read_buffered(environ.get("wsgi.input"), sock)
        timeout = sock.gettimeout()
        try:
            ws = switch(sock, request, upgrade, leftover, Deadline(self._open_timeout), self._settings, True)
            attach_keepalive(ws, self._keepalive)
            with ws:
                run_handler(self.handler, ws, environ.get("REMOTE_ADDR"))
        except (TimeoutError, OSError) as exc:
            logger.info("handshake with %s failed: %s", environ.get("REMOTE_ADDR"), exc)
        finally:
            _end(sock, timeout)
        # The server's answer to this call goes to a shut-down socket: its
        # write fails as a client that left, and nothing reaches the peer.
        # 101 is what the server then logs for the request.
        start_response("101 Switching Protocols", [])
        return []


def _end(sock: socket.socket, timeout: float | None) -> None:
    """Leave the borrowed socket shut down, in the mode the server left it in."""
    try:
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.settimeout(timeout)
    except OSError:
        pass


def wsgi_app(handler: Callable[[WebSocket], object], **options: Any) -> WSGIWebSocketApp:
    """A WSGI application that serves WebSocket connections with ``handler``.

    Mount it at a path (Werkzeug's ``DispatcherMiddleware``, in front of a
    Flask app) or serve it as the whole application. An upgrade request
    runs ``handler(ws)`` in the server's request thread, on the client's
    socket, exactly like a :func:`serve` handler: when it returns, the
    connection is closed (1000; 1011 if it raised, the exception logged on
    ``blockws.server``), and the server writes nothing more on that socket.
    A request that is not an upgrade gets ``426 Upgrade Required``; the rest
    of the application keeps serving HTTP on the same port::

        def chat(ws):
            for message in ws:
                ws.send(message)

        app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/ws": blockws.wsgi_app(chat)})

    Works on servers that put the client's socket in the environ
    (:data:`SOCKET_KEYS`): Werkzeug (``threaded=True``, ``flask run``) and
    gunicorn (``-k gthread``; ``-k sync`` kills a worker that holds a
    connection longer than ``--timeout``). On others an upgrade request
    raises :class:`RuntimeError` naming the server.

    Args:
        handler: called with each open :class:`WebSocket`.
        options: those of :func:`accept` (``subprotocols``, ``origins``,
            ``compression``, ``max_size``, ``keepalive``, ``auth``,
            ``process_request``, ``open_timeout``, ``close_timeout``,
            ``write_limit``, ...), except ``ssl_context``: the web server
            does TLS.

    Raises:
        TypeError: an option :func:`accept` does not take.
    """
    return WSGIWebSocketApp(handler, options)


def accept_http(request_handler: _RequestHandler, **options: Any) -> WebSocket:
    """Accept a WebSocket inside ``do_GET`` of an :class:`http.server.BaseHTTPRequestHandler`.

    The handshake goes on from the request the handler parsed (``path``,
    ``headers``, and bytes buffered in ``rfile``); the connection is taken
    over (``close_connection`` set, nothing more written by
    :mod:`http.server`) and returned open. It is closed with 1000 when the
    request handler finishes, if it is still open then::

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/ws":
                    return super().do_GET()
                try:
                    ws = blockws.accept_http(self)
                except blockws.InvalidHandshake:
                    return  # answered already (426 for a plain GET)
                with ws:
                    for message in ws:
                        ws.send(message)

    Args:
        options: those of :func:`accept`, except ``ssl_context`` (wrap the
            server's socket instead).

    Raises:
        InvalidHandshake: not an upgrade request (answered with 426), or
            refused (401, 403, ...): the answer went out through the handler.
        TimeoutError: the 101 could not be sent within ``open_timeout``.
    """
    settings, open_timeout, keepalive = _settings(options)
    handler = request_handler
    request = Request(handler.command, handler.path, Headers(handler.headers.items()))
    upgrade = _answer(request, settings)
    if upgrade.refusal is not None:
        _handler_answer(handler, upgrade.response)
        raise upgrade.refusal
    sock = handler.connection
    handler.close_connection = True
    leftover = _read_buffered(handler.rfile, sock)
    timeout = sock.gettimeout()
    try:
        ws = switch(sock, request, upgrade, leftover, Deadline(open_timeout), settings, True)
    except BaseException:
        _end(sock, timeout)
        raise
    handler.log_request(101)
    ws.on_close(lambda: _end(sock, timeout))
    attach_keepalive(ws, keepalive)
    finish = handler.finish

    def close_then_finish() -> None:
        # Before http.server closes the socket: a WebSocket left open must
        # not outlive its descriptor, which a new connection could reuse.
        ws.close(CloseCode.NORMAL_CLOSURE)
        finish()

    handler.finish = close_then_finish  # type: ignore[method-assign]
    return ws


def _handler_answer(handler: _RequestHandler, response: Response) -> None:
    # http.server writes what it is given, CR and LF included.
    response.check()
    handler.send_response(response.status, response.reason)
    for name, value in response.headers.items():
        handler.send_header(name, value)
    if "Content-Length" not in response.headers:
        handler.send_header("Content-Length", str(len(response.body)))
    handler.end_headers()
    if handler.command != "HEAD":  # the headers a GET would get, Content-Length included, and no body
        handler.wfile.write(response.body)
