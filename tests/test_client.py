"""connect() and parse_uri(): URLs, banned ports, and credentials that never leak into messages."""

from __future__ import annotations

import base64
import errno
import logging
import pickle
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest

import blockws
from blockws.client import BAD_PORTS, parse_uri, redact_url
from blockws.exceptions import CertificateVerifyError

SECRET = "hunter2-s3cret"


def _echo(ws: blockws.WebSocket) -> None:
    for message in ws:
        ws.sendall(message)


@pytest.mark.parametrize(
    "url",
    [
        f"ws://user:{SECRET}@127.0.0.1:99999/",  # port out of range
        f"ws://user:{SECRET}@127.0.0.1:port/",  # not a number
        f"ws://user:{SECRET}@[::1/",  # broken IPv6 literal
        f"ws://user:{SECRET}\uff03@host/",  # NFKC: urlsplit's own message quotes the netloc
        f"ftp://user:{SECRET}@host/",
        f"ws://user:{SECRET}@host/#fragment",
        f"ws://user:{SECRET}@host/a b",
        f"ws://user:{SECRET}@host/\r\nX: y",
        f"ws://user:{SECRET}@/path",
    ],
)
def test_invalid_uri_messages_never_show_the_password(url):
    with pytest.raises(blockws.InvalidURI) as info:
        parse_uri(url)
    exc = info.value
    shown = [str(exc), repr(exc), repr(exc.__cause__)]
    if not exc.__suppress_context__:  # a traceback would show the context
        shown.append(repr(exc.__context__))
    for text in shown:
        assert SECRET not in text
    assert "user:***@" in str(exc)  # still says which URL


def test_redact_url():
    assert redact_url(f"ws://u:{SECRET}@h:1/p?q#f") == "ws://u:***@h:1/p?q#f"
    assert redact_url(f"ws://u:{SECRET}@x@h/") == "ws://u:***@h/"  # urlsplit splits at the last @
    assert redact_url("ws://h/a@b") == "ws://h/a@b"  # an @ in the path is not userinfo
    assert redact_url("ws://u@h/") == "ws://u@h/"
    assert redact_url("not a url") == "not a url"
    uri = parse_uri(f"ws://u:{SECRET}@h/")
    assert (uri.user, uri.password) == ("u", SECRET) and SECRET not in repr(uri) + uri.url


def test_connect_errors_never_show_url_credentials(run_server):
    with pytest.raises(blockws.InvalidURI) as info:
        blockws.connect(f"ws://u:{SECRET}@127.0.0.1:70000/")
    assert SECRET not in str(info.value)
    # A redirect to a broken URL with credentials in it.
    server = run_server(process_request=lambda r: blockws.Response.redirect(f"ws://u:{SECRET}@127.0.0.1:70000/"))
    with pytest.raises(blockws.InvalidURI) as info:
        blockws.connect(server.url, open_timeout=5)
    assert SECRET not in str(info.value) and SECRET not in repr(info.value)


@pytest.mark.parametrize("scheme", ["ws", "http"])
def test_ssl_context_with_a_ws_url_is_an_error(echo_server, scheme):
    url = echo_server.url.replace("ws://", f"{scheme}://")
    with pytest.raises(ValueError, match="^ssl_context argument is incompatible with a ws:// URI$"):
        blockws.connect(url, ssl_context=ssl.create_default_context(), open_timeout=5)
    with blockws.connect(url, ssl_context=None, timeout=5) as ws:  # None is the default: fine
        ws.sendall("plain")
        assert ws.recv() == "plain"


@pytest.mark.parametrize("scheme", ["ws", "http"])
def test_server_hostname_with_a_ws_url_is_an_error(echo_server, scheme):
    url = echo_server.url.replace("ws://", f"{scheme}://")
    with pytest.raises(ValueError, match="^server_hostname argument is incompatible with a ws:// URI$"):
        blockws.connect(url, server_hostname="localhost", open_timeout=5)


def test_a_malformed_header_line_in_the_answer_is_not_quoted(caplog):
    caplog.set_level(logging.DEBUG, logger="blockws")
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)

        def server() -> None:
            conn, _ = listener.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(4096)):
                    head += chunk
                conn.sendall(f"HTTP/1.1 403 Forbidden\r\nSet-Cookie session={SECRET}\r\n\r\n".encode())

        thread = threading.Thread(target=server)
        thread.start()
        try:
            with pytest.raises(blockws.InvalidHandshake) as info:
                blockws.connect(f"ws://127.0.0.1:{listener.getsockname()[1]}/", open_timeout=5)
        finally:
            thread.join(10)
    assert "invalid HTTP header line 'Set-Cookie'" in str(info.value)
    assert SECRET not in str(info.value) and SECRET not in caplog.text


def test_http_and_https_urls_map_to_ws_and_wss():
    assert parse_uri("http://h/x").url == "ws://h/x"
    assert parse_uri("https://h/x").url == "wss://h/x"
    assert parse_uri("HTTPS://h:443/").port == 443 and parse_uri("https://h/").secure


@pytest.mark.parametrize("port", [25, 110, 6000, 6665])
def test_bad_ports_are_refused_before_connecting(port):
    assert port in BAD_PORTS
    with pytest.raises(blockws.BadPortError, match=f"port {port} .*allow_bad_ports=True"):
        blockws.connect(f"ws://127.0.0.1:{port}/", open_timeout=5)


@pytest.mark.parametrize("url", ["ws://127.0.0.1:0/", "wss://localhost:0/x", "ws://127.0.0.1:00/", "http://h:0"])
def test_port_0_is_an_invalid_uri_not_the_default_port(url):
    """urlsplit takes ":0" for a port, and it used to become 80 or 443 on the way."""
    with pytest.raises(blockws.InvalidURI, match="port 0 is not a port"):
        blockws.connect(url, open_timeout=5, allow_bad_ports=True)


def test_a_redirect_to_port_0_is_an_invalid_uri(run_server):
    seen: list[blockws.Request] = []

    def redirect(request: blockws.Request) -> blockws.Response:
        seen.append(request)
        return blockws.Response.redirect("ws://127.0.0.1:0/elsewhere")

    server = run_server(process_request=redirect)
    with pytest.raises(blockws.InvalidURI, match=r"'ws://127.0.0.1:0/elsewhere': port 0 is not a port"):
        blockws.connect(server.url, open_timeout=5)
    assert len(seen) == 1


@pytest.fixture
def server_on_a_bad_port() -> Iterator[int | None]:
    """A blockws server on a banned port, if one can be bound here (else None)."""
    server = None
    for port in (6665, 6666, 6667, 6668, 6669, 6000, 10080, 6697):
        try:
            server = blockws.serve(_echo, "127.0.0.1", port)
            break
        except OSError:
            continue
    if server is None:
        yield None
        return
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.port
    server.shutdown()
    thread.join(10)


def test_allow_bad_ports_lets_the_connection_through(server_on_a_bad_port):
    if server_on_a_bad_port is not None:
        url = f"ws://127.0.0.1:{server_on_a_bad_port}/"
        with pytest.raises(blockws.BadPortError):
            blockws.connect(url, open_timeout=5)
        with blockws.connect(url, allow_bad_ports=True, timeout=5) as ws:
            ws.sendall("on a banned port")
            assert ws.recv() == "on a banned port"
        return
    # Can't bind one (not root, or all taken): a closed banned port is then refused
    # by the kernel, not by us.
    for port in sorted(BAD_PORTS - {0}):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                break
    with pytest.raises(ConnectionRefusedError):
        blockws.connect(f"ws://127.0.0.1:{port}/", allow_bad_ports=True, open_timeout=5)


# -- messages a newcomer reads ----------------------------------------------------


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound and released: refused on connect)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_refused_connection_names_host_and_port():
    port = closed_port()
    with pytest.raises(ConnectionRefusedError) as info:
        blockws.connect(f"ws://127.0.0.1:{port}/", open_timeout=5)
    assert info.value.errno == errno.ECONNREFUSED
    assert f"127.0.0.1:{port}" in str(info.value) and "refused" in str(info.value)
    assert isinstance(info.value.__cause__, ConnectionRefusedError)  # the original, for the traceback
    # A name says which addresses it resolved to.
    with pytest.raises(ConnectionRefusedError) as info:
        blockws.connect(f"ws://localhost:{port}/", open_timeout=5)
    assert f"localhost:{port}" in str(info.value) and "127.0.0.1" in str(info.value)


def test_a_ws_url_at_a_tls_server_says_what_the_server_said(run_server, tls):
    server_ctx, _ = tls
    server = run_server(ssl_context=server_ctx)
    with pytest.raises(blockws.InvalidStatus) as info:
        blockws.connect(f"ws://127.0.0.1:{server.port}/", open_timeout=5)
    assert str(info.value) == (
        'server rejected WebSocket connection: HTTP 400 Bad Request: "this server speaks TLS: use a wss:// URL"'
    )


def test_a_certificate_that_fails_verification_says_which_host_and_what_to_do(run_server, tls):
    server_ctx, client_ctx = tls
    server = run_server(ssl_context=server_ctx)
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        blockws.connect(f"wss://localhost:{server.port}/", open_timeout=5)  # the system CAs don't know ours
    exc = info.value
    assert isinstance(exc, ssl.SSLError) and isinstance(exc, CertificateVerifyError)
    assert (exc.host, exc.port) == ("localhost", server.port)
    assert f"localhost:{server.port}" in str(exc) and "CERTIFICATE_VERIFY_FAILED" in str(exc)
    assert "ssl_context=ssl.create_default_context(cafile=" in str(exc)
    original = exc.__cause__
    assert isinstance(original, ssl.SSLCertVerificationError)
    assert (exc.errno, exc.reason, exc.library) == (original.errno, original.reason, original.library)
    assert (exc.verify_code, exc.verify_message) == (original.verify_code, original.verify_message)
    assert exc.verify_message in str(exc)
    copy = pickle.loads(pickle.dumps(exc))  # e.g. from a worker process
    assert (str(copy), copy.host, copy.verify_code) == (str(exc), exc.host, exc.verify_code)
    # A trusted certificate for another name: the advice is about the name, not the CA.
    with pytest.raises(CertificateVerifyError) as info:
        blockws.connect(f"wss://127.0.0.1:{server.port}/", ssl_context=client_ctx, open_timeout=5)
    assert info.value.mismatch and f"127.0.0.1:{server.port}" in str(info.value)
    assert "server_hostname=" in str(info.value) and "cafile" not in str(info.value)


def test_connection_events_are_logged_without_credentials(run_server, caplog):
    cookie = "session-c00kie-" + SECRET
    bearer = "Bearer t0ken-" + SECRET

    def process_request(request: blockws.Request) -> blockws.Response | None:
        if request.path.startswith("/old"):
            return blockws.Response.redirect("/new?token=" + SECRET)
        return None

    server = run_server(process_request=process_request, auth=blockws.BasicAuth("realm", {"alice": SECRET}))
    caplog.set_level(logging.DEBUG, logger="blockws.client")
    url = f"ws://alice:{SECRET}@127.0.0.1:{server.port}/old?key={SECRET}"
    with blockws.connect(url, headers={"Cookie": cookie, "X-Api-Key": bearer}, timeout=5) as ws:
        ws.sendall("hello")
        assert ws.recv() == "hello"
    records = [r for r in caplog.records if r.name == "blockws.client"]
    assert all(r.levelno == logging.DEBUG for r in records)
    text = "\n".join(r.getMessage() for r in records)
    for event in ("connecting to ws://", "401", "Basic", "redirect", "/new", "open", "closed"):
        assert event in text, text
    secrets = [SECRET, cookie, bearer, base64.b64encode(f"alice:{SECRET}".encode()).decode()]
    for record in records:
        shown = record.getMessage() + repr(record.args)
        assert not any(secret in shown for secret in secrets), shown


def test_the_proxy_is_logged_without_its_password(caplog):
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(10)
        heads: list[bytes] = []

        def proxy() -> None:
            # Takes the credentials (sent with the first CONNECT) and refuses.
            conn, _ = listener.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head and (chunk := conn.recv(4096)):
                    head += chunk
                heads.append(head)
                conn.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")

        thread = threading.Thread(target=proxy)
        thread.start()
        caplog.set_level(logging.DEBUG, logger="blockws.client")
        try:
            with pytest.raises(blockws.ProxyError):
                blockws.connect(
                    "ws://example.invalid/", proxy=f"http://puser:{SECRET}@127.0.0.1:{listener.getsockname()[1]}"
                )
        finally:
            thread.join(10)
    assert b"Proxy-Authorization: Basic " in heads[0]  # the credentials did go to the proxy
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "proxy http://puser:***@127.0.0.1:" in text, text
    assert SECRET not in text and base64.b64encode(f"puser:{SECRET}".encode()).decode() not in text
