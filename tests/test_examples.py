"""Every example runs."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

import blockws

from .helpers import EXAMPLES, http_get, run_example_server, running

# Each example runs as a script in its own interpreter.
pytestmark = pytest.mark.slow


def test_echo_server_and_client() -> None:
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "echo_server.py"), "0"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("echo server on ws://127.0.0.1:")
        url = line.split()[-1]
        out = subprocess.run(
            [sys.executable, str(EXAMPLES / "echo_client.py"), url], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        assert "sent 'wörld', got back 'wörld'" in out.stdout
        assert "closed with code 1000" in out.stdout
    finally:
        server.terminate()
        server.wait(10)
        if server.stdout is not None:
            server.stdout.close()


def test_demo() -> None:
    out = subprocess.run([sys.executable, "-m", "blockws", "demo"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "client: recv() -> 'hello'" in out.stdout
    assert "close_code=1000" in out.stdout


def run_example(name: str) -> str:
    out = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_auth_example() -> None:
    out = run_example("auth.py").splitlines()
    for scheme in ("Basic", "Digest"):
        assert f"{scheme} challenge for realm 'example', attempt 2" in out
        assert f"sent 'Authorization: {scheme} ...', server says: hello alice" in out
    assert out.count("with a wrong fixed password: HTTP 401") == 2


def test_redirect_example() -> None:
    out = run_example("redirect.py")
    assert "/new-home" in out and "max_redirects=0" in out


def test_proxy_example() -> None:
    out = run_example("proxy.py")
    assert "the proxy asks for a password" in out and "echo: hello through the proxy" in out


def test_chat_example() -> None:
    assert 'carol got: "hi, it\'s alice"' in run_example("chat.py")


def test_select_loop_example() -> None:
    out = run_example("select_loop.py")
    assert sorted(out.splitlines()) == sorted(f"echo: {w} from {i}" for w in ("first", "second") for i in range(3))


def test_partial_send_example() -> None:
    out = run_example("partial_send.py")
    assert "BlockingIOError" in out and "received every byte, in order: True" in out


def test_half_close_example() -> None:
    out = run_example("half_close.py")
    assert "their sum is 55" in out and "closed with 1000" in out


def test_keepalive_example() -> None:
    out = run_example("keepalive.py")
    assert "keepalive threads for 10 connection ends: 2" in out and "round trip" in out


def test_tls_example() -> None:
    import shutil

    import pytest

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    out = run_example("tls.py")
    assert "over TLS: 'encrypted hello'" in out and "CERTIFICATE_VERIFY_FAILED" in out


def register(url: str, name: str) -> blockws.WebSocket:
    """A chat client that said hello and got its own hello back: the chat counts it in."""
    ws = blockws.connect(url, timeout=10)
    ws.sendall(f"{name} here")
    assert ws.recv() == f"{name} here"  # the chat sends a message to its sender too
    return ws


def chat_through(page: str) -> None:
    """Two clients of the chat whose page is at ``page`` see each other's messages."""
    status, body = http_get(page)
    assert status == 200 and "new WebSocket" in body
    assert http_get(page + "ws")[0] == 426  # a plain GET of the WebSocket's path
    url = page.replace("http://", "ws://") + "ws"
    with register(url, "alice") as alice, register(url, "bob") as bob:
        assert alice.recv() == "bob here"
        bob.sendall("hi alice, it's bob")
        assert alice.recv() == "hi alice, it's bob" and bob.recv() == "hi alice, it's bob"
        alice.sendall("wörld")
        assert bob.recv() == "wörld" and alice.recv() == "wörld"
    assert alice.close_code == bob.close_code == 1000


def test_flask_chat_example() -> None:
    with run_example_server("flask_chat.py") as page:
        chat_through(page)


def test_flask_chat_example_under_gunicorn() -> None:
    command = [sys.executable, "-m", "gunicorn", "-k", "gthread", "--threads", "50", "-b", "127.0.0.1:0"]
    command += ["--graceful-timeout", "5", "--chdir", str(EXAMPLES), "flask_chat:app"]
    import gunicorn.config

    if hasattr(gunicorn.config, "ControlSocketDisable"):  # else gunicorn 27 listens on ~/.gunicorn/gunicorn.ctl
        command.append("--no-control-socket")
    with running(command, r"Listening at: (http://127\.0\.0\.1:\d+)", "stderr") as address:
        chat_through(address + "/")


def test_http_server_example(tmp_path: Path) -> None:
    (tmp_path / "index.html").write_text("<p>a file</p>", encoding="utf-8")
    with run_example_server("http_server.py", "--directory", str(tmp_path)) as page:
        assert http_get(page) == (200, "<p>a file</p>")
        assert http_get(page + "ws")[0] == 426
        with blockws.connect(page.replace("http://", "ws://") + "ws", timeout=10) as ws:
            for message in ("hello", b"\x00binary", "wörld"):
                ws.sendall(message)
                assert ws.recv() == message
        assert ws.close_code == 1000


def guide_sample(containing: str) -> str:
    """The code sample (a ``::`` literal block) of docs/servers.rst that contains ``containing``."""
    text = (EXAMPLES.parent / "docs" / "servers.rst").read_text(encoding="utf-8")
    blocks = [textwrap.dedent(block) for block in re.findall(r"::\n\n((?:    .*\n|\n)+)", text)]
    [sample] = [block for block in blocks if containing in block]
    return sample


def test_servers_guide_flask_route_sample() -> None:
    from werkzeug.serving import make_server

    namespace: dict[str, Any] = {"__name__": "guide_sample"}
    exec(guide_sample("websocket=True"), namespace)
    server = make_server("127.0.0.1", 0, namespace["app"], threaded=True)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        page = f"http://127.0.0.1:{server.server_port}/"
        assert http_get(page + "ws?token=secret")[0] == 426
        with pytest.raises(blockws.InvalidStatus, match="403"):
            blockws.connect(page + "ws", timeout=10)
        with blockws.connect(page + "ws?token=secret", timeout=10) as ws:
            ws.sendall("hello")
            assert ws.recv() == "hello"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def test_servers_guide_socketserver_sample() -> None:
    import socketserver

    sample = guide_sample("WebSocketHandler")
    namespace: dict[str, Any] = {}
    exec(sample.partition("with socketserver")[0], namespace)  # all but serve_forever() on port 8765
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), namespace["Echo"]) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            with blockws.connect(f"ws://127.0.0.1:{server.server_address[1]}/", timeout=10) as ws:
                ws.sendall("hello")
                assert ws.recv() == "hello"
                ws.sendall("x" * 2**17)  # over the sample's max_size
                assert ws.recv() is None and ws.close_code == 1009
        finally:
            server.shutdown()
            thread.join(10)
