"""Every example runs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

# Each example runs as a script in its own interpreter.
pytestmark = pytest.mark.slow

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
