from __future__ import annotations

import os
import select
import socket
import ssl
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

try:
    import trustme
except ImportError:  # it needs cryptography, which doesn't install on free-threaded CPython 3.13 (.ci/freethreaded.sh)
    trustme = None

if os.environ.get("BLOCKWS_TEST_NO_POLL"):
    # The Windows code path on this machine: no select.poll and no
    # MSG_DONTWAIT, removed before blockws is imported (.ci/run runs the core
    # tests this way).
    del select.poll
    if hasattr(socket, "MSG_DONTWAIT"):
        del socket.MSG_DONTWAIT

import blockws  # noqa: E402

from . import helpers  # noqa: E402


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--bench",
        action="store_true",
        help="also run the tests marked bench (they pip- and npm-install the benchmark peers and time them)",
    )
    parser.addoption(
        "--large",
        action="store_true",
        help="run the tests marked large at full scale (1,000 connections, 300 cluster clients), not a tenth of it",
    )


def pytest_configure(config: pytest.Config) -> None:
    helpers.LARGE = config.getoption("--large")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # An option rather than `-m "not bench"` in addopts: a `-m` on the
    # command line replaces the one in addopts, so `pytest -m "not slow"`
    # would quietly start installing packages again.
    if config.getoption("--bench"):
        return
    skip = pytest.mark.skip(reason="installs packages and measures time: run with --bench")
    for item in items:
        if "bench" in item.keywords:
            item.add_marker(skip)


def _echo(ws: blockws.WebSocket) -> None:
    for message in ws:
        ws.sendall(message)


class RunningServer:
    """A blockws server serving in a background thread."""

    def __init__(self, handler: Callable[[blockws.WebSocket], Any], **options: Any) -> None:
        self.server = blockws.serve(handler, "127.0.0.1", 0, **options)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)


@pytest.fixture
def run_server() -> Iterator[Callable[..., RunningServer]]:
    """Start blockws servers: ``run_server(handler, **options)``; stopped after the test."""
    servers: list[RunningServer] = []

    def start(handler: Callable[[blockws.WebSocket], Any] = _echo, **options: Any) -> RunningServer:
        server = RunningServer(handler, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def echo_server(run_server: Callable[..., RunningServer]) -> RunningServer:
    return run_server(_echo)


@pytest.fixture(autouse=True)
def no_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests connect to 127.0.0.1 directly, whatever proxy the machine has."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Every thread a test starts must be gone shortly after it ends."""
    before = set(threading.enumerate())
    yield
    end = time.monotonic() + 5.0
    while time.monotonic() < end:
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        time.sleep(0.02)
    # Where each one is stuck says more than its name.
    frames = sys._current_frames()
    stacks = [f"{t!r}:\n" + "".join(traceback.format_stack(frames[t.ident])[-8:]) for t in leaked if t.ident in frames]
    pytest.fail("threads leaked:\n" + "\n".join(stacks or map(repr, leaked)))


@pytest.fixture(scope="session")
def tls_ca() -> Any:
    """A certificate authority (``trustme.CA``) that nothing trusts unless told; skips the test without trustme."""
    if trustme is None:
        pytest.skip("trustme is not installed (its cryptography doesn't install on free-threaded CPython 3.13)")
    return trustme.CA()


@pytest.fixture(scope="session")
def tls(tls_ca: Any) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for ``localhost`` and a client context trusting it."""
    ca = tls_ca
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    return server_ctx, client_ctx
