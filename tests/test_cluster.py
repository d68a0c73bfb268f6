"""examples/cluster_chat end to end: redis-server, nginx, three worker processes, 300 clients
(30 without --large).

Each test starts its own redis-server and nginx on free ports, in a
temporary directory, and stops them. Skipped (with the reason) where
redis-server, nginx or the redis package is missing; .ci/run installs them.
"""

from __future__ import annotations

import os
import random
import shutil
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

from .helpers import at_scale

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cluster_chat"
NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.path.exists(p)), None)
REDIS = shutil.which("redis-server")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for_port(port: int, process: subprocess.Popen[bytes], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"{what} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"{what} did not listen on port {port} within {timeout} s")


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    """redis-server, 3 blockws workers and nginx: yields the URL clients use."""
    if REDIS is None or NGINX is None:
        pytest.skip("needs redis-server and nginx (Debian: apt install redis-server nginx; .ci/run does)")
    pytest.importorskip("redis", reason="needs the redis package (pip install redis)")
    redis_port, chat_port, nginx_port = _free_port(), _free_port(), _free_port()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        redis_server = subprocess.Popen(
            [REDIS, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
        )
        processes.append(redis_server)
        _wait_for_port(redis_port, redis_server, "redis-server")
        env = dict(os.environ, REDIS_URL=f"redis://127.0.0.1:{redis_port}/0", CHAT_CHANNEL="chat")
        workers = subprocess.Popen(
            [sys.executable, "-m", "blockws", "serve", "server:chat", "--workers", "3", "--port", str(chat_port)],
            cwd=EXAMPLE,
            env=env,
            stdout=subprocess.DEVNULL,
        )
        processes.append(workers)
        _wait_for_port(chat_port, workers, "the blockws workers")
        conf = (EXAMPLE / "nginx.conf").read_text()
        conf = conf.replace("127.0.0.1:8080", f"127.0.0.1:{nginx_port}").replace(
            "127.0.0.1:8001", f"127.0.0.1:{chat_port}"
        )
        (tmp_path / "nginx.conf").write_text(conf)
        nginx = subprocess.Popen(
            [NGINX, "-p", str(tmp_path), "-c", "nginx.conf", "-g", "daemon off; pid nginx.pid; error_log stderr;"],
            stderr=subprocess.DEVNULL,
        )
        processes.append(nginx)
        _wait_for_port(nginx_port, nginx, "nginx")
        yield f"ws://127.0.0.1:{nginx_port}/ws"
    finally:
        for process in reversed(processes):
            _stop(process)


class Client:
    """One chat client in its own thread, reconnecting through nginx when its process dies."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.received: list[str] = []
        self.pids: list[int] = []
        self.ws: blockws.WebSocket | None = None
        self.connected = threading.Event()
        self.stopping = False
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self) -> None:
        for ws in blockws.reconnect(self.url, initial_delay=0.05, max_delay=0.5, keepalive=None, connect_gate=None):
            welcome = ws.recv()
            assert isinstance(welcome, str) and welcome.startswith("welcome from process ")
            self.pids.append(int(welcome.rsplit(" ", 1)[1]))
            self.ws = ws
            self.connected.set()
            try:
                for message in ws:
                    assert isinstance(message, str)
                    self.received.append(message)
            except blockws.ConnectionClosed:
                pass
            self.connected.clear()
            if self.stopping:
                break

    def stop(self) -> None:
        self.stopping = True
        ws = self.ws
        if ws is not None:
            ws.close()
        self.thread.join(10)


def _wait(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out: {what}")


def _check_in_order(received: list[str], sent: dict[str, list[str]]) -> None:
    """Exactly once each, and each sender's messages in the order sent."""
    assert len(received) == len(set(received))
    by_sender: dict[str, list[str]] = {}
    for message in received:
        by_sender.setdefault(message.split(":")[0], []).append(message)
    for sender, messages in by_sender.items():
        assert messages == [m for m in sent[sender] if m in set(messages)]


@pytest.mark.large
def test_three_processes_behind_nginx_with_redis(cluster):
    url = cluster
    rng = random.Random(17)
    clients = [Client(url) for _ in range(at_scale(300))]
    first, then = at_scale(1000), at_scale(200)
    try:
        _wait(lambda: all(c.connected.is_set() for c in clients), 60, f"{len(clients)} clients connected")
        pids = {c.pids[0] for c in clients}
        assert len(pids) >= 2, f"every connection went to one process: {pids}"
        sent: dict[str, list[str]] = {}
        total = 0

        def publish(count: int) -> None:
            nonlocal total
            for _ in range(count):
                index = rng.randrange(len(clients))
                ws = clients[index].ws
                assert ws is not None
                message = f"c{index}:{total}"
                sent.setdefault(f"c{index}", []).append(message)
                ws.send(message)
                total += 1

        publish(first)
        _wait(lambda: all(len(c.received) >= first for c in clients), 60, f"every client got the {first} messages")
        everything = [m for messages in sent.values() for m in messages]
        for client in clients:
            assert sorted(client.received) == sorted(everything)
            _check_in_order(client.received, sent)

        # One worker dies: its clients come back through nginx; the others lose nothing.
        victim = rng.choice(sorted(pids))
        affected = [c for c in clients if c.pids[-1] == victim]
        before = {id(c): len(c.pids) for c in affected}
        os.kill(victim, signal.SIGKILL)
        _wait(
            lambda: all(len(c.pids) > before[id(c)] and c.connected.is_set() for c in affected),
            60,
            f"the {len(affected)} clients of process {victim} reconnected",
        )
        assert all(c.pids[-1] != victim for c in affected)
        mark = {id(c): len(c.received) for c in clients}
        published = total
        publish(then)
        after = sorted(m for messages in sent.values() for m in messages if int(m.split(":")[1]) >= published)
        _wait(lambda: all(len(c.received) - mark[id(c)] >= then for c in clients), 60, f"the {then} messages after")
        for client in clients:
            assert sorted(client.received[mark[id(client)] :]) == after
            _check_in_order(client.received, sent)
            if client not in affected:
                assert len(client.received) == first + then
    finally:
        for client in clients:
            client.stop()
