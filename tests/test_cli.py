"""The command line, driven as a subprocess (pipes and a pty)."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import blockws
from blockws import Response


def cli(*args: str, stdin: str = "", timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blockws", *args], input=stdin, capture_output=True, text=True, timeout=timeout
    )


def test_piped_stdin_against_an_echo_server(echo_server):
    out = cli(echo_server.url, stdin="hi\n/binary 00ff10\nthere\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["< hi", "< (binary) 00 ff 10", "< there"]
    assert "closed by the peer: 1000" in out.stderr


def test_trace_shows_handshake_and_frames(echo_server):
    out = cli("--trace", "--no-compression", echo_server.url, stdin="hello\n")
    assert out.returncode == 0, out.stderr
    assert "> GET / HTTP/1.1" in out.stderr and "< HTTP/1.1 101 Switching Protocols" in out.stderr
    sent = [line for line in out.stderr.splitlines() if line.startswith("> FIN=1 RSV=000 TEXT")]
    assert sent and "MASK=1 len=5" in sent[0] and "'hello'" in sent[0]
    assert any(line.startswith("< FIN=1 RSV=000 TEXT   MASK=0") for line in out.stderr.splitlines())
    assert "CLOSE  MASK=1" in out.stderr and "code=1000" in out.stderr


def test_close_with_a_code_and_exit_status(echo_server):
    out = cli(echo_server.url, stdin="/close 4000 bye now\n")
    assert out.returncode == 1  # not a normal closure
    out = cli(echo_server.url, stdin="/ping\n")
    assert out.returncode == 0 and "pong in" in out.stdout


def test_errors_are_one_clear_line(run_server):
    for args, expected in [
        (["ws://127.0.0.1:1/"], "blockws: "),
        (["http//nope"], "blockws: "),
        (["ws://127.0.0.1:6000/"], "banned ports"),
    ]:
        out = cli(*args)
        assert out.returncode == 1
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("blockws: ") and expected in lines[0], out.stderr
        assert "Traceback" not in out.stderr
    server = run_server(process_request=lambda r: Response(401, headers={"WWW-Authenticate": 'Basic realm="x"'}))
    out = cli(server.url)
    assert out.returncode == 1 and "HTTP 401" in out.stderr and "Traceback" not in out.stderr


def test_serve_chat_and_help():
    proc = subprocess.Popen(
        [sys.executable, "-m", "blockws", "serve", "--port", "0", "--chat"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        with blockws.connect(url, timeout=5) as a, blockws.connect(url, timeout=5) as b:
            time.sleep(0.1)
            a.sendall("to everyone")
            assert b.recv() == "to everyone"
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()
    for args in (["--help"], ["serve", "--help"], ["demo", "--help"]):
        out = cli(*args)
        assert out.returncode == 0 and "usage:" in out.stdout


def test_interactive_session_through_a_pty(echo_server):
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "blockws", echo_server.url], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    output = b""

    def read_until(text: bytes, timeout: float = 10) -> None:
        nonlocal output
        end = time.monotonic() + timeout
        while text not in output and time.monotonic() < end:
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    output += os.read(master, 4096)
                except OSError:
                    break
        assert text in output, output

    try:
        read_until(b"connected to")
        os.write(master, b"typed by hand\n")
        read_until(b"< typed by hand")
        os.write(master, b"/close\n")
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
