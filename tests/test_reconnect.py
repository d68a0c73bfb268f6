"""reconnect(): which failures are retried, which close codes reconnect, backoff timings, and no leaks."""

from __future__ import annotations

import email.utils
import inspect
import logging
import os
import re
import socket
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import blockws
from blockws import reconnecting
from blockws.exceptions import CertificateVerifyError

from .helpers import SilentPeer
from .relay import Relay


def _echo(ws: blockws.WebSocket) -> None:
    for message in ws:
        ws.sendall(message)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _wait_for_fds(count: int) -> int:
    deadline = time.monotonic() + 5
    while (now := _fds()) != count and time.monotonic() < deadline:
        time.sleep(0.02)
    return now


def _delays(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The delays of the retry notes logged so far."""
    return [
        float(m.group(1))
        for r in caplog.records
        if r.name == "blockws.client" and r.levelno == logging.INFO
        if (m := re.search(r"(?:retrying|reconnecting) in ([0-9.]+) s$", r.getMessage()))
    ]


class Restartable:
    """A blockws server that can be stopped and started again on the same port."""

    def __init__(self, handler: Callable[[blockws.WebSocket], Any], port: int = 0, **options: Any) -> None:
        self.handler = handler
        self.options = options
        self.port = port
        self.server: blockws.Server | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def start(self) -> Restartable:
        self.server = blockws.serve(self.handler, "127.0.0.1", self.port, **self.options)
        self.port = self.server.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.shutdown()
            self.thread.join(10)
            self.server.server_close()
            self.server = self.thread = None


@pytest.fixture
def servers() -> Iterator[Callable[..., Restartable]]:
    made: list[Restartable] = []

    def make(handler: Callable[[blockws.WebSocket], Any] = _echo, port: int = 0, **options: Any) -> Restartable:
        server = Restartable(handler, port, **options)
        made.append(server)
        return server

    yield make
    for server in made:
        server.stop()


class Requests:
    """A process_request that answers ``answers`` in turn (None: upgrade), recording when each came."""

    def __init__(self, *answers: blockws.Response | None) -> None:
        self.answers = list(answers)
        self.times: list[float] = []

    def __call__(self, request: blockws.Request) -> blockws.Response | None:
        self.times.append(time.monotonic())
        return self.answers.pop(0) if self.answers else None


# -- the options ---------------------------------------------------------------


def test_options_are_checked_when_reconnect_is_called():
    with pytest.raises(TypeError, match="reconnect\\(\\) got an unexpected keyword argument 'timeot'"):
        blockws.reconnect("ws://127.0.0.1:1/", timeot=5)
    with pytest.raises(blockws.InvalidURI):
        blockws.reconnect("ftp://127.0.0.1/")
    with pytest.raises(ValueError, match="sock="):
        blockws.reconnect("ws://127.0.0.1:1/", sock=None)
    for bad in ({"initial_delay": 0}, {"max_delay": 0.01, "initial_delay": 0.1}, {"reset_after": -1}):
        with pytest.raises(ValueError):
            blockws.reconnect("ws://127.0.0.1:1/", **bad)
    # Nothing connects before the first next().
    blockws.reconnect("ws://127.0.0.1:1/", open_timeout=1, initial_delay=1).close()


# -- transient failures are retried ------------------------------------------------


def test_a_server_restarted_on_the_same_port(servers, caplog):
    caplog.set_level(logging.INFO, "blockws.client")
    server = servers().start()
    url = server.url

    def restart() -> None:
        server.stop()  # closes our connection with 1001
        time.sleep(0.3)  # refused meanwhile
        server.start()

    restarter = threading.Thread(target=restart)
    got = []
    for ws in blockws.reconnect(url, initial_delay=0.05, max_delay=0.1):
        ws.sendall(f"hello {len(got)}")
        got.append(ws.recv())
        if len(got) == 2:
            break
        restarter.start()
        assert ws.recv() is None and ws.close_code == 1001
    restarter.join()
    assert got == ["hello 0", "hello 1"]
    assert server.port == int(url.rsplit(":", 1)[1].strip("/"))
    notes = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert notes[0].startswith(f"connection to {url} closed with code 1001; reconnecting in ")
    assert any(n.startswith(f"can't connect to {url}: ConnectionRefusedError: ") for n in notes[1:])


def test_503_then_101(servers, caplog):
    caplog.set_level(logging.INFO, "blockws.client")
    requests = Requests(blockws.Response(503))
    server = servers(process_request=requests).start()
    connections = blockws.reconnect(server.url, initial_delay=0.01)
    ws = next(connections)
    ws.sendall("after a 503")
    assert ws.recv() == "after a 503"
    connections.close()
    assert len(requests.times) == 2
    (note,) = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert "InvalidStatus: server rejected WebSocket connection: HTTP 503 Service Unavailable" in note
    assert ws.close_code == 1000


@pytest.mark.slow
def test_429_waits_for_retry_after(servers):
    requests = Requests(blockws.Response(429, headers={"Retry-After": "1"}))
    server = servers(process_request=requests).start()
    connections = blockws.reconnect(server.url, initial_delay=0.01, max_delay=0.01)
    with next(connections):
        pass
    connections.close()
    waited = requests.times[1] - requests.times[0]
    assert 0.95 <= waited < 1.5  # Retry-After, not the 0.01 s backoff


class Overloaded:
    """A process_request that answers 503 with ``Retry-After: value`` for
    ``seconds`` after the first request, then lets the upgrade through."""

    def __init__(self, value: str, seconds: float) -> None:
        self.value = value
        self.seconds = seconds
        self.times: list[float] = []  # of the requests answered 503

    def __call__(self, request: blockws.Request) -> blockws.Response | None:
        now = time.monotonic()
        if self.times and now - self.times[0] >= self.seconds:
            return None
        self.times.append(now)
        return blockws.Response(503, headers={"Retry-After": self.value})


@pytest.mark.slow
@pytest.mark.parametrize("when", ["0", "a date past"])
def test_retry_after_never_shortens_the_backoff(servers, monkeypatch, caplog, when):
    # "Retry-After: 0", or a date already past (the clocks disagree), used
    # to replace the backoff with no wait at all: about 1,000 attempts a
    # second against a server that said it is overloaded.
    caplog.set_level(logging.INFO, "blockws.client")
    monkeypatch.setattr(reconnecting.random, "uniform", lambda low, high: high)  # each wait its bound
    value = "0" if when == "0" else email.utils.formatdate(time.time() - 3600, usegmt=True)
    overloaded = Overloaded(value, seconds=0.5)
    server = servers(process_request=overloaded).start()
    connections = blockws.reconnect(server.url, initial_delay=0.01, max_delay=30)
    with next(connections):
        pass
    connections.close()
    # Each attempt comes at least its wait after the server answered the
    # previous one: 0.01, 0.02, 0.04, ... s, so at most 6 fit in the 0.5 s
    # (at 0, 0.01, 0.03, 0.07, 0.15 and 0.31 s after the first), whatever
    # the machine's speed.
    bounds = [0.01 * 2**n for n in range(len(overloaded.times))]
    assert 1 <= len(overloaded.times) <= 6
    gaps = [b - a for a, b in zip(overloaded.times, overloaded.times[1:])]
    assert all(gap >= bound for gap, bound in zip(gaps, bounds))
    assert _delays(caplog) == pytest.approx(bounds, abs=0.0005)  # logged with 3 decimals


def test_retry_after_values(monkeypatch):
    monkeypatch.setattr(reconnecting.time, "time", lambda: 1_000_000_000.0)
    parse = reconnecting._retry_after
    assert parse("1") == 1.0 and parse(" 120 ") == 120.0 and parse("0") == 0.0
    assert parse("99999999999999999999") == parse("7200") == reconnecting.MAX_RETRY_AFTER
    assert parse(email.utils.formatdate(1_000_000_030.0, usegmt=True)) == 30.0
    assert parse(email.utils.formatdate(999_999_000.0, usegmt=True)) == 0.0  # past
    assert parse(email.utils.formatdate(1_000_000_030.0)) == 30.0  # "-0000"
    for bad in (None, "", "1.5", "-1", "soon", "\u0661"):
        assert parse(bad) is None


def test_refused_then_a_server_appears(servers, caplog):
    caplog.set_level(logging.INFO, "blockws.client")
    port = _free_port()
    server = servers(port=port)
    starter = threading.Timer(0.2, server.start)
    starter.start()
    connections = blockws.reconnect(f"ws://127.0.0.1:{port}/", initial_delay=0.02, max_delay=0.05)
    try:
        ws = next(connections)
        ws.sendall("there")
        assert ws.recv() == "there"
    finally:
        connections.close()
        starter.join()
    assert len(_delays(caplog)) >= 2


# -- permanent failures are raised at once -----------------------------------------


@pytest.mark.parametrize(
    "answer, status",
    [
        (blockws.Response(403), 403),
        (blockws.Response(404), 404),
        (blockws.Response(501), 501),
        (blockws.Response(400, headers={"Retry-After": "0"}), 400),
        (blockws.Response(200, body=b"hello"), 200),
    ],
)
def test_a_permanent_status_is_raised_at_once(servers, caplog, answer, status):
    caplog.set_level(logging.INFO, "blockws.client")
    requests = Requests(answer)
    server = servers(process_request=requests).start()
    with pytest.raises(blockws.InvalidStatus) as info:
        next(blockws.reconnect(server.url, initial_delay=0.01))
    assert info.value.status == status
    assert len(requests.times) == 1 and not _delays(caplog)


def test_authentication_given_up_is_raised(servers):
    requests = Requests()
    server = servers(process_request=requests, auth=blockws.BasicAuth("r", {"alice": "right"})).start()
    with pytest.raises(blockws.InvalidStatus, match="authentication failed") as info:
        next(blockws.reconnect(server.url, auth=("alice", "wrong"), initial_delay=0.01))
    assert info.value.status == 401


def test_a_redirect_loop_is_raised(servers):
    requests = Requests()
    server = servers(process_request=lambda request: requests(request) or blockws.Response.redirect("/again")).start()
    with pytest.raises(blockws.TooManyRedirects):
        next(blockws.reconnect(server.url, initial_delay=0.01))
    assert len(requests.times) == 2  # "/" then "/again", whose redirect is a loop


def test_a_certificate_error_is_raised(servers, tls):
    server_ctx, _ = tls
    server = servers(ssl_context=server_ctx).start()
    connections = blockws.reconnect(f"wss://localhost:{server.port}/", initial_delay=0.01)
    with pytest.raises(CertificateVerifyError):
        next(connections)  # verified against the system CAs: not trusted


def test_a_banned_port_is_raised():
    with pytest.raises(blockws.BadPortError):
        next(blockws.reconnect("ws://127.0.0.1:6000/", initial_delay=0.01))


def test_a_proxy_that_hangs_up_or_answers_502_is_retried_and_its_403_raised(caplog):
    caplog.set_level(logging.INFO, "blockws.client")
    proxy = Script(None, BAD_GATEWAY, FORBIDDEN)
    with pytest.raises(blockws.ProxyError, match="403"):
        next(blockws.reconnect("ws://127.0.0.1:8765/", proxy=f"http://127.0.0.1:{proxy.port}", initial_delay=0.01))
    proxy.thread.join()
    assert len(proxy.times) == 3 and len(_delays(caplog)) == 2


# -- backoff -----------------------------------------------------------------------


FORBIDDEN = b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n"


class Script:
    """A TCP listener that serves one connection per answer, in turn: None closes it at once,
    bytes (an HTTP head) are sent after reading the request. It stops after the last."""

    def __init__(self, *answers: bytes | None) -> None:
        self.answers = answers
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.times: list[float] = []
        self.thread = threading.Thread(target=self._run)
        self.thread.start()

    def _run(self) -> None:
        with self.listener:
            for answer in self.answers:
                conn, _ = self.listener.accept()
                with conn:
                    self.times.append(time.monotonic())
                    if answer is not None:
                        conn.settimeout(5)
                        conn.recv(4096)
                        conn.sendall(answer)

    def gaps(self) -> list[float]:
        return [b - a for a, b in zip(self.times, self.times[1:])]


def hangups(count: int) -> Script:
    """Closes ``count`` connections at once, then answers 403."""
    return Script(*[None] * count, FORBIDDEN)


def test_backoff_doubles_up_to_max_delay(monkeypatch, caplog):
    caplog.set_level(logging.INFO, "blockws.client")
    monkeypatch.setattr(reconnecting.random, "uniform", lambda low, high: high)  # always the bound
    hangup = hangups(6)
    with pytest.raises(blockws.InvalidStatus):
        next(blockws.reconnect(f"ws://127.0.0.1:{hangup.port}/", initial_delay=0.01, max_delay=0.05))
    hangup.thread.join()
    bounds = [0.01, 0.02, 0.04, 0.05, 0.05, 0.05]
    assert _delays(caplog) == bounds
    gaps = hangup.gaps()
    # Waited at least each delay; how much longer depends on the machine's
    # load (a gap of 0.30 s for 0.01 s was seen with both cores busy).
    assert all(bound <= gap for gap, bound in zip(gaps, bounds))
    assert sum(gaps) < sum(bounds) + 5


def test_backoff_jitter_is_within_the_bounds(caplog):
    caplog.set_level(logging.INFO, "blockws.client")
    hangup = hangups(8)
    with pytest.raises(blockws.InvalidStatus):
        next(blockws.reconnect(f"ws://127.0.0.1:{hangup.port}/", initial_delay=0.01, max_delay=0.04))
    hangup.thread.join()
    delays = _delays(caplog)
    bounds = [0.01, 0.02, 0.04, 0.04, 0.04, 0.04, 0.04, 0.04]
    assert len(delays) == len(bounds) and len(set(delays)) > 1  # random
    for delay, bound, gap in zip(delays, bounds, hangup.gaps()):
        assert 0 <= delay <= bound and gap >= delay - 0.001  # logged with 3 decimals


def test_backoff_restarts_after_a_connection_that_lived_reset_after(servers, monkeypatch, caplog):
    caplog.set_level(logging.INFO, "blockws.client")
    monkeypatch.setattr(reconnecting.random, "uniform", lambda low, high: high)
    lives = [0, 0, 0.15, 0, None]  # how long the server keeps each connection; None: close with 1000

    def handler(ws: blockws.WebSocket) -> None:
        life = lives.pop(0)
        if life is None:
            ws.close(1000)
        else:
            time.sleep(life)
            ws.close(1012)

    server = servers(handler).start()
    ended = [list(ws) == [] for ws in blockws.reconnect(server.url, initial_delay=0.02, max_delay=1, reset_after=0.1)]
    assert ended == [True] * 5
    assert _delays(caplog) == [0.02, 0.04, 0.02, 0.04]  # the third lived 0.15 s: from 0.02 again after it


# -- how a connection ends decides ---------------------------------------------------


def _closing_with(codes: list[int]) -> Callable[[blockws.WebSocket], None]:
    def handler(ws: blockws.WebSocket) -> None:
        ws.sendall("hi")
        ws.close(codes.pop(0))

    return handler


def test_server_close_codes_that_reconnect(servers, caplog):
    caplog.set_level(logging.INFO, "blockws.client")
    reconnecting_codes = [1001, 1011, 1012, 1013, 1014]
    server = servers(_closing_with([*reconnecting_codes, 1000])).start()
    seen = []
    for ws in blockws.reconnect(server.url, initial_delay=0.001, max_delay=0.002):
        assert list(ws) == ["hi"]
        seen.append(ws.close_code)
    assert seen == [*reconnecting_codes, 1000]
    assert ws.close_code == 1000  # the loop variable says why the iteration ended
    notes = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert notes[-1] == f"connection to {server.url} closed with code 1000: not reconnecting"


@pytest.mark.parametrize("code", [1000, 1003, 1008, 4000])
def test_server_close_codes_that_end_the_iteration(servers, code):
    server = servers(_closing_with([code, 1012])).start()
    seen = [list(ws) for ws in blockws.reconnect(server.url, initial_delay=0.001)]
    assert seen == [["hi"]]


def test_a_lost_connection_reconnects_with_the_documented_loop(servers):
    served = []

    def handler(ws: blockws.WebSocket) -> None:
        served.append(ws)
        ws.sendall(f"connection {len(served)}")
        if len(served) == 1:
            ws.abort()  # lost: no Close
        else:
            ws.close(1000)

    server = servers(handler).start()
    got = []
    for ws in blockws.reconnect(server.url, initial_delay=0.001):
        try:
            for message in ws:
                got.append(message)
        except blockws.ConnectionClosedError:
            got.append(ws.close_code)
            continue
    assert got == ["connection 1", 1006, "connection 2"]
    assert ws.close_code == 1000


def test_a_reset_and_a_dead_server_reconnect(servers):
    server = servers().start()
    relay = Relay(server.port)
    keepalive = blockws.KeepAlive(interval=0.1, timeout=0.2)
    codes = []
    try:
        for ws in blockws.reconnect(relay.url, keepalive=keepalive, initial_delay=0.001):
            ws.sendall("ping")
            assert ws.recv() == "ping"
            if len(codes) == 2:
                break
            if codes:
                relay.blackhole()  # the server looks dead: our keepalive fails the connection with 1011
            else:
                relay.reset()  # RST: lost, 1006
            with pytest.raises(blockws.ConnectionClosedError):
                ws.recv()
            codes.append(ws.close_code)
            relay.forwarding = True
    finally:
        relay.close()
        keepalive.close()
    assert codes == [1006, 1011]


def test_the_docstring_example(servers, capsys):
    sent = iter(["news 1", "news 2", "news 3"])

    def handler(ws: blockws.WebSocket) -> None:
        assert ws.recv() == "subscribe"
        message = next(sent)
        ws.sendall(message)
        if message == "news 1":
            ws.abort()  # lost
        else:
            ws.close(1012 if message == "news 2" else 1000)

    server = servers(handler).start()
    # cleandoc: Python 3.13 strips a docstring's indentation, earlier ones don't.
    doc = inspect.cleandoc(blockws.reconnect.__doc__ or "")
    example = textwrap.dedent(doc.split("reconnect::\n", 1)[1].split("\n\nRetried", 1)[0])
    assert example.count("ws://127.0.0.1:8765/") == 1
    exec(example.replace("ws://127.0.0.1:8765/", server.url), {})
    assert capsys.readouterr().out == "news 1\nnews 2\nnews 3\ndone: 1000\n"


def test_a_protocol_failure_ends_the_iteration(servers):
    server = servers(lambda ws: (ws.sendall("x" * 100), ws.recv())).start()
    connections = 0
    for ws in blockws.reconnect(server.url, max_size=10, initial_delay=0.001):
        connections += 1
        with pytest.raises(blockws.ConnectionClosedError):
            ws.recv()  # 1009: we failed the connection
    assert connections == 1 and ws.close_code == 1009


def test_a_connection_the_body_left_open_is_closed_and_replaced(servers):
    codes: list[int | None] = []

    def handler(ws: blockws.WebSocket) -> None:
        if len(codes) == 2:
            ws.close(1000)
            return
        for _ in ws:
            pass
        codes.append(ws.close_code)

    server = servers(handler).start()
    count = 0
    for ws in blockws.reconnect(server.url, initial_delay=0.001):
        count += 1
        if count == 3:
            assert ws.recv() is None  # the server's 1000
    assert count == 3 and codes == [1000, 1000]  # the first two were closed by the iterator, normally


def test_a_connection_the_application_closed_ends_the_iteration(servers):
    server = servers().start()
    count = 0
    for ws in blockws.reconnect(server.url, initial_delay=0.001):
        count += 1
        ws.close()  # the server echoes 1000
    assert count == 1 and ws.close_code == 1000


def test_a_close_by_the_body_ends_the_iteration_even_with_1006(caplog):
    # The server never answers the body's Close: close() gives up after
    # close_timeout with 1006, a code that reconnects when the connection
    # is lost, but here the body ended it.
    caplog.set_level(logging.INFO, "blockws.client")
    with SilentPeer() as peer:
        count = 0
        for ws in blockws.reconnect(peer.url, close_timeout=0.1, initial_delay=0.001):
            count += 1
            ws.close()
            assert ws.close_code == 1006
            if count == 3:
                break  # what the bug did: don't loop forever
        assert count == 1 and peer.handshakes == 1
    notes = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert notes == [f"connection to {peer.url} closed by the application (code 1006): not reconnecting"]


def test_a_close_by_the_body_after_the_servers_close_lets_the_code_decide(servers):
    # A with-block (or a close() in the body) after the server's 1012 or a
    # loss only answers it: the code decides, as without the close().
    server = servers(_closing_with([1012, 1000])).start()
    seen = []
    for ws in blockws.reconnect(server.url, initial_delay=0.001):
        with ws:
            assert list(ws) == ["hi"]
        seen.append(ws.close_code)
    assert seen == [1012, 1000]


# -- leaving the loop ---------------------------------------------------------------


def test_break_leaves_no_thread_or_socket_behind(servers):
    closed = []

    def handler(ws: blockws.WebSocket) -> None:
        _echo(ws)
        closed.append(ws.close_code)

    # No keepalive on the server: it would hold its KeepAlive's thread (and
    # its sockets) while it runs; the client's must go with the connection.
    server = servers(handler, keepalive=None).start()
    before = _fds()
    for ws in blockws.reconnect(server.url):
        ws.sendall("one")
        assert ws.recv() == "one"
        break
    assert ws.close_code == 1000
    assert _wait_for_fds(before) == before  # the keepalive thread's sockets are gone with it
    assert closed == [1000]
    # The leak check (conftest) sees the keepalive thread end.


def test_an_exception_in_the_body_closes_the_connection(servers):
    server = servers(keepalive=None).start()  # as above
    before = _fds()
    with pytest.raises(ZeroDivisionError):
        for ws in blockws.reconnect(server.url):
            ws.sendall("one")
            1 / 0  # noqa: B018
    assert ws.close_code == 1000
    assert _wait_for_fds(before) == before


def test_an_iterator_closed_before_it_started_connects_no_more():
    port = _free_port()
    connections = blockws.reconnect(f"ws://127.0.0.1:{port}/", initial_delay=0.01)
    connections.close()  # never started
    with pytest.raises(StopIteration):
        next(connections)
