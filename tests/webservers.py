"""Web servers serving blockws.wsgi_app / accept_http, for tests/test_embedding.py.

Every server here serves the same site: ``/`` answers 200 "ok",
``/seen/KEY`` what a WebSocket handler recorded under KEY (404 until it
did), and ``/ws...`` is a WebSocket endpoint run by :func:`route`.
Werkzeug, Flask and :mod:`http.server` run in this process (a thread);
gunicorn runs as a subprocess that imports this module (``app:app`` in a
module :func:`start_gunicorn` writes).
"""

from __future__ import annotations

import http.client
import http.server
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import blockws
from blockws.server import run_handler

ROOT = Path(__file__).resolve().parent.parent

#: What the handlers saw, by the key in the URL's query (``?key=...``).
SEEN: dict[str, str] = {}

logger = logging.getLogger("blockws.server")


def route(ws: blockws.WebSocket) -> None:
    """The handler of every WebSocket path; what it does depends on the path's last part.

    ``record``: echo, then record the close code the client sent.
    ``bye``: send "bye" and return (the server closes). ``fail``: send
    "failing" and raise. ``wait``: wait in recv(), record how it ended and
    after how long ("CODE SECONDS"). Anything else: echo.
    """
    assert ws.request is not None
    path, _, query = ws.request.path.partition("?")
    name = path.rstrip("/").rsplit("/", 1)[-1]
    key = parse_qs(query).get("key", [""])[0]
    if name == "record":
        for message in ws:
            ws.sendall(message)
        SEEN[key] = str(ws.close_code)
    elif name == "bye":
        ws.sendall("bye")
    elif name == "fail":
        ws.sendall("failing")
        raise RuntimeError("the handler failed on purpose")
    elif name == "wait":
        start = time.monotonic()
        try:
            ws.recv()
            SEEN[key] = "a message"
        except blockws.ConnectionClosed as exc:
            SEEN[key] = f"{exc.code} {time.monotonic() - start:.3f}"
    else:
        for message in ws:
            ws.sendall(message)


def _plain(path: str) -> tuple[str, bytes]:
    if path == "/":
        return "200 OK", b"ok"
    if path.startswith("/seen/") and path[6:] in SEEN:
        return "200 OK", SEEN[path[6:]].encode()
    return "404 Not Found", b"not found"


def plain_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """The site's HTTP side, as a WSGI application."""
    status, body = _plain(environ.get("PATH_INFO", ""))
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def dispatcher_app(**options: Any) -> Any:
    """The site as Werkzeug's DispatcherMiddleware mounting wsgi_app at /ws."""
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    return DispatcherMiddleware(plain_app, {"/ws": blockws.wsgi_app(route, **options)})


def flask_app(**options: Any) -> Any:
    """The site as a Flask app; the WebSocket views are routes declared twice."""
    import flask

    app = flask.Flask(__name__)
    ws_app = blockws.wsgi_app(route, **options)

    @app.route("/ws", websocket=True)
    @app.route("/ws")
    @app.route("/ws/<name>", websocket=True)
    @app.route("/ws/<name>")
    def websocket(name: str = "") -> Any:
        return ws_app

    @app.route("/")
    @app.route("/seen/<key>")
    def plain(key: str = "") -> Any:
        status, body = _plain(flask.request.path)
        return flask.Response(body, status=int(status[:3]), content_type="text/plain")

    return app


class HTTPHandler(http.server.BaseHTTPRequestHandler):
    """The site with http.server and accept_http (options: the server's ``ws_options``)."""

    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if not self.path.startswith("/ws"):
            status, body = _plain(self.path)
            self.send_response(int(status[:3]))
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)
            return
        try:
            ws = blockws.accept_http(self, **getattr(self.server, "ws_options", {}))
        except blockws.InvalidHandshake:
            return  # answered (426 for a plain GET)
        with ws:
            run_handler(route, ws, self.client_address)  # as serve() and wsgi_app do: 1011 if it raises

    def do_HEAD(self) -> None:
        """As a GET: on the WebSocket's path, accept_http answers it (426)."""
        self.do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class WebServer:
    """A server of the site listening on 127.0.0.1:``port``."""

    name: str
    port: int
    in_process = True
    #: Whether an HTTP/1.1 connection stays open after a 426.
    keeps_alive = False
    #: gunicorn: the master's process and its log file.
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    def url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        raise NotImplementedError


class InProcessServer(WebServer):
    def __init__(self, name: str, server: Any, keeps_alive: bool) -> None:
        self.name = name
        self.server = server
        self.port = server.server_address[1]
        self.keeps_alive = keeps_alive
        self.thread = threading.Thread(target=server.serve_forever, args=(0.05,), name=name, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()  # joins the request threads
        self.thread.join(10)


def start_in_process(name: str, **options: Any) -> InProcessServer:
    """``name``: "werkzeug" (DispatcherMiddleware), "flask" or "http.server"."""
    if name == "http.server":
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), HTTPHandler)
        httpd.ws_options = options  # type: ignore[attr-defined]
        return InProcessServer(name, httpd, keeps_alive=True)
    from werkzeug.serving import WSGIRequestHandler, make_server

    class Quiet(WSGIRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass

    app = dispatcher_app(**options) if name == "werkzeug" else flask_app(**options)
    return InProcessServer(name, make_server("127.0.0.1", 0, app, threaded=True, request_handler=Quiet), False)


class Gunicorn(WebServer):
    in_process = False

    def __init__(self, worker: str, directory: Path, threads: int = 1) -> None:
        self.name = f"gunicorn-{worker}"
        self.keeps_alive = worker == "gthread"  # the sync worker closes after every request
        (directory / "app.py").write_text("from tests.webservers import dispatcher_app\n\napp = dispatcher_app()\n")
        self.log = directory / "gunicorn.log"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        # One worker: the /seen route must reach the process the handlers ran in.
        command = [sys.executable, "-m", "gunicorn", "-k", worker, "--threads", str(threads), "-w", "1"]
        command += ["-b", f"127.0.0.1:{self.port}", "--chdir", str(directory), "--timeout", "120"]
        command += ["--graceful-timeout", "2", "app:app"]
        from gunicorn.config import Config  # type: ignore[import-untyped]

        if "control_socket_disable" in Config().settings:  # gunicorn 25+: not in the home directory
            command.insert(-1, "--no-control-socket")
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 20
        while True:
            try:
                if get(self.port, "/")[0] == 200:
                    break
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{self.name} did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def worker_pid(self) -> int:
        assert self.process is not None
        master = self.process.pid
        children: list[str] = []
        for task in Path(f"/proc/{master}/task").iterdir():
            children += (task / "children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """A GET on a connection of its own: status, headers (names lower-cased), body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    finally:
        conn.close()


def wait_seen(server: WebServer, key: str, timeout: float = 5.0) -> str:
    """What the handler recorded under ``key``, once it did (asked over HTTP)."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, body = get(server.port, f"/seen/{key}")
        if status == 200:
            return body.decode()
        if time.monotonic() > deadline:
            raise AssertionError(f"the handler recorded nothing under {key!r} in {timeout} s")
        time.sleep(0.02)
