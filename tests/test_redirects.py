"""Redirects and the connect gate of blockws.connect(), against real blockws servers."""

from __future__ import annotations

import ssl
import threading
import time
from typing import Any

import pytest

import blockws
from blockws import Response


def redirect_to(location: str, status: int = 302, seen: list[Any] | None = None) -> Any:
    def process_request(request: blockws.Request) -> Response | None:
        if seen is not None:
            seen.append(request)
        return Response.redirect(location, status)

    return process_request


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_followed_to_final_url(run_server, status):
    target = run_server()
    first = run_server(process_request=redirect_to(f"ws://127.0.0.1:{target.port}/final?x=1", status))
    with blockws.connect(first.url, timeout=5) as ws:
        assert ws.url == f"ws://127.0.0.1:{target.port}/final?x=1"
        ws.sendall("hi")
        assert ws.recv() == "hi"


def test_relative_and_http_locations(run_server):
    def process_request(request: blockws.Request) -> Response | None:
        if request.path == "/start":
            return Response.redirect("next")  # relative to /start
        if request.path == "/next":
            return Response.redirect(f"http://127.0.0.1:{server.port}/end")  # http maps to ws
        return None

    server = run_server(process_request=process_request)
    with blockws.connect(f"ws://127.0.0.1:{server.port}/start", timeout=5) as ws:
        assert ws.url == f"ws://127.0.0.1:{server.port}/end"


def test_redirect_loop_and_limit(run_server):
    def loop(request: blockws.Request) -> Response | None:
        return Response.redirect("/b" if request.path == "/a" else "/a")

    server = run_server(process_request=loop)
    with pytest.raises(blockws.TooManyRedirects, match="loop"):
        blockws.connect(f"ws://127.0.0.1:{server.port}/a")

    def chain(request: blockws.Request) -> Response | None:
        n = int(request.path.strip("/") or 0)
        return Response.redirect(f"/{n + 1}") if n < 3 else None

    server = run_server(process_request=chain)
    with pytest.raises(blockws.TooManyRedirects, match="max_redirects=2"):
        blockws.connect(f"ws://127.0.0.1:{server.port}/0", max_redirects=2)
    with blockws.connect(f"ws://127.0.0.1:{server.port}/0", max_redirects=3) as ws:
        assert ws.url.endswith("/3")


def test_redirect_without_location_is_an_invalid_status(run_server):
    server = run_server(process_request=lambda request: Response(302))
    with pytest.raises(blockws.InvalidStatus, match="302 redirect without a Location header") as info:
        blockws.connect(server.url)
    assert info.value.status == 302


def test_default_max_redirects_is_5(run_server):
    def chain(request: blockws.Request) -> Response | None:
        n = int(request.path.strip("/") or 0)
        return Response.redirect(f"/{n + 1}") if n < limit else None

    server = run_server(process_request=chain)
    limit = 5
    with blockws.connect(f"ws://127.0.0.1:{server.port}/0", timeout=5) as ws:
        assert ws.url.endswith("/5")
    limit = 6
    with pytest.raises(blockws.TooManyRedirects, match="more than 5 redirects \\(max_redirects=5\\)"):
        blockws.connect(f"ws://127.0.0.1:{server.port}/0")


def test_https_location_maps_to_wss(run_server, tls, tmp_path, monkeypatch):
    server_ctx, client_ctx = tls
    secure = run_server(ssl_context=server_ctx)
    plain = run_server(process_request=redirect_to(f"https://localhost:{secure.port}/tls"))
    # ssl_context can't go with a ws:// URL: the redirect uses the default
    # context, so make the test CA a "system" CA (OpenSSL reads SSL_CERT_FILE).
    with pytest.raises(ssl.SSLCertVerificationError):
        blockws.connect(plain.url, open_timeout=5)
    ca = tmp_path / "ca.pem"
    ca.write_text("".join(ssl.DER_cert_to_PEM_cert(der) for der in client_ctx.get_ca_certs(binary_form=True)))
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))
    with blockws.connect(plain.url, timeout=5) as ws:
        assert ws.url == f"wss://localhost:{secure.port}/tls"
        ws.sendall("over TLS")
        assert ws.recv() == "over TLS"


def test_url_credentials_dropped_when_origin_changes(run_server):
    seen: list[blockws.Request] = []

    def challenge_or_record(request: blockws.Request) -> Response | None:
        seen.append(request)
        return None

    target = run_server(process_request=challenge_or_record)
    first = run_server(
        process_request=redirect_to(f"ws://localhost:{target.port}/"),
        auth=blockws.BasicAuth("r", {"user": "pw-of-first"}),
    )
    with blockws.connect(f"ws://user:pw-of-first@127.0.0.1:{first.port}/", timeout=5):
        pass
    assert len(seen) == 1 and "Authorization" not in seen[0].headers
    # A target that challenges gets no answer either: the credentials stayed behind.
    challenger = run_server(auth=blockws.BasicAuth("r", {"user": "pw-of-first"}))
    first = run_server(
        process_request=redirect_to(f"ws://localhost:{challenger.port}/"),
        auth=blockws.BasicAuth("r", {"user": "pw-of-first"}),
    )
    with pytest.raises(blockws.InvalidStatus) as info:
        blockws.connect(f"ws://user:pw-of-first@127.0.0.1:{first.port}/", open_timeout=5)
    assert info.value.status == 401


def test_auth_failures_say_why(run_server):
    server = run_server(auth=blockws.BasicAuth("r", {"user": "right"}))
    with pytest.raises(blockws.InvalidStatus, match="authentication failed: 401 Unauthorized: credentials refused"):
        blockws.connect(server.url, auth=("user", "wrong"), open_timeout=5)
    odd = run_server(process_request=lambda r: Response(401, headers={"WWW-Authenticate": "Negotiate abc"}))
    with pytest.raises(blockws.InvalidStatus, match="no supported challenge") as info:
        blockws.connect(odd.url, auth=("user", "pw"), open_timeout=5)
    assert info.value.status == 401
    stale = 'Digest realm="r", qop="auth", nonce="n", stale=true'
    always_stale = run_server(process_request=lambda r: Response(401, headers={"WWW-Authenticate": stale}))
    with pytest.raises(blockws.InvalidStatus, match="authentication failed: .*stale=true") as info:
        blockws.connect(always_stale.url, auth=("user", "pw"), open_timeout=5)
    assert info.value.status == 401 and not isinstance(info.value, blockws.TooManyRedirects)


def test_credentials_dropped_when_origin_changes(run_server):
    seen: list[blockws.Request] = []

    def record(request: blockws.Request) -> None:
        seen.append(request)

    target = run_server(process_request=record)
    # Same host, another port: another origin.
    first = run_server(process_request=redirect_to(f"ws://localhost:{target.port}/"))
    headers = {"Authorization": "Bearer secret", "Cookie": "session=1", "X-Other": "kept"}
    with blockws.connect(first.url, headers=headers, timeout=5):
        pass
    assert "Authorization" not in seen[0].headers
    assert "Cookie" not in seen[0].headers
    assert seen[0].headers["X-Other"] == "kept"


def test_credentials_kept_on_same_origin(run_server):
    seen: list[blockws.Request] = []

    def process_request(request: blockws.Request) -> Response | None:
        seen.append(request)
        return Response.redirect("/there") if request.path == "/" else None

    server = run_server(process_request=process_request)
    with blockws.connect(server.url, headers={"Authorization": "Bearer secret"}, timeout=5):
        pass
    assert [r.headers.get("Authorization") for r in seen] == ["Bearer secret", "Bearer secret"]


def test_no_downgrade_from_wss_to_ws(run_server, tls):
    server_ctx, client_ctx = tls
    plain = run_server()
    secure = run_server(process_request=redirect_to(f"ws://localhost:{plain.port}/"), ssl_context=server_ctx)
    with pytest.raises(blockws.InvalidHandshake, match="wss:// to ws://"):
        blockws.connect(f"wss://localhost:{secure.port}/", ssl_context=client_ctx)


@pytest.mark.slow
def test_gate_allows_one_connecting_per_ip(run_server):
    spans: list[tuple[float, float]] = []
    lock = threading.Lock()

    def slow(request: blockws.Request) -> None:
        start = time.monotonic()
        time.sleep(0.2)
        with lock:
            spans.append((start, time.monotonic()))

    server = run_server(process_request=slow)

    def client(**options: Any) -> None:
        with blockws.connect(server.url, **options):
            pass

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert len(spans) == 3
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end - 0.01, "two handshakes with one IP overlapped"

    # "localhost" and "127.0.0.1" are one address: they share the gate.
    spans.clear()
    # So is ::ffff:127.0.0.1 (IPv4-mapped): keyed by the address connected to, not by spelling.
    urls = [server.url, f"ws://localhost:{server.port}/", f"ws://[::ffff:127.0.0.1]:{server.port}/"] * 2
    threads = [threading.Thread(target=lambda u=url: blockws.connect(u, open_timeout=10).close()) for url in urls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert len(spans) == 6
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert start >= end - 0.01, "one address was opened twice at once under different names"

    spans.clear()
    threads = [threading.Thread(target=client, kwargs={"connect_gate": None}) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans.sort()
    assert any(start < end for (_, end), (start, _) in zip(spans, spans[1:])), "without a gate they overlap"


def test_waiting_at_the_gate_is_bounded_by_open_timeout(run_server):
    entered = threading.Event()
    release = threading.Event()

    def stall(request: blockws.Request) -> None:
        entered.set()
        release.wait(10)

    server = run_server(process_request=stall)
    gate = blockws.ConnectGate()
    first = threading.Thread(target=lambda: blockws.connect(server.url, connect_gate=gate, open_timeout=10).close())
    first.start()
    try:
        assert entered.wait(10)
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="open_timeout.*127.0.0.1 to finish opening"):
            blockws.connect(f"ws://localhost:{server.port}/", connect_gate=gate, open_timeout=0.3)
        assert time.monotonic() - start < 3
    finally:
        release.set()
        first.join(10)


@pytest.mark.slow
def test_gate_max_per_host(run_server):
    server = run_server()
    gate = blockws.ConnectGate(max_per_host=1)
    first = blockws.connect(server.url, connect_gate=gate)
    assert gate.open_connections("127.0.0.1") == 1
    with pytest.raises(TimeoutError, match="max_per_host=1"):
        blockws.connect(server.url, connect_gate=gate, open_timeout=0.3)
    threading.Timer(0.2, first.close).start()
    with blockws.connect(server.url, connect_gate=gate, open_timeout=5) as second:
        second.sendall("ok")
        assert second.recv() == "ok"
    assert gate.open_connections("127.0.0.1") == 0
