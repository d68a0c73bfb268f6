"""docs/deploying.rst's files work: examples/cluster_chat/haproxy.cfg and blockws-chat.service.

HAProxy runs the shipped configuration, its ports (and, for one test, its
timeouts or its TLS line) rendered for the test, in front of two blockws
servers, in a temporary directory. Skipped (with the reason) where haproxy
or systemd-analyze is missing; .ci/run installs them.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import blockws

from .test_cluster import _free_port, _stop, _wait_for_port

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cluster_chat"
HAPROXY = shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if Path(p).exists()), None)
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def _named(name: str) -> Callable[[blockws.WebSocket], None]:
    """A handler that says which server it is and what X-Forwarded-For it got, then echoes."""

    def handler(ws: blockws.WebSocket) -> None:
        assert ws.request is not None
        ws.sendall(f"{name} {ws.request.headers.get('X-Forwarded-For')}")
        for message in ws:
            ws.sendall(message)

    return handler


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Callable[..., int]]:
    """``start(port1, port2, edit=None)``: HAProxy with the shipped config in front of two servers; its port."""
    if HAPROXY is None:
        pytest.skip("needs haproxy (Debian: apt install haproxy; .ci/run does)")
    processes: list[subprocess.Popen[bytes]] = []

    def start(port1: int, port2: int, edit: Callable[[str], str] | None = None) -> int:
        port = _free_port()
        conf = (EXAMPLE / "haproxy.cfg").read_text()
        for old, new in (("8080", port), ("8001", port1), ("8002", port2)):
            assert f"127.0.0.1:{old}" in conf
            conf = conf.replace(f"127.0.0.1:{old}", f"127.0.0.1:{new}")
        if edit is not None:
            conf = edit(conf)
        (tmp_path / "haproxy.cfg").write_text(conf)
        assert HAPROXY is not None
        check = subprocess.run([HAPROXY, "-c", "-f", "haproxy.cfg"], cwd=tmp_path, capture_output=True, text=True)
        assert check.returncode == 0 and "WARNING" not in check.stdout + check.stderr, check.stdout + check.stderr
        process = subprocess.Popen([HAPROXY, "-f", "haproxy.cfg", "-db"], cwd=tmp_path, stdout=subprocess.DEVNULL)
        processes.append(process)
        _wait_for_port(port, process, "haproxy")
        return port

    yield start
    for process in processes:
        _stop(process)


def test_haproxy_spreads_connections_and_relays_messages(run_server, haproxy) -> None:
    servers = [run_server(_named("A")), run_server(_named("B"))]
    port = haproxy(servers[0].port, servers[1].port)
    conns = [blockws.connect(f"ws://127.0.0.1:{port}/ws", timeout=5) for _ in range(4)]
    try:
        welcomes = [ws.recv() for ws in conns]
        # leastconn: each new connection goes to the server holding fewer.
        assert sorted(welcomes) == ["A 127.0.0.1", "A 127.0.0.1", "B 127.0.0.1", "B 127.0.0.1"]
        for i, ws in enumerate(conns):
            ws.sendall(f"hello {i}")
            ws.sendall(b"\x00" * 100_000)
        for i, ws in enumerate(conns):
            assert ws.recv() == f"hello {i}"
            assert ws.recv() == b"\x00" * 100_000
    finally:
        for ws in conns:
            ws.close()
    assert all(ws.close_code == 1000 for ws in conns)


def test_haproxy_skips_a_server_that_is_down(run_server, haproxy) -> None:
    """Only the workers on the first port run (as in the example's README): every client still gets in."""
    port = haproxy(run_server(_named("A")).port, _free_port())
    for _ in range(4):
        with blockws.connect(f"ws://127.0.0.1:{port}/", timeout=5) as ws:
            assert ws.recv() == "A 127.0.0.1"


def test_haproxy_tunnel_timeout_spares_kept_alive_connections(run_server, haproxy) -> None:
    """With the timeouts at 1 s, a connection idle for 2 s lives if the server pings, and is cut if not."""
    keepalive = blockws.KeepAlive(interval=0.25, timeout=2)
    try:
        pinging = run_server(_named("pings"), keepalive=keepalive)
        silent = run_server(_named("silent"), keepalive=None)
        port = haproxy(pinging.port, silent.port, lambda conf: re.sub(r"(timeout \S+) \S+", r"\1 1s", conf))
        # The clients' keepalive answers pings; it would send its own only after 20 s.
        conns = [blockws.connect(f"ws://127.0.0.1:{port}/", timeout=5) for _ in range(2)]
        try:
            names = [str(ws.recv()).split()[0] for ws in conns]
            assert sorted(names) == ["pings", "silent"]
            time.sleep(2.0)
            for name, ws in zip(names, conns):
                if name == "pings":
                    ws.sendall("still there?")
                    assert ws.recv() == "still there?"
                else:
                    with pytest.raises(blockws.ConnectionClosedError):
                        ws.sendall("still there?")
                        ws.recv()
                    assert ws.close_code == 1006
        finally:
            for ws in conns:
                ws.close()
    finally:
        keepalive.close()


def test_haproxy_terminates_tls(run_server, haproxy, tls_ca: Any, tmp_path: Path) -> None:
    ca = tls_ca
    pem = tmp_path / "chat.pem"
    ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(pem))
    servers = [run_server(_named("A")), run_server(_named("B"))]

    def tls(conf: str) -> str:
        line = "# bind :443 ssl crt /etc/haproxy/certs/chat.pem"
        assert line in conf
        listen = re.search(r"bind (127\.0\.0\.1:\d+)", conf)
        assert listen is not None
        # The TLS line, on the test's port, in place of the plain one.
        conf = conf.replace(f"bind {listen[1]}\n", "")
        return conf.replace(line, f"bind {listen[1]} ssl crt {pem}")

    port = haproxy(servers[0].port, servers[1].port, tls)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    with blockws.connect(f"wss://localhost:{port}/", ssl_context=client_ctx, timeout=5) as ws:
        assert str(ws.recv()).split()[0] in ("A", "B")
        ws.sendall("over TLS to HAProxy, plain to blockws")
        assert ws.recv() == "over TLS to HAProxy, plain to blockws"


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    """systemd-analyze verify accepts the unit (its interpreter pointed at this one) without a warning."""
    if SYSTEMD_ANALYZE is None:
        pytest.skip("needs systemd-analyze (Debian: apt install systemd)")
    unit = (EXAMPLE / "blockws-chat.service").read_text()
    keys: dict[str, Any] = dict(re.findall(r"^(\w+)=(.*)$", unit, re.M))
    assert keys["KillSignal"] == "SIGTERM"
    assert keys["ExecReload"] == "/bin/kill -HUP $MAINPID"  # a rolling restart
    assert keys["Restart"] == "on-failure"
    assert int(keys["LimitNOFILE"]) >= 10_000
    # Above the supervisor's own deadline: close_timeout (10 s) + 3 s.
    assert float(keys["TimeoutStopSec"]) > blockws.connection.DEFAULT_CLOSE_TIMEOUT + 3
    assert " -m blockws serve server:chat --workers " in keys["ExecStart"]
    # verify checks the command exists: the venv's interpreter is this one here.
    unit = unit.replace("/srv/chat/venv/bin/python", sys.executable).replace("/srv/chat", str(tmp_path))
    (tmp_path / "blockws-chat.service").write_text(unit)
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "./blockws-chat.service"], cwd=tmp_path, capture_output=True, text=True
    )
    # A bad value is only a warning ("... ignoring"): any line about the unit fails.
    problems = [line for line in (done.stdout + done.stderr).splitlines() if "blockws-chat.service" in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr


def deploying_sample(containing: str) -> str:
    """The code sample (a ``::`` literal block) of docs/deploying.rst that contains ``containing``."""
    text = (EXAMPLE.parent.parent / "docs" / "deploying.rst").read_text(encoding="utf-8")
    blocks = [textwrap.dedent(block) for block in re.findall(r"::\n\n((?:    .*\n|\n)+)", text)]
    [sample] = [block for block in blocks if containing in block]
    return sample


def test_deploying_guide_lean_compression_sample(run_server) -> None:
    sample = deploying_sample("PerMessageDeflate")
    namespace: dict[str, Any] = {"blockws": blockws}
    exec(sample.partition("server = ")[0], namespace)  # all but serve() on port 8001
    server = run_server(compression=namespace["lean"])
    with blockws.connect(server.url, timeout=5) as ws:  # offers permessage-deflate as browsers do
        assert ws.response is not None
        agreed = ws.response.headers["Sec-WebSocket-Extensions"]
        assert "server_max_window_bits=11" in agreed and "client_max_window_bits=11" in agreed
        message = '{"user": "ann", "text": "hello"} ' * 40
        ws.sendall(message)
        assert ws.recv() == message


def test_deploying_guide_reconnect_sample(run_server) -> None:
    """The first connection is lost (1006): the sample reconnects; the second ends with 1000: it stops."""
    served: list[int] = []

    def handler(ws: blockws.WebSocket) -> None:
        served.append(1)
        if len(served) == 1:
            ws.abort()
        else:
            ws.sendall("back")

    server = run_server(handler)
    sample = deploying_sample("blockws.reconnect").replace("wss://chat.example.com/ws", server.url)
    printed: list[str] = []
    exec(sample, {"blockws": blockws, "print": printed.append})
    assert printed == ["back"] and len(served) == 2
