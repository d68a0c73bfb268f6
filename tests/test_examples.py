"""Every example runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


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
    out = run_example("auth.py")
    assert "attempt 2" in out and "server says: hello alice" in out and "HTTP 401" in out


def test_redirect_example() -> None:
    out = run_example("redirect.py")
    assert "/new-home" in out and "max_redirects=0" in out


def test_proxy_example() -> None:
    out = run_example("proxy.py")
    assert "the proxy asks for a password" in out and "echo: hello through the proxy" in out
