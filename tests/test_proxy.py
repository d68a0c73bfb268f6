"""Proxies: pproxy (a real proxy server) for CONNECT and SOCKS, scripted proxies for the odd cases."""

from __future__ import annotations

import base64
import importlib.util
import logging
import os
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import blockws
from blockws.proxy import ProxyURL, _environment_proxies, open_tunnel, proxy_from_environment, redact_proxy_url
from blockws.utils import Deadline


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def pproxy() -> Iterator[Callable[[str], int]]:
    """Start ``pproxy -l SCHEME://127.0.0.1:PORT[#user:pass]``; returns the port.

    pproxy runs as ``python -m pproxy`` with this interpreter, so a venv's
    python finds it without the venv being activated (no PATH lookup).
    """
    if importlib.util.find_spec("pproxy") is None:
        pytest.skip("pproxy is not installed")
    procs: list[subprocess.Popen[bytes]] = []

    def start(listen: str) -> int:
        port = free_port()
        scheme, _, auth = listen.partition("#")
        spec = f"{scheme}://127.0.0.1:{port}" + (f"#{auth}" if auth else "")
        # --auth 0: ask every connection for credentials (pproxy remembers IPs otherwise).
        cmd = [sys.executable, "-m", "pproxy", "-l", spec, "--auth", "0"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
        procs.append(proc)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return port
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("pproxy did not start")

    yield start
    for proc in procs:
        proc.terminate()
        proc.wait(10)


def echo_through(ws: blockws.WebSocket) -> None:
    for message in ["through the proxy", b"\x00" * 70_000]:
        ws.sendall(message)
        assert ws.recv() == message


@pytest.mark.parametrize("scheme", ["http", "socks5", "socks5h", "socks4", "socks4a"])
def test_tunnel_schemes(pproxy, echo_server, scheme):
    port = pproxy("http" if scheme == "http" else scheme.rstrip("ha") if scheme != "socks4a" else "socks4")
    with blockws.connect(echo_server.url, proxy=f"{scheme}://127.0.0.1:{port}", timeout=5) as ws:
        echo_through(ws)
        # The traffic really went through the proxy: that is who we talk to.
        assert ws.remote_address[:2] == ("127.0.0.1", port)


def test_http_proxy_with_credentials_in_url_and_407(pproxy, echo_server):
    port = pproxy("http#user:secret")
    with pytest.raises(blockws.ProxyError, match="407"):
        blockws.connect(echo_server.url, proxy=f"http://127.0.0.1:{port}")
    with blockws.connect(echo_server.url, proxy=f"http://user:secret@127.0.0.1:{port}", timeout=5) as ws:
        echo_through(ws)
    asked: list[Any] = []

    def ask(challenge: blockws.Challenge) -> tuple[str, str]:
        asked.append((challenge.proxy, challenge.attempt))
        return ("user", "secret")

    with blockws.connect(echo_server.url, proxy=f"http://127.0.0.1:{port}", proxy_auth=ask, timeout=5) as ws:
        echo_through(ws)
    assert asked == [(True, 1)]


def test_407_retries_and_failures_are_logged_without_credentials(pproxy, echo_server, caplog):
    caplog.set_level(logging.DEBUG, logger="blockws.client")
    port = pproxy("http#puser:pr0xy-s3cret")
    with pytest.raises(blockws.ProxyError, match="407"):
        blockws.connect(echo_server.url, proxy=f"http://127.0.0.1:{port}", open_timeout=5)
    failures = [r for r in caplog.records if r.name == "blockws.client" and r.levelno == logging.INFO]
    assert len(failures) == 1 and "407" in failures[0].getMessage(), failures
    assert f"through the proxy http://127.0.0.1:{port}" in failures[0].getMessage()
    caplog.clear()
    with pytest.raises(blockws.ProxyError, match="can't connect to the proxy"):
        blockws.connect(echo_server.url, proxy=f"http://puser:pr0xy-s3cret@127.0.0.1:{free_port()}", open_timeout=5)
    failures = [r for r in caplog.records if r.name == "blockws.client" and r.levelno == logging.INFO]
    assert len(failures) == 1 and "http://puser:***@127.0.0.1:" in failures[0].getMessage(), failures
    caplog.clear()
    ask = lambda challenge: ("puser", "pr0xy-s3cret")  # noqa: E731 - asked after the 407
    with blockws.connect(echo_server.url, proxy=f"http://127.0.0.1:{port}", proxy_auth=ask, timeout=5) as ws:
        echo_through(ws)
    retries = [r.getMessage() for r in caplog.records if "HTTP 407" in r.getMessage()]  # (a port may hold 407)
    assert retries == [f"HTTP 407 from the proxy 127.0.0.1:{port}: retrying with Proxy-Authorization: Basic ***"]
    assert not [r for r in caplog.records if r.levelno > logging.DEBUG]  # a retry that works is no failure
    assert "pr0xy-s3cret" not in caplog.text and base64.b64encode(b"puser:pr0xy-s3cret").decode() not in caplog.text


def test_proxy_from_the_environment(pproxy, echo_server, monkeypatch):
    port = pproxy("http")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{port}")
    with blockws.connect(echo_server.url, timeout=5) as ws:
        echo_through(ws)
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:1")  # nothing listens there
    with pytest.raises(blockws.ProxyError, match="can't connect to the proxy"):
        blockws.connect(echo_server.url)
    with blockws.connect(echo_server.url, proxy=None, timeout=5) as ws:  # None: no proxy
        echo_through(ws)
    monkeypatch.setenv("no_proxy", "localhost,127.0.0.0/8")
    with blockws.connect(echo_server.url, timeout=5) as ws:
        echo_through(ws)


CLOSE = b"<close>"
RESET = b"<reset>"


def scripted_proxy(replies: list[bytes]) -> tuple[int, threading.Thread, list[bytes]]:
    """A fake proxy answering each CONNECT with the next canned reply.

    ``b""`` never answers; ``CLOSE`` and ``RESET`` end the connection (FIN or
    RST) once the request is read.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    seen: list[bytes] = []

    def run() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                for reply in replies:
                    head = b""
                    while b"\r\n\r\n" not in head:
                        chunk = conn.recv(4096)
                        if not chunk:
                            return
                        head += chunk
                    seen.append(head)
                    if reply == CLOSE:
                        return
                    if reply == RESET:
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        return
                    if reply:
                        conn.sendall(reply)
                    else:
                        time.sleep(1.0)  # never answers

    thread = threading.Thread(target=run)
    thread.start()
    return listener.getsockname()[1], thread, seen


def test_refusal_of_a_non_443_port_says_so():
    port, thread, _ = scripted_proxy([b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"])
    with pytest.raises(blockws.ProxyError, match="many proxies allow CONNECT to port 443 only"):
        open_tunnel(f"http://127.0.0.1:{port}", "example.com", 8765, Deadline(5))
    thread.join()


def test_407_then_200_with_bare_lf_on_the_same_connection():
    port, thread, seen = scripted_proxy(
        [
            b'HTTP/1.1 407 Proxy Authentication Required\nProxy-Authenticate: Basic realm="p"\nContent-Length: 0\n\n',
            b"HTTP/1.1 200 Connection established\n\n",
        ]
    )
    sock = open_tunnel(f"http://127.0.0.1:{port}", "example.com", 443, Deadline(5), proxy_auth=lambda r: "Basic dTpw")
    sock.close()
    thread.join()
    assert seen[0].startswith(b"CONNECT example.com:443 HTTP/1.1\r\n")
    assert b"Proxy-Authorization: Basic dTpw" in seen[1]


@pytest.mark.slow
def test_silent_proxy_times_out_and_garbage_is_a_proxy_error():
    port, thread, _ = scripted_proxy([b""])
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="CONNECT reply"):
        open_tunnel(f"http://127.0.0.1:{port}", "example.com", 443, Deadline(0.3))
    assert time.monotonic() - start < 1
    thread.join()
    port, thread, _ = scripted_proxy([b"SSH-2.0-OpenSSH\r\n\r\n"])
    with pytest.raises(blockws.ProxyError, match="invalid reply"):
        open_tunnel(f"http://127.0.0.1:{port}", "example.com", 443, Deadline(5))
    thread.join()


def test_proxy_urls_and_errors():
    assert repr(ProxyURL("http://u:hunter2@p:3128")) == "ProxyURL('http://p:3128')"
    assert repr(ProxyURL("socks5://[::1]")) == "ProxyURL('socks5://[::1]:1080')"
    assert ProxyURL("p.example").port == 8080
    with pytest.raises(blockws.ProxyError, match="unsupported proxy URL 'ftp://u:\\*\\*\\*@p'"):
        ProxyURL("ftp://u:hunter2@p")
    with pytest.raises(blockws.ProxyError, match="invalid host"):
        open_tunnel("http://p", "evil\r\nX: 1", 80, Deadline(1))


@pytest.mark.parametrize(
    ("env", "secure", "host", "expected"),
    [
        ({"http_proxy": "http://a"}, False, "h", "http://a"),
        ({"HTTP_PROXY": "http://A", "http_proxy": "http://a"}, False, "h", "http://a"),
        ({"https_proxy": "http://s", "http_proxy": "http://a"}, True, "h", "http://s"),
        ({"all_proxy": "socks5://x"}, True, "h", "socks5://x"),
        ({"http_proxy": "http://a", "no_proxy": "example.com"}, False, "www.example.com", None),
        ({"http_proxy": "http://a", "no_proxy": ".example.com"}, False, "example.com", None),
        ({"http_proxy": "http://a", "no_proxy": "example.com"}, False, "notexample.com", "http://a"),
        ({"http_proxy": "http://a", "no_proxy": "10.0.0.0/8"}, False, "10.1.2.3", None),
        ({"http_proxy": "http://a", "no_proxy": "::1"}, False, "::1", None),
        ({"http_proxy": "http://a", "no_proxy": "h:81"}, False, "h", "http://a"),
        ({"http_proxy": "http://a", "NO_PROXY": "*"}, False, "h", None),
        ({}, False, "h", None),
        # As urllib.request.getproxies(): an empty lower-case name unsets the upper-case one.
        ({"http_proxy": "", "HTTP_PROXY": "http://A"}, False, "h", None),
        ({"http_proxy": "http://a", "no_proxy": "", "NO_PROXY": "h"}, False, "h", "http://a"),
        # httpoxy: in a CGI script a request's "Proxy:" header sets HTTP_PROXY.
        ({"REQUEST_METHOD": "GET", "HTTP_PROXY": "http://evil"}, False, "h", None),
        ({"REQUEST_METHOD": "", "HTTP_PROXY": "http://evil"}, False, "h", None),
        ({"REQUEST_METHOD": "GET", "http_proxy": "http://a", "HTTP_PROXY": "http://evil"}, False, "h", "http://a"),
        ({"REQUEST_METHOD": "GET", "HTTPS_PROXY": "http://s"}, True, "h", "http://s"),
        ({"REQUEST_METHOD": "GET", "HTTP_PROXY": "http://evil", "ALL_PROXY": "socks5://x"}, False, "h", "socks5://x"),
    ],
)
def test_proxy_from_environment_table(env, secure, host, expected):
    assert proxy_from_environment(secure, host, 80, env) == expected


def test_httpoxy_a_cgi_script_ignores_HTTP_PROXY(pproxy, echo_server, monkeypatch):
    # What a web server sets for a request with "Proxy: http://127.0.0.1:1" (nothing listens there).
    monkeypatch.setenv("REQUEST_METHOD", "GET")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:1")
    assert proxy_from_environment(False, "127.0.0.1", echo_server.port) is None
    with blockws.connect(echo_server.url, timeout=5) as ws:
        echo_through(ws)
        assert ws.remote_address[:2] == ("127.0.0.1", echo_server.port)  # direct
    # The lower-case name can't come from a header: urllib keeps it, so do we.
    port = pproxy("http")
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{port}")
    with blockws.connect(echo_server.url, timeout=5) as ws:
        echo_through(ws)
        assert ws.remote_address[:2] == ("127.0.0.1", port)


PROXY_VARIABLES = [
    *(f"{scheme}_proxy" for scheme in ("http", "https", "all", "no", "ftp")),
    *(f"{scheme}_PROXY" for scheme in ("HTTP", "HTTPS", "ALL", "NO", "Http")),
    "http_PROXY",
    "REQUEST_METHOD",
    "PATH",
]


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(PROXY_VARIABLES), st.sampled_from(["", "http://a", "http://B", "GET"])))
def test_the_environment_is_read_as_urllib_reads_it(env):
    with mock.patch.dict(os.environ, env, clear=True):  # the oracle reads os.environ only
        expected = urllib.request.getproxies_environment()
    assert _environment_proxies(env) == expected


HOSTS = ["h", "H.example.com", "example.com", "example.com.", "10.1.2.3", "::1", "1.2.3.4.5"]
NO_PROXY_ENTRIES = st.sampled_from(
    ["*", "h", "example.com", ".example.com", "EXAMPLE.com", "com", "h:80", "h:81", "[::1]", "[::1]:80", "::1"]
    + ["10.0.0.0/8", "10.1.2.3", "2.3", "example.com.", "", " h ", ":80", "3.4.5"]
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(st.lists(NO_PROXY_ENTRIES, max_size=3).map(",".join), st.sampled_from(HOSTS))
def test_no_proxy_bypasses_whatever_urllib_bypasses(no_proxy, host):
    host_port = f"[{host}]:80" if ":" in host else f"{host}:80"
    if urllib.request.proxy_bypass_environment(host_port, {"no": no_proxy}):
        assert proxy_from_environment(False, host, 80, {"http_proxy": "http://a", "no_proxy": no_proxy}) is None


def test_socks_proxy_at_an_ipv6_address():
    pytest.importorskip("python_socks")
    port = free_port()  # nothing listens there (over IPv6 either, most likely)
    # The URL given to python-socks brackets the address: no bare ValueError.
    with pytest.raises(blockws.ProxyError, match=r"can't connect to the SOCKS proxy \[::1\]:"):
        open_tunnel(f"socks5://[::1]:{port}", "127.0.0.1", 80, Deadline(5))


def test_missing_python_socks_names_the_extra():
    code = (
        "import sys; sys.modules['python_socks'] = None\n"
        "from blockws.proxy import open_tunnel\nfrom blockws.utils import Deadline\n"
        "try:\n    open_tunnel('socks5://127.0.0.1:1', 'h', 80, Deadline(1))\n"
        "except Exception as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert 'pip install "blockws[socks]"' in out.stdout


def test_socks5_with_auth_and_traffic_really_goes_through_the_proxy(pproxy, run_server):
    peers: list[Any] = []

    def handler(ws: blockws.WebSocket) -> None:
        peers.append(ws.remote_address)
        for message in ws:
            ws.sendall(message)

    server = run_server(handler)
    port = pproxy("socks5#user:secret")
    with pytest.raises(blockws.ProxyError):
        blockws.connect(server.url, proxy=f"socks5://127.0.0.1:{port}", open_timeout=5)
    with blockws.connect(server.url, proxy=f"socks5://user:secret@127.0.0.1:{port}", timeout=5) as ws:
        echo_through(ws)
        # We talk to the proxy; the server sees the proxy's own connection.
        assert ws.remote_address == ("127.0.0.1", port)
        assert peers and peers[-1] != ws.local_address


@pytest.mark.parametrize("how", [CLOSE, RESET])
def test_proxy_closing_early_is_a_clear_error(how):
    port, thread, seen = scripted_proxy([how])  # ends the connection once it has the request
    with pytest.raises(blockws.ProxyError, match=f"proxy 127.0.0.1:{port} closed the connection during CONNECT"):
        open_tunnel(f"http://127.0.0.1:{port}", "example.com", 443, Deadline(5))
    thread.join()
    assert seen and seen[0].startswith(b"CONNECT example.com:443 ")


def test_reset_during_connect_is_chained_from_the_os_error():
    port, thread, _ = scripted_proxy([RESET])
    with pytest.raises(blockws.ProxyError) as info:
        open_tunnel(f"http://127.0.0.1:{port}", "example.com", 443, Deadline(5))
    thread.join()
    assert isinstance(info.value.__cause__, ConnectionResetError)


def test_connect_reply_limits_are_options():
    reply = b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 3 + b"\r\n"
    port, thread, _ = scripted_proxy([reply])
    with pytest.raises(blockws.ProxyError, match=r"more than 2 HTTP headers \(max_headers=2\)"):
        open_tunnel(f"http://127.0.0.1:{port}", "example.com", 443, Deadline(5), max_headers=2)
    thread.join()
    port, thread, _ = scripted_proxy([reply])
    open_tunnel(f"http://127.0.0.1:{port}", "example.com", 443, Deadline(5), max_headers=3).close()
    thread.join()


def test_wss_through_the_tunnel_checks_the_target_certificate(pproxy, run_server, tls):
    server_ctx, client_ctx = tls
    server = run_server(ssl_context=server_ctx)
    port = pproxy("http")
    proxy = f"http://127.0.0.1:{port}"
    with blockws.connect(f"wss://localhost:{server.port}/", proxy=proxy, ssl_context=client_ctx, timeout=5) as ws:
        echo_through(ws)  # TLS inside the tunnel, SNI and certificate for "localhost"
    with pytest.raises(ssl.SSLCertVerificationError):
        # The certificate is checked against the target host, not the proxy.
        blockws.connect(f"wss://127.0.0.1:{server.port}/", proxy=proxy, ssl_context=client_ctx)


def test_a_proxy_url_is_redacted_as_a_url_without_a_path():
    assert redact_proxy_url("http://u:pa/ss@proxy:3128") == "http://u:***@proxy:3128"
    assert redact_proxy_url("u:pw@proxy:3128") == "u:***@proxy:3128"
    assert redact_proxy_url("u:p://w@proxy:3128") == "u:***@proxy:3128"  # no scheme: "://" is in the password
    assert redact_proxy_url("socks5h://proxy:1080") == "socks5h://proxy:1080"


@pytest.mark.parametrize("url", ["http://proxy:0", "proxy:0", "socks5://u:pw@proxy:0"])
def test_a_proxy_on_port_0_is_refused_not_sent_to_the_default_port(url):
    with pytest.raises(blockws.ProxyError, match="port 0 is not a port"):
        ProxyURL(url)


PROXY_SECRET = "s3cr3t"


@pytest.mark.parametrize(
    "proxy",
    [
        "alice:s3cr3t@host:99999",  # no scheme, bad port
        "alice:s3cr3t@127.0.0.1:{port}",  # no scheme, nobody listening
        "socks5://alice:s3cr3t@host:99999",
        "socks5h://alice:s3cr3t@127.0.0.1:{port}",
        "alice:s%33cr3t@host:99999",  # percent-encoded
        "http://alice:%73%33%63%72%33%74@host:port",
        "alice:x://s3cr3t@host:99999",  # a "://" in the password is no scheme
        "alice:s3cr3t://@127.0.0.1:{port}",
        "alice:x://s3cr3t@127.0.0.1:{port}",
    ],
)
def test_proxy_passwords_stay_out_of_errors_and_logs(proxy, caplog, monkeypatch):
    proxy = proxy.format(port=free_port())
    caplog.set_level("DEBUG", logger="blockws")
    errors = []
    for how in ("argument", "environment"):
        monkeypatch.setenv("http_proxy", proxy)
        options: dict[str, Any] = {"proxy": proxy} if how == "argument" else {}
        with pytest.raises(Exception) as info:  # noqa: B017 - any error: its text is what is checked
            blockws.connect(f"ws://127.0.0.1:{free_port()}/", open_timeout=5, **options)
        errors.append(info.value)
    assert all(isinstance(exc, blockws.ProxyError) for exc in errors), errors
    texts = [caplog.text]
    for exc in errors:
        texts += ["".join(traceback.format_exception(type(exc), exc, exc.__traceback__)), repr(exc)]
    for text in texts:
        assert PROXY_SECRET not in text and "s%33cr3t" not in text, text
