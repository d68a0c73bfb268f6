"""The command line, driven as a subprocess (pipes and a pty)."""

from __future__ import annotations

import base64
import fcntl
import importlib.util
import os
import pty
import select
import signal
import socket
import ssl
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import blockws
from blockws import Response

from .helpers import pings_while_reading


def cli(*args: str, stdin: str = "", timeout: float = 30, **popen: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blockws", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        **popen,
    )


def one_error_line(out: subprocess.CompletedProcess[str], expected: str) -> None:
    """The command failed with exactly one ``blockws: ...`` line on stderr."""
    assert out.returncode == 1, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("blockws: ") and expected in lines[0], out.stderr


def _controlling_terminal() -> None:
    # Runs in the child after setsid(): the pty on stdin becomes its terminal,
    # so getpass() prompts there (and not on the terminal running the tests).
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


class Terminal:
    """``python -m blockws ARGS`` on a pseudo-terminal of its own."""

    def __init__(self, *args: str) -> None:
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "blockws", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            preexec_fn=_controlling_terminal,
        )
        os.close(slave)
        self.output = b""

    def read_until(self, text: bytes, timeout: float = 15) -> None:
        end = time.monotonic() + timeout
        while text not in self.output and time.monotonic() < end:
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.output += os.read(self.master, 4096)
                except OSError:
                    break
        assert text in self.output, self.output

    def type(self, text: bytes) -> None:
        os.write(self.master, text)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)


@pytest.fixture
def terminal() -> Iterator[Callable[..., Terminal]]:
    started: list[Terminal] = []

    def start(*args: str) -> Terminal:
        t = Terminal(*args)
        started.append(t)
        return t

    yield start
    for t in started:
        t.close()


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


@pytest.mark.slow
def test_close_with_a_code_and_exit_status(echo_server):
    out = cli(echo_server.url, stdin="/close 4000 bye now\n")
    assert out.returncode == 1  # not a normal closure
    out = cli(echo_server.url, stdin="/ping\n")
    assert out.returncode == 0 and "pong in" in out.stdout


@pytest.mark.slow
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


@pytest.mark.slow
def test_serve_chat_and_help():
    proc = start_server("--chat")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        url = proc.stdout.readline().split()[-1]
        with blockws.connect(url, timeout=10) as a, blockws.connect(url, timeout=10) as b:
            # Both are in the chat once the server has said so (not after a sleep).
            for _ in range(2):
                assert proc.stderr.readline().startswith("connection from 127.0.0.1:")
            a.sendall("to everyone")
            assert b.recv() == "to everyone"
    finally:
        stop_server(proc)
    for args in (["--help"], ["serve", "--help"], ["demo", "--help"]):
        out = cli(*args)
        assert out.returncode == 0 and "usage:" in out.stdout


@pytest.mark.slow
def test_chat_goes_on_past_a_member_that_does_not_read():
    """A chat member that stops reading misses messages, and the server says
    so on stderr, instead of holding up everyone else."""
    proc = start_server("--chat")
    try:
        assert proc.stdout is not None and proc.stderr is not None
        url = proc.stdout.readline().split()[-1]
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", int(url.rstrip("/").rsplit(":", 1)[1])))
        stalled.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )  # and never reads
        with blockws.connect(url, timeout=10, compression=None) as a, blockws.connect(url, timeout=10) as b:
            for _ in range(3):
                assert proc.stderr.readline().startswith("connection from 127.0.0.1:")
            for i in range(100):  # 6.5 MB: far more than the stalled member's buffers take
                a.sendall(f"{i:3}" + "x" * 65536)
                assert b.recv() == f"{i:3}" + "x" * 65536
        stalled.close()
    finally:
        stderr = stop_server(proc)
    assert "is too slow: a message skipped" in stderr


@pytest.mark.slow
def test_version_and_the_help_for_every_command():
    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"blockws {blockws.__version__}"
    out = cli("--help")
    assert out.returncode == 0
    # The other commands, and how to get their options.
    assert "blockws serve" in out.stdout and "blockws demo" in out.stdout
    assert "blockws serve --help" in out.stdout and "--cafile FILE" in out.stdout
    assert "//text" in out.stdout and "/help" in out.stdout
    out = cli("serve", "--help")
    assert out.returncode == 0 and "--broadcast-stdin" in out.stdout and "--port PORT" in out.stdout


def test_slash_commands_help_unknown_and_a_literal_slash(run_server):
    server, seen, done = recording_server(run_server)
    stdin = "/help\n/frobnicate now\n/pong\n/ping extra\n//etc/passwd\n//\nplain\n/close 1000 bye\n"
    out = cli(server.url, stdin=stdin)
    assert out.returncode == 0, out.stderr
    # Only the plain line and the doubled slashes went out, the first slash
    # removed. /close comes right behind them and drops the echoes still in
    # flight, as close() does: some may not be shown, but none out of order.
    shown = out.stdout.splitlines()
    assert shown == ["< /etc/passwd", "< /", "< plain"][: len(shown)]
    assert done.wait(10) and seen[0][5] == ["/etc/passwd", "/", "plain"]
    for command in ("/ping", "/close [CODE [REASON]]", "/binary HEX", "/help", "//text"):
        assert command in out.stderr, out.stderr
    hints = [line for line in out.stderr.splitlines() if line.startswith("blockws: ")]
    assert len(hints) == 3, out.stderr
    assert "unknown command /frobnicate" in hints[0] and "/help" in hints[0] and "//frobnicate" in hints[0]
    assert "unknown command /pong" in hints[1]
    assert "/ping takes no arguments" in hints[2]
    assert done.wait(10) and seen[0][1:3] == (1000, "bye")


def test_interactive_session_through_a_pty(echo_server, terminal):
    term = terminal(echo_server.url)
    term.read_until(b"connected to")
    term.type(b"typed by hand\n")
    term.read_until(b"< typed by hand")
    term.type(b"/close\n")
    assert term.proc.wait(10) == 0


# -- mistyped commands, prompts and interrupts --------------------------------------


def recording_server(run_server: Callable[..., Any], **options: Any) -> tuple[Any, list[Any], threading.Event]:
    """An echo server that records each connection's request, close code and messages."""
    seen: list[Any] = []
    done = threading.Event()

    def handler(ws: blockws.WebSocket) -> None:
        received = []
        try:
            for message in ws:
                received.append(message)
                ws.sendall(message)
        finally:
            seen.append((ws.request, ws.close_code, ws.close_reason, ws.subprotocol, ws.username, received))
            done.set()

    return run_server(handler, **options), seen, done


def test_mistyped_commands_print_a_hint_and_the_session_goes_on(run_server):
    server, seen, done = recording_server(run_server)
    stdin = "/binary zz\n/close abc\n/close 999\n/close 1000 " + "x" * 124 + "\nstill here\n/close 1000 bye\n"
    out = cli(server.url, stdin=stdin)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["< still here"]
    hints = [line for line in out.stderr.splitlines() if line.startswith("blockws: ")]
    assert len(hints) == 4 and "/binary takes hex digits" in hints[0], out.stderr
    assert all("/close [CODE [REASON]]" in hint for hint in hints[1:])
    assert "invalid close code 999" in hints[2] and "123 bytes" in hints[3]
    assert "Traceback" not in out.stderr
    assert done.wait(10)
    assert seen[0][1:3] == (1000, "bye")  # the server got our Close, not a dropped connection


def test_end_of_input_at_the_password_prompt(run_server):
    server = run_server(auth=blockws.BasicAuth("cli", {"alice": "wonderland"}))
    # A new session has no terminal: getpass() reads stdin, which is empty.
    out = cli("--user", "alice", server.url, stdin="", start_new_session=True)
    assert out.returncode == 1, out.stderr
    assert out.stderr.strip().splitlines()[-1] == "blockws: no password given (end of input at the password prompt)"
    assert "Traceback" not in out.stderr and "GetPassWarning" not in out.stderr


def test_ctrl_c_while_connecting_is_one_line():
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, "-m", "blockws", f"ws://127.0.0.1:{port}/"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            listener.settimeout(15)
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(15)
                request = b""
                while b"\r\n\r\n" not in request:
                    chunk = conn.recv(4096)
                    assert chunk, request
                    request += chunk
                # The client now waits for our answer to its handshake.
                proc.send_signal(signal.SIGINT)
                _, stderr = proc.communicate(timeout=15)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == 130
    assert stderr.strip() == "blockws: interrupted"


def test_exit_status_1_when_the_connection_is_lost(run_server):
    def handler(ws: blockws.WebSocket) -> None:
        ws.recv()
        ws.abort()

    server = run_server(handler)
    out = cli(server.url, stdin="boom\n")
    assert out.returncode == 1, out.stderr
    assert "connection lost" in out.stderr and "Traceback" not in out.stderr


# -- options ------------------------------------------------------------------------


def test_trace_masks_credentials(run_server):
    server, seen, done = recording_server(run_server, auth=blockws.BasicAuth("cli", {"alice": "s3cret"}))
    url = f"ws://alice:s3cret@127.0.0.1:{server.port}/"
    out = cli("--trace", "--header", "Cookie: session=c00kie", url, stdin="hi\n")
    assert out.returncode == 0, out.stderr
    assert done.wait(10) and seen[0][4] == "alice"  # the credentials did go over the wire
    assert "> Authorization: Basic ***" in out.stderr and "> Cookie: ***" in out.stderr
    secret = base64.b64encode(b"alice:s3cret").decode()
    assert secret not in out.stderr and "c00kie" not in out.stderr and "s3cret" not in out.stderr


@pytest.mark.slow
def test_header_subprotocol_and_origin(run_server):
    server, seen, done = recording_server(run_server, subprotocols=["chat.v2"], origins=["https://good.example"])
    out = cli(
        *["--header", "X-Test: 1", "--subprotocol", "chat.v1", "--subprotocol", "chat.v2"],
        *["--origin", "https://good.example", server.url],
        stdin="hi\n",
    )
    assert out.returncode == 0, out.stderr
    assert "subprotocol: chat.v2" in out.stderr.splitlines()
    assert out.stdout.splitlines() == ["< hi"]
    assert done.wait(10)
    request, _, _, subprotocol, _, _ = seen[0]
    assert request.headers["X-Test"] == "1" and request.headers["Origin"] == "https://good.example"
    assert subprotocol == "chat.v2"
    one_error_line(cli("--origin", "https://evil.example", server.url), "HTTP 403")
    one_error_line(cli("--header", "no colon", server.url), "--header needs 'Name: value'")


def test_a_malformed_header_option_is_not_quoted_whole():
    out = cli("--header", "Authorization Bearer t0ken-s3cret", "ws://127.0.0.1:1/")
    one_error_line(out, "--header needs 'Name: value', not 'Authorization' (and 20 more characters, not shown)")
    assert "s3cret" not in out.stderr


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets on this platform")
def test_the_server_names_a_unix_socket_peer_by_the_path(tmp_path, run_server):
    from blockws.__main__ import peer_name

    names: list[str] = []

    def handler(ws: blockws.WebSocket) -> None:
        names.append(peer_name(ws))
        ws.sendall("named")

    path = str(tmp_path / "ws.sock")
    with blockws.serve(handler, path=path) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        unix.settimeout(5)
        unix.connect(path)
        with blockws.connect("ws://localhost/", sock=unix, timeout=5) as ws:
            assert ws.recv() == "named"
            assert peer_name(ws) == f"unix:{path}"  # the client's side: the server's path
    thread.join(10)
    # The server's side: the client's socket has no name (''), the path it came in through stands for it.
    assert names == [f"unix:{path}"]
    tcp = run_server(handler)
    with blockws.connect(tcp.url, timeout=5) as ws:
        assert ws.recv() == "named"
        assert names[1] == f"127.0.0.1:{ws.local_address[1]}"


@pytest.mark.slow
def test_insecure_against_a_self_signed_certificate(run_server, tls_ca):
    ca = tls_ca
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    server = run_server(ssl_context=server_ctx)
    url = f"wss://localhost:{server.port}/"
    one_error_line(cli(url), "CERTIFICATE_VERIFY_FAILED")
    out = cli("--insecure", url, stdin="over tls\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["< over tls"]


def test_tls_options_with_a_ws_url_are_ignored(echo_server):
    """connect() refuses ssl_context with ws://; the CLI passes it for wss:// only."""
    out = cli("--insecure", echo_server.url, stdin="plain\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["< plain"]


@pytest.mark.slow
def test_cafile_trusts_a_ca_and_the_error_says_so(run_server, tls_ca, tmp_path):
    ca = tls_ca
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    server = run_server(ssl_context=server_ctx)
    url = f"wss://localhost:{server.port}/"
    out = cli(url)
    one_error_line(out, f"can't verify the TLS certificate of localhost:{server.port}")
    assert "--cafile FILE" in out.stderr and "CERTIFICATE_VERIFY_FAILED" in out.stderr
    assert "ssl_context=" not in out.stderr  # the library's advice is for programs, not for the command line
    cafile = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(cafile))
    out = cli("--cafile", str(cafile), url, stdin="trusted\n")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["< trusted"]
    # The name must match too: the advice then is about the name.
    out = cli("--cafile", str(cafile), f"wss://127.0.0.1:{server.port}/")
    one_error_line(out, "connect with a name the certificate lists")
    one_error_line(cli("--cafile", str(tmp_path / "missing.pem"), url), "can't load --cafile")
    out = cli("--cafile", str(cafile), "--insecure", url)
    assert out.returncode == 2 and "not allowed with argument" in out.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(importlib.util.find_spec("pproxy") is None, reason="pproxy is not installed")
def test_proxy_option(echo_server):
    port = free_port()
    # A proxy that wants a password proves the connection went through it.
    cmd = [sys.executable, "-m", "pproxy", "-l", f"http://127.0.0.1:{port}#user:pw", "--auth", "0"]
    proxy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        out = cli("--proxy", f"http://user:pw@127.0.0.1:{port}", echo_server.url, stdin="via the proxy\n")
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == ["< via the proxy"]
        one_error_line(cli("--proxy", f"http://127.0.0.1:{port}", echo_server.url), "407")
    finally:
        proxy.terminate()
        proxy.wait(10)


@pytest.mark.slow
def test_user_answers_the_password_prompt_on_a_terminal(run_server, terminal):
    def handler(ws: blockws.WebSocket) -> None:
        ws.sendall(f"hello {ws.username}")
        for message in ws:
            ws.sendall(message)

    server = run_server(handler, auth=blockws.BasicAuth("cli", {"alice": "wonderland"}))
    term = terminal("--user", "alice", server.url)
    term.read_until(b"password for alice (Basic realm 'cli'): ")
    term.type(b"rabbit\n")  # wrong: the server answers 401 again and we are asked again
    term.read_until(b"(Basic realm 'cli'): \r\npassword for alice")
    term.type(b"wonderland\n")
    term.read_until(b"< hello alice")
    assert b"wonderland" not in term.output and b"rabbit" not in term.output  # not echoed
    term.type(b"/close\n")
    assert term.proc.wait(10) == 0

    term = terminal("--user", "alice", server.url)
    term.read_until(b"password for alice (Basic realm 'cli'): ")
    term.type(b"\x03")  # Ctrl-C: the terminal sends SIGINT
    term.read_until(b"\r\nblockws: interrupted\r\n")
    assert term.proc.wait(10) == 130
    assert b"Traceback" not in term.output


# -- the servers and the installed command -----------------------------------------


def start_server(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "blockws", "serve", "--port", "0", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_server(proc: subprocess.Popen[str]) -> str:
    """Stop it and return what it wrote on stderr."""
    proc.terminate()
    _, stderr = proc.communicate(timeout=10)
    return stderr


def test_serve_echo_with_trace():
    proc = start_server("--echo", "--trace")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("echo server on ws://127.0.0.1:"), line
        with blockws.connect(line.split()[-1], timeout=5, compression=None) as ws:
            ws.sendall("echo me")
            assert ws.recv() == "echo me"
    finally:
        stderr = stop_server(proc)
    assert "< GET / HTTP/1.1" in stderr and "> HTTP/1.1 101 Switching Protocols" in stderr
    assert "< FIN=1 RSV=000 TEXT   MASK=1 len=7" in stderr and "'echo me'" in stderr
    assert "> FIN=1 RSV=000 TEXT   MASK=0 len=7" in stderr


def test_serve_broadcast_stdin():
    proc = start_server("--broadcast-stdin")
    try:
        assert proc.stdout is not None and proc.stderr is not None and proc.stdin is not None
        url = proc.stdout.readline().split()[-1]
        with blockws.connect(url, timeout=10) as ws:
            assert proc.stderr.readline().startswith("connection from 127.0.0.1:")
            proc.stdin.write("news for everyone\n")
            proc.stdin.flush()
            assert ws.recv() == "news for everyone"
            ws.sendall("not echoed")
            proc.stdin.write("more news\n")
            proc.stdin.flush()
            assert ws.recv() == "more news"
    finally:
        stop_server(proc)


def test_installed_console_script():
    script = Path(sys.executable).parent / "blockws"
    assert script.exists(), "pip install -e . installs the blockws command next to python"
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.startswith("usage: blockws")


@pytest.mark.slow
def test_serve_no_compression_and_keepalive_options():
    proc = start_server("--no-compression", "--keepalive", "0.2")
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        with blockws.connect(url, timeout=5, keepalive=None) as ws:  # permessage-deflate offered
            assert ws.extensions == []
            assert pings_while_reading(ws, 0.9) >= 2
            ws.sendall("still open")
            assert ws.recv() == "still open"
    finally:
        stop_server(proc)
    proc = start_server("--keepalive", "0")
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        with blockws.connect(url, timeout=5, keepalive=None) as ws:
            assert ws.extensions and ws.extensions[0].startswith("permessage-deflate")
            assert pings_while_reading(ws, 0.5) == 0
    finally:
        stop_server(proc)
    out = cli("serve", "--keepalive", "-1")
    assert out.returncode == 2 and "--keepalive takes seconds" in out.stderr


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGUSR1"), reason="POSIX signals")
def test_serve_prints_stats_on_sigusr1_and_limits_per_ip():
    proc = start_server("--max-connections-per-ip", "1")
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split()[-1]
        with blockws.connect(url, timeout=5) as ws:
            ws.sendall("abc")
            assert ws.recv() == "abc"
            with pytest.raises(blockws.InvalidStatus) as info:
                blockws.connect(url, open_timeout=5)
            assert info.value.status == 429
            proc.send_signal(signal.SIGUSR1)
            assert proc.stderr is not None
            line = ""
            while "connections=" not in line:
                line = proc.stderr.readline()
                assert line, "stderr ended"
        expected = (
            "connections=1 accepted=1 refused=1 messages_received=1 messages_sent=1"
            " bytes_received=3 bytes_sent=3 closed=-"
        )
        assert line.rstrip("\n") == f"blockws: {proc.pid}: {expected}"
    finally:
        stop_server(proc)
    out = cli("serve", "--max-connections-per-ip", "0")
    assert out.returncode == 2 and "--max-connections-per-ip takes 1 or more" in out.stderr
