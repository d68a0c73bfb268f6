"""Several processes on one port: serve(reuse_port=True) and ``blockws serve MODULE:HANDLER --workers N``.

Real processes and sockets: the supervisor runs as a subprocess in a
session of its own, so that whatever happens the whole tree is killed
(``killpg``) and waited for.
"""

from __future__ import annotations

import errno
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import blockws
from blockws.connection import DEFAULT_CLOSE_TIMEOUT
from blockws.workers import LoadError, load_handler

from .helpers import pings_while_reading

ROOT = Path(__file__).resolve().parent.parent

APP = """\
import os

def handler(ws):
    ws.sendall(str(os.getpid()))
    for message in ws:
        ws.sendall(message)

class Nested:
    class Inner:
        handler = staticmethod(handler)

not_callable = 42
"""


class Supervised:
    """``python -m blockws serve ARGS`` in ``cwd``, with its stdout and stderr read line by line."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "blockws", "serve", "--port", "0", *args],
            cwd=cwd,
            # This checkout's blockws; no .pyc, so rewritten modules are never read stale.
            env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONDONTWRITEBYTECODE": "1"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.stderr = ""
        self.stdout = ""

    def _read(self, pattern: str, stream: str, timeout: float) -> re.Match[str]:
        pipe = self.proc.stdout if stream == "stdout" else self.proc.stderr
        assert pipe is not None
        end = time.monotonic() + timeout
        while True:
            match = re.search(pattern, getattr(self, stream), re.MULTILINE)
            if match:
                return match
            left = end - time.monotonic()
            assert left > 0, f"no {pattern!r} in {stream}: {getattr(self, stream)!r} (stderr: {self.stderr!r})"
            if select.select([pipe], [], [], left)[0]:
                data = os.read(pipe.fileno(), 65536).decode()
                assert data, f"{stream} ended without {pattern!r}: {getattr(self, stream)!r} (stderr {self.stderr!r})"
                setattr(self, stream, getattr(self, stream) + data)

    def url(self) -> str:
        return self._read(r"^pidapp:\S+ server on (ws://\S+)$", "stdout", 15).group(1)

    def started(self, count: int, timeout: float = 15) -> list[int]:
        """The pids of the first ``count`` workers started."""
        self._read(r"(?:^blockws: worker \d+ started$[\s\S]*){" + str(count) + "}", "stderr", timeout)
        return [int(pid) for pid in re.findall(r"^blockws: worker (\d+) started$", self.stderr, re.MULTILINE)]

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # the supervisor and any worker left
        except ProcessLookupError:
            pass
        self.proc.wait(10)
        for pipe in (self.proc.stdout, self.proc.stderr):
            assert pipe is not None
            pipe.close()


@pytest.fixture
def app(tmp_path: Path) -> Path:
    (tmp_path / "pidapp.py").write_text(APP)
    return tmp_path


@pytest.fixture
def supervised(app: Path) -> Iterator[type[Supervised]]:
    started: list[Supervised] = []

    class Started(Supervised):
        def __init__(self, *args: str) -> None:
            super().__init__(app, *args)
            started.append(self)

    yield Started
    for s in started:
        s.close()


def pid_of(url: str) -> int:
    with blockws.connect(url, timeout=10) as ws:
        message = ws.recv()
        assert isinstance(message, str)
        return int(message)


def gone(pid: int) -> bool:
    """Exited (a zombie counts: an orphan waits for whoever reaps orphans here)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True


# -- serve(reuse_port=True) -----------------------------------------------------------


def _nothing(ws: blockws.WebSocket) -> None:
    ws.sendall("hi")


def test_reuse_port_lets_two_servers_bind_one_port():
    with blockws.serve(_nothing, "127.0.0.1", 0, reuse_port=True) as a:
        with blockws.serve(_nothing, "127.0.0.1", a.port, reuse_port=True) as b:
            assert b.port == a.port
            with pytest.raises(OSError) as info:
                blockws.serve(_nothing, "127.0.0.1", a.port)  # without it: taken
            assert info.value.errno == errno.EADDRINUSE
            a.server_close()  # b alone takes the connections now
            b_thread = threading.Thread(target=b.serve_forever)
            b_thread.start()
            try:
                with blockws.connect(f"ws://127.0.0.1:{a.port}/", timeout=5) as ws:
                    assert ws.recv() == "hi"
            finally:
                b.shutdown()
                b_thread.join(5)


def test_reuse_port_needed_by_the_first_server_too():
    with blockws.serve(_nothing, "127.0.0.1", 0) as a:
        with pytest.raises(OSError) as info:
            blockws.serve(_nothing, "127.0.0.1", a.port, reuse_port=True)
        assert info.value.errno == errno.EADDRINUSE


def test_reuse_port_is_not_for_sock_or_path(tmp_path):
    with socket.socket() as sock:
        with pytest.raises(ValueError, match="sock given, so not reuse_port"):
            blockws.serve(_nothing, sock=sock, reuse_port=True)
    with pytest.raises(ValueError, match="path given, so not reuse_port"):
        blockws.serve(_nothing, path=str(tmp_path / "s"), reuse_port=True)


def test_reuse_port_where_the_platform_lacks_it(monkeypatch):
    monkeypatch.delattr(socket, "SO_REUSEPORT")
    with pytest.raises(ValueError, match=rf"SO_REUSEPORT.*\({re.escape(sys.platform)}\)"):
        blockws.serve(_nothing, "127.0.0.1", 0, reuse_port=True)
    with blockws.serve(_nothing, "127.0.0.1", 0):  # without it all is as before
        pass


# -- loading MODULE:HANDLER -------------------------------------------------------------


def test_load_handler_takes_dotted_attributes(app, monkeypatch):
    monkeypatch.chdir(app)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(app))])
    monkeypatch.delitem(sys.modules, "pidapp", raising=False)
    try:
        handler = load_handler("pidapp:Nested.Inner.handler")
        assert handler is sys.modules["pidapp"].handler and sys.path[0] == str(app)
        with pytest.raises(LoadError, match=r"pidapp:Nested has no attribute 'Missing'"):
            load_handler("pidapp:Nested.Missing.handler")
        with pytest.raises(LoadError, match="is a int, not a callable"):
            load_handler("pidapp:not_callable")
        with pytest.raises(LoadError, match="is not MODULE:HANDLER"):
            load_handler("pidapp")
    finally:
        sys.modules.pop("pidapp", None)


@pytest.mark.slow
def test_load_errors_exit_2_with_one_line(app):
    (app / "broken.py").write_text("import no_such_dependency_here\n")
    for spec, expected in [
        ("no_such_module:handler", "no module named 'no_such_module'"),
        ("pidapp:missing", "pidapp has no attribute 'missing'"),
        ("pidapp:not_callable", "pidapp:not_callable is a int, not a callable"),
    ]:
        out = subprocess.run(
            [sys.executable, "-m", "blockws", "serve", spec, "--workers", "2", "--port", "0"],
            cwd=app,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 2, out
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"blockws: {expected}"), out.stderr
        assert out.stdout == ""
    # The module itself failing is a bug to show, with its traceback.
    out = subprocess.run(
        [sys.executable, "-m", "blockws", "serve", "broken:handler", "--port", "0"],
        cwd=app,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 1 and "Traceback" in out.stderr and "no_such_dependency_here" in out.stderr
    assert out.stderr.rstrip().endswith("blockws: importing 'broken' raised the error above")
    # Usage errors are argparse's: status 2 too.
    out = subprocess.run(
        [sys.executable, "-m", "blockws", "serve", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 2 and "more than 1 only with MODULE:HANDLER" in out.stderr


# -- the supervisor ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("sharing", [[], ["--reuse-port"]], ids=["inherited", "reuse-port"])
def test_connections_spread_across_the_workers(supervised, sharing):
    server = supervised("pidapp:handler", "--workers", "3", *sharing)
    url = server.url()
    workers = server.started(3)
    # Each connection stays open; the kernel (SO_REUSEPORT: a hash of the
    # client's port) or the race to accept() picks the worker: no fixed
    # share, but 30 connections all on one of 3 workers doesn't happen.
    pids = []
    connections = []
    try:
        for _ in range(30):
            ws = blockws.connect(url, timeout=10)
            connections.append(ws)
            message = ws.recv()
            assert isinstance(message, str)
            pids.append(int(message))
    finally:
        for ws in connections:
            ws.close()
    assert set(pids) <= set(workers)
    assert len(set(pids)) >= 2, pids


@pytest.mark.slow
def test_sigterm_closes_every_connection_with_1001_and_the_tree_exits(supervised):
    server = supervised("pidapp:handler", "--workers", "3")
    url = server.url()
    workers = server.started(3)
    connections = [blockws.connect(url, timeout=10) for _ in range(6)]
    try:
        for ws in connections:
            ws.recv()  # the worker's pid: the handler runs
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        for ws in connections:
            assert ws.recv() is None  # the server's Close
            assert ws.close_code == 1001
            ws.close()  # answers it (a reading application answers when it closes)
        assert server.proc.wait(DEFAULT_CLOSE_TIMEOUT + 3) == 0
        elapsed = time.monotonic() - start
    finally:
        for ws in connections:
            ws.close()
    # Clients that answer the Close at once: far within close_timeout.
    assert elapsed < DEFAULT_CLOSE_TIMEOUT / 2, elapsed
    assert all(gone(pid) for pid in workers)  # reaped by the supervisor
    server._read(r"^blockws: SIGTERM: stopping the workers$", "stderr", 5)
    assert "starting another" not in server.stderr


@pytest.mark.slow
def test_a_killed_worker_is_replaced(supervised):
    server = supervised("pidapp:handler", "--workers", "2")
    url = server.url()
    first = server.started(2)
    victim = pid_of(url)
    os.kill(victim, signal.SIGKILL)
    server._read(rf"^blockws: worker {victim} was killed by SIGKILL; starting another in [\d.]+ s$", "stderr", 10)
    replacement = server.started(3)[2]
    assert replacement not in first
    seen = set()
    end = time.monotonic() + 10
    while replacement not in seen and time.monotonic() < end:
        seen.add(pid_of(url))
    assert replacement in seen and victim not in seen, (seen, first, replacement)


@pytest.mark.slow
def test_one_worker_runs_in_process_and_stops_with_1001(supervised):
    server = supervised("pidapp:Nested.Inner.handler")
    url = server.url()
    with blockws.connect(url, timeout=10) as ws:
        assert int(ws.recv() or 0) == server.proc.pid  # no supervisor: the process itself
        server.proc.send_signal(signal.SIGINT)
        assert ws.recv() is None and ws.close_code == 1001
        ws.close()
    assert server.proc.wait(DEFAULT_CLOSE_TIMEOUT + 3) == 0
    assert "worker" not in server.stderr


@pytest.mark.slow
def test_a_second_signal_kills_workers_still_closing(supervised):
    server = supervised("pidapp:handler", "--workers", "2")
    url = server.url()
    workers = server.started(2)
    # keepalive=None and no reading: nothing answers the server's Close, so
    # each worker would wait close_timeout for it.
    with blockws.connect(url, timeout=10, keepalive=None) as ws:
        ws.recv()
        start = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server._read(r"^blockws: SIGTERM: stopping the workers$", "stderr", 5)
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(DEFAULT_CLOSE_TIMEOUT) == 0
        assert time.monotonic() - start < DEFAULT_CLOSE_TIMEOUT / 2
    server._read(r"^blockws: SIGTERM again: killing the workers$", "stderr", 5)
    assert all(gone(pid) for pid in workers)


@pytest.mark.slow
def test_workers_stop_when_the_supervisor_is_killed(supervised):
    server = supervised("pidapp:handler", "--workers", "2")
    url = server.url()
    workers = server.started(2)
    with blockws.connect(url, timeout=10) as ws:
        ws.recv()
        server.proc.kill()  # no chance to stop its workers: they notice
        assert ws.recv() is None and ws.close_code == 1001
    server.proc.wait(5)
    end = time.monotonic() + 10
    while not all(gone(pid) for pid in workers) and time.monotonic() < end:
        time.sleep(0.05)
    assert all(gone(pid) for pid in workers)


@pytest.mark.slow
def test_module_handler_takes_no_compression_and_keepalive(supervised):
    server = supervised("--no-compression", "--keepalive", "0.2", "pidapp:handler")
    with blockws.connect(server.url(), timeout=10, keepalive=None) as ws:  # permessage-deflate offered
        assert int(ws.recv() or 0) == server.proc.pid
        assert ws.extensions == []
        assert pings_while_reading(ws, 0.9) >= 2


# -- SIGUSR1, SIGHUP ----------------------------------------------------------------------

VERSIONED_APP = """\
import os

def handler(ws):
    ws.sendall(f"{VERSION} {os.getpid()}")
    for message in ws:
        ws.sendall(message)
"""


def versioned(app: Path, version: str) -> None:
    (app / "pidapp.py").write_text(f"VERSION = {version!r}\n" + VERSIONED_APP)


def hello(url: str) -> tuple[str, int]:
    """Connect, and the version and pid the handler says first."""
    with blockws.connect(url, timeout=10) as ws:
        message = ws.recv()
        assert isinstance(message, str), (message, ws.close_code)
        version, pid = message.split()
        return version, int(pid)


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        return int(stat.read().rpartition(")")[2].split()[1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sighup_restarts_the_workers_without_refusing_anyone(app, supervised):
    versioned(app, "v1")
    server = supervised("pidapp:handler", "--workers", "2")
    url = server.url()
    old = server.started(2)
    held = [blockws.connect(url, timeout=10) for _ in range(4)]
    for ws in held:
        assert isinstance(ws.recv(), str)
    attempts: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def connect_in_a_loop() -> None:
        # Every attempt, during the reload too, gets its 101; one that a
        # retiring worker took gets its 1012 right after (or first).
        while not stop.is_set():
            try:
                with blockws.connect(url, timeout=10) as ws:
                    message = ws.recv()
                    assert isinstance(message, str) or ws.close_code == 1012, (message, ws.close_code)
                    attempts.append(message.split()[0] if isinstance(message, str) else "1012")
            except BaseException as exc:
                failures.append(exc)
                return

    loops = [threading.Thread(target=connect_in_a_loop) for _ in range(3)]
    comeback: list[tuple[str, int]] = []

    def reconnecting() -> None:
        for ws in blockws.reconnect(url, open_timeout=10, initial_delay=0.05):
            first = ws.recv()
            assert isinstance(first, str)
            version, pid = first.split()
            comeback.append((version, int(pid)))
            if version != "v1":
                break
            for _ in ws:  # until the old worker's 1012
                pass

    reconnector = threading.Thread(target=reconnecting)
    try:
        for t in loops:
            t.start()
        reconnector.start()
        time.sleep(0.3)
        versioned(app, "v2-new-code")
        server.proc.send_signal(signal.SIGHUP)
        server._read(r"^blockws: SIGHUP: starting 2 new workers", "stderr", 10)
        for ws in held:
            assert ws.recv() is None  # the old worker's Close
            assert ws.close_code == 1012
        for pid in old:
            server._read(rf"^blockws: worker {pid} exited with status 0 \(replaced\)$", "stderr", 15)
        time.sleep(0.3)  # connections go on after the old workers are gone
    finally:
        stop.set()
        for t in loops:
            t.join(30)
        reconnector.join(30)
        for ws in held:
            ws.close()
    assert not failures, failures
    assert "v1" in attempts and attempts[-1] == "v2-new-code", attempts
    new = [pid for pid in server.started(4) if pid not in old]
    assert len(new) == 2 and all(gone(pid) for pid in old)
    assert server.proc.poll() is None and all(parent_of(pid) == server.proc.pid for pid in new)
    assert comeback[0][0] == "v1" and comeback[-1][0] == "v2-new-code" and comeback[-1][1] in new, comeback
    version, pid = hello(url)
    assert version == "v2-new-code" and pid in new
    assert "starting another" not in server.stderr


@pytest.mark.slow
def test_sighup_with_new_code_that_fails_to_import_keeps_the_old_workers(app, supervised):
    versioned(app, "v1")
    server = supervised("pidapp:handler", "--workers", "2")
    url = server.url()
    old = server.started(2)
    with blockws.connect(url, timeout=10) as ws:
        assert isinstance(ws.recv(), str)
        (app / "pidapp.py").write_text("def handler(ws)\n    pass\n")  # a SyntaxError
        server.proc.send_signal(signal.SIGHUP)
        failed = r"^blockws: SIGHUP: the new code failed to load \(above\): the old workers keep serving$"
        server._read(failed, "stderr", 10)
        assert "SyntaxError" in server.stderr
        ws.sendall("still here")
        assert ws.recv() == "still here"
    version, pid = hello(url)
    assert version == "v1" and pid in old
    assert server.started(2) == old and "new workers" not in server.stderr
    # Fixed: the next SIGHUP restarts.
    versioned(app, "v2-fixed")
    server.proc.send_signal(signal.SIGHUP)
    for pid in old:
        server._read(rf"^blockws: worker {pid} exited with status 0 \(replaced\)$", "stderr", 15)
    assert hello(url)[0] == "v2-fixed"


@pytest.mark.slow
def test_sigusr1_prints_every_workers_stats(app, supervised):
    server = supervised("pidapp:handler", "--workers", "2")
    url = server.url()
    workers = server.started(2)
    with blockws.connect(url, timeout=10) as ws:
        ws.recv()
        ws.sendall("hello")
        assert ws.recv() == "hello"
    server.proc.send_signal(signal.SIGUSR1)
    lines = [server._read(rf"^blockws: {pid}: connections=\d+ .*$", "stderr", 10).group(0) for pid in workers]
    for line in lines:
        assert re.search(r" accepted=\d+ refused=0 messages_received=\d+ messages_sent=\d+ ", line), line
        assert "bytes_received=" in line and "bytes_sent=" in line and " closed=" in line
    assert sum(int(re.search(r" messages_sent=(\d+)", line).group(1)) for line in lines) == 2  # type: ignore[union-attr]


@pytest.mark.slow
def test_one_worker_prints_stats_and_ignores_sighup(supervised):
    server = supervised("pidapp:handler")
    with blockws.connect(server.url(), timeout=10) as ws:
        ws.recv()
        server.proc.send_signal(signal.SIGUSR1)
        server._read(rf"^blockws: {server.proc.pid}: connections=1 accepted=1 refused=0 .* closed=-$", "stderr", 10)
        server.proc.send_signal(signal.SIGHUP)
        server._read(r"^blockws: SIGHUP ignored: a rolling restart needs a supervisor", "stderr", 10)
        ws.sendall("still here")
        assert ws.recv() == "still here"
