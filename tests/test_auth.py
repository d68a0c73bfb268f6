"""Basic and Digest authentication: the sans-I/O pieces and over real sockets."""

from __future__ import annotations

import base64
import re
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import blockws
from blockws.auth import BasicAuth, Challenge, ClientAuth, DigestAuth, parse_challenges
from blockws.http import Request, Response

USERS = {"Mufasa": "Circle of Life", "zoë": "pässwörd"}


def test_parse_challenges():
    (c,) = parse_challenges(['Basic realm="WallyWorld"'])
    assert (c.scheme, c.realm) == ("Basic", "WallyWorld")
    challenges = parse_challenges(
        [
            'Newauth realm="apps", type=1, title="Login to \\"apps\\"", Basic realm="simple"',
            'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
            'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
            'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"',
            "Negotiate abc==, Basic realm=x",
        ]
    )
    assert [c.scheme for c in challenges] == ["Newauth", "Basic", "Digest", "Negotiate", "Basic"]
    assert challenges[0].params["title"] == 'Login to "apps"'
    assert challenges[2].params["qop"] == "auth, auth-int"
    assert "Challenge(" in repr(challenges[1])


def rfc7616_response(algorithm: str) -> str:
    """RFC 7616 section 3.9.1: the worked example, with its cnonce."""
    auth = ClientAuth(("Mufasa", "Circle of Life"))
    challenge = Response(
        401,
        headers={
            "WWW-Authenticate": 'Digest realm="http-auth@example.org", qop="auth, auth-int", '
            f"algorithm={algorithm}, "
            'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
            'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
        },
    )
    import blockws.auth as auth_module

    real = auth_module.secrets.token_hex
    auth_module.secrets.token_hex = lambda n: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"  # type: ignore[assignment]
    try:
        value = auth.authorize(challenge, "GET", "/dir/index.html")
    finally:
        auth_module.secrets.token_hex = real  # type: ignore[assignment]
    assert value is not None
    match = re.search(r'response="([0-9a-f]+)"', value)
    assert match
    return match.group(1)


def test_digest_matches_the_rfc_example():
    assert rfc7616_response("MD5") == "8ca523f5e9506fed4657c9700eebdbec"
    assert rfc7616_response("SHA-256") == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


def request_with(header: str | None, target: str = "/") -> Request:
    return Request("GET", target, {"Authorization": header} if header else {})


@pytest.mark.parametrize("server", [BasicAuth("realm", USERS), DigestAuth("realm", USERS)])
def test_client_and_server_objects(server):
    client = ClientAuth(("zoë", "pässwörd"))
    value = client.authorize(server.challenge(), "GET", "/x")
    assert value is not None
    assert server.check(request_with(value, "/x")) == "zoë"
    assert server.check(request_with(None)) is None
    assert server.check(request_with("Bogus abc")) is None
    wrong = ClientAuth(("zoë", "nope")).authorize(server.challenge(), "GET", "/x")
    assert server.check(request_with(wrong, "/x")) is None
    assert "pässwörd" not in repr(client)


def test_callback_asked_again_then_gives_up():
    server = DigestAuth("realm", USERS)
    seen: list[tuple[str, str | None, int]] = []
    answers = iter([("Mufasa", "wrong"), ("Mufasa", "Circle of Life"), None])

    def ask(challenge: Challenge) -> tuple[str, str] | None:
        seen.append((challenge.scheme, challenge.realm, challenge.attempt))
        return next(answers)

    client = ClientAuth(ask)
    first = client.authorize(server.challenge(), "GET", "/")
    assert server.check(request_with(first)) is None
    second = client.authorize(server.challenge(), "GET", "/")
    assert server.check(request_with(second)) == "Mufasa"
    assert client.authorize(server.challenge(), "GET", "/") is None
    assert seen == [("Digest", "realm", 1), ("Digest", "realm", 2), ("Digest", "realm", 3)]
    assert ClientAuth(("a", "b"), max_attempts=1).authorize(server.challenge(), "GET", "/")
    fixed = ClientAuth(("a", "b"))
    fixed.authorize(server.challenge(), "GET", "/")
    assert fixed.authorize(server.challenge(), "GET", "/") is None  # tuples are tried once


def test_strongest_challenge_chosen_and_unknown_ignored():
    response = Response(401)
    for value in [
        'Basic realm="r"',
        'Digest realm="r", nonce="n", algorithm=MD5',
        'Digest realm="r", nonce="n2", algorithm=SHA-256, qop="auth"',
    ]:
        response.headers.add("WWW-Authenticate", value)
    value = ClientAuth(("u", "p")).authorize(response, "GET", "/")
    assert value is not None and "algorithm=SHA-256" in value and "nc=00000001" in value
    assert (
        ClientAuth(("u", "p")).authorize(Response(401, headers={"WWW-Authenticate": "Negotiate"}), "GET", "/") is None
    )
    basic = ClientAuth(("u", "p")).authorize(Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'}), "GET", "/")
    assert basic == "Basic " + base64.b64encode(b"u:p").decode()
    with pytest.raises(ValueError):
        ClientAuth(("u:x", "p")).authorize(Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'}), "GET", "/")


def test_replay_wrong_uri_and_stale_nonce():
    server = DigestAuth("realm", USERS, nonce_lifetime=0.2)
    client = ClientAuth(("Mufasa", "Circle of Life"))
    value = client.authorize(server.challenge(), "GET", "/a")
    assert server.check(request_with(value, "/a")) == "Mufasa"
    assert server.check(request_with(value, "/a")) is None  # the same nc again: a replay
    assert server.check(request_with(client.preemptive("GET", "/a"), "/a")) == "Mufasa"  # nc 2
    assert server.check(request_with(client.preemptive("GET", "/a"), "/other")) is None
    time.sleep(0.3)
    expired = request_with(client.preemptive("GET", "/a"), "/a")
    assert server.check(expired) is None
    challenge = server.challenge(expired)
    assert "stale=true" in challenge.headers["WWW-Authenticate"]
    calls = []
    asking = ClientAuth(lambda c: calls.append(c) or ("Mufasa", "Circle of Life"))
    asking.authorize(server.challenge(), "GET", "/a")
    again = asking.authorize(challenge, "GET", "/a")  # stale: no new question
    assert len(calls) == 1 and server.check(request_with(again, "/a")) == "Mufasa"


def digest_login(server: DigestAuth, target: str = "/") -> tuple[ClientAuth, Request]:
    """A client logged in with a fresh nonce, and the request it logged in with."""
    client = ClientAuth(("Mufasa", "Circle of Life"))
    request = request_with(client.authorize(server.challenge(), "GET", target), target)
    assert server.check(request) == "Mufasa"
    return client, request


def test_digest_nonce_table_is_bounded_oldest_first():
    """Each login used to scan the whole table past 10,000 nonces; now it is capped and trimmed from the front."""
    assert blockws.auth.DEFAULT_MAX_NONCES == DigestAuth("r", USERS).max_nonces == 10_000
    server = DigestAuth("realm", USERS, max_nonces=3)
    logins = [digest_login(server) for _ in range(10)]
    assert len(server._counters) == 3
    remembered = [request.headers["Authorization"] for _, request in logins[-3:]]
    assert [re.search(r'nonce="([^"]+)"', value).group(1) for value in remembered] == list(server._counters)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="max_nonces must be 1 or more, not 0"):
        DigestAuth("realm", USERS, max_nonces=0)


def test_a_forgotten_nonce_is_stale_and_never_replayable():
    server = DigestAuth("realm", USERS, max_nonces=2)
    first, captured = digest_login(server)
    assert server.check(request_with(first.preemptive("GET", "/"), "/")) == "Mufasa"  # nc 2, remembered
    digest_login(server)
    digest_login(server)  # the first nonce is evicted, still within its lifetime
    assert server.check(captured) is None  # a replay with its counter gone: refused all the same
    again = request_with(first.preemptive("GET", "/"), "/")
    assert server.check(again) is None
    challenge = server.challenge(again)
    assert "stale=true" in challenge.headers["WWW-Authenticate"]
    retry = first.authorize(challenge, "GET", "/")  # stale: same credentials, fresh nonce
    assert retry is not None and server.check(request_with(retry, "/")) == "Mufasa"
    # A nonce issued after the evictions, used for the first time, is fine.
    assert digest_login(server)


def test_expired_nonces_leave_the_table():
    server = DigestAuth("realm", USERS, nonce_lifetime=0.2)
    for _ in range(5):
        digest_login(server)
    assert len(server._counters) == 5
    time.sleep(0.3)
    _, request = digest_login(server)
    assert list(server._counters) == [re.search(r'nonce="([^"]+)"', request.headers["Authorization"]).group(1)]  # type: ignore[union-attr]


def test_proxy_challenges_are_read_from_proxy_authenticate():
    response = Response(407, headers={"Proxy-Authenticate": 'Basic realm="proxy"'})
    seen: list[Challenge] = []
    value = ClientAuth(lambda c: seen.append(c) or ("u", "p"), proxy=True).authorize(response, "CONNECT", "h:443")
    assert value and value.startswith("Basic ") and seen[0].proxy


@pytest.mark.slow
@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_headers_never_raise(text):
    parse_challenges([text])
    for server in (BasicAuth("r", USERS), DigestAuth("r", USERS)):
        assert server.check(request_with(text.replace("\r", "").replace("\n", "") or None)) is None


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40), st.text(max_size=40), st.text(max_size=40), st.sampled_from(["Basic", "Digest"]))
def test_well_formed_headers_with_arbitrary_contents_never_raise(user, password, nonce_text, scheme):
    """Headers that pass the syntax checks, with any text inside (non-ASCII, forged nonces, separators)."""
    if scheme == "Basic":
        header = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    else:
        nonce = base64.b64encode(f"1:{nonce_text}".encode()).decode()
        quoted = user.replace("\\", "\\\\").replace('"', '\\"')
        header = (
            f'Digest username="{quoted}", realm="r", nonce="{nonce}", uri="/", response="{quoted}", '
            f'qop=auth, nc=00000001, cnonce="{quoted}"'
        )
    header = header.replace("\r", "").replace("\n", "")
    for server in (BasicAuth("r", USERS), DigestAuth("r", USERS)):
        assert server.check(request_with(header)) is None or (user, password) in USERS.items()
        server.challenge(request_with(header))


# -- over sockets ---------------------------------------------------------------------


@pytest.mark.parametrize("server_auth", [BasicAuth("chat", USERS), DigestAuth("chat", USERS)])
def test_connect_with_auth(run_server, server_auth):
    names: list[Any] = []

    def handler(ws: blockws.WebSocket) -> None:
        names.append(ws.username)
        for message in ws:
            ws.sendall(message)

    server = run_server(handler, auth=server_auth)
    with pytest.raises(blockws.InvalidStatus) as info:
        blockws.connect(server.url)
    assert info.value.status == 401 and "WWW-Authenticate" in info.value.headers
    with blockws.connect(server.url, auth=("zoë", "pässwörd"), timeout=5) as ws:
        ws.sendall("in")
        assert ws.recv() == "in"
    with pytest.raises(blockws.InvalidStatus) as info:
        blockws.connect(server.url, auth=("zoë", "wrong"))
    assert info.value.status == 401
    attempts: list[int] = []

    def ask(challenge: Challenge) -> tuple[str, str] | None:
        attempts.append(challenge.attempt)
        return ("Mufasa", "Circle of Life") if challenge.attempt == 2 else ("Mufasa", "guess")

    with blockws.connect(server.url, auth=ask, timeout=5):
        pass
    with blockws.connect(f"ws://Mufasa:Circle%20of%20Life@127.0.0.1:{server.port}/", timeout=5):
        pass
    server.stop()
    assert attempts == [1, 2]
    assert names == ["zoë", "Mufasa", "Mufasa"]


def test_credentials_not_sent_across_origins(run_server):
    seen: list[Request] = []
    target = run_server(process_request=lambda r: seen.append(r))
    first = run_server(
        process_request=lambda r: Response.redirect(f"ws://localhost:{target.port}/"), auth=BasicAuth("r", USERS)
    )
    with blockws.connect(first.url, auth=("zoë", "pässwörd"), timeout=5):
        pass
    assert "Authorization" not in seen[0].headers


def test_websockets_server_challenge_and_redirect():
    """The websockets package as an independent server: 401 with a challenge, then 302."""
    import threading

    from websockets.datastructures import Headers as WsHeaders
    from websockets.http11 import Response as WsResponse
    from websockets.sync.server import serve as ws_serve

    def process_request(connection: Any, request: Any) -> Any:
        if request.path == "/old":
            return WsResponse(302, "Found", WsHeaders({"Location": "/new", "Content-Length": "0"}), b"")
        expected = "Basic " + base64.b64encode("zoë:pässwörd".encode()).decode()
        if request.headers.get("Authorization") != expected:
            headers = WsHeaders({"WWW-Authenticate": 'Basic realm="ws", charset="UTF-8"', "Content-Length": "0"})
            return WsResponse(401, "Unauthorized", headers, b"")
        return None

    def handler(ws: Any) -> None:
        ws.send(ws.request.path)

    server = ws_serve(handler, "127.0.0.1", 0, process_request=process_request)
    thread = threading.Thread(target=server.serve_forever)
    thread.start()
    try:
        url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}/old"
        with pytest.raises(blockws.InvalidStatus) as info:
            blockws.connect(url)
        assert info.value.status == 401
        with blockws.connect(url, auth=("zoë", "pässwörd"), timeout=5) as ws:
            assert ws.recv() == "/new"
            assert ws.url and ws.url.endswith("/new")
    finally:
        server.shutdown()
        thread.join(5)


@pytest.mark.parametrize("algorithm", ["SHA-256", "MD5-sess", "SHA-256-sess"])
def test_hand_made_digest_server_checks_rfc7616_computation(algorithm):
    """A raw-socket server that computes the expected Digest itself, independently of blockws.auth."""
    import hashlib
    import socket
    import threading

    hash_function = hashlib.md5 if algorithm.startswith("MD5") else hashlib.sha256

    from blockws.handshake import accept_key

    listener = socket.create_server(("127.0.0.1", 0))
    results: list[bool] = []

    def serve() -> None:
        nonce = "dcd98b7102dd2f0e8b11d0f600bfb0c093"
        for attempt in range(2):
            conn, _ = listener.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(4096)
                lines = head.decode().split("\r\n")
                headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
                if attempt == 0:
                    conn.sendall(
                        b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\n"
                        b'WWW-Authenticate: Digest realm="testrealm@host.com", qop="auth", algorithm='
                        + algorithm.encode()
                        + b", "
                        b'nonce="' + nonce.encode() + b'", opaque="5ccc069c403ebaf9f0171e9517f40e41"\r\n\r\n'
                    )
                    continue
                pairs = re.findall(r'(\w+)=(?:"([^"]*)"|([^,\s]*))', headers["Authorization"])
                fields = {name: quoted or bare for name, quoted, bare in pairs}

                def h(text: str) -> str:
                    return hash_function(text.encode()).hexdigest()

                ha1 = h("Mufasa:testrealm@host.com:Circle of Life")
                if algorithm.endswith("-sess"):  # RFC 7616 section 3.4.2
                    ha1 = h(f"{ha1}:{nonce}:{fields['cnonce']}")
                ha2 = h("GET:/dir/index.html")
                expected = h(f"{ha1}:{nonce}:{fields['nc']}:{fields['cnonce']}:auth:{ha2}")
                ok = fields["response"] == expected and fields["opaque"] == "5ccc069c403ebaf9f0171e9517f40e41"
                ok = ok and fields["algorithm"] == algorithm and len(fields["cnonce"]) >= 16
                results.append(ok and fields["uri"] == "/dir/index.html" and fields["nc"] == "00000001")
                key = headers["Sec-WebSocket-Key"]
                conn.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + accept_key(key).encode() + b"\r\n\r\n" + b"\x88\x02\x03\xe8"
                )
                conn.recv(100)

    thread = threading.Thread(target=serve)
    thread.start()
    port = listener.getsockname()[1]
    try:
        with blockws.connect(f"ws://127.0.0.1:{port}/dir/index.html", auth=("Mufasa", "Circle of Life")) as ws:
            assert ws.recv() is None
    finally:
        thread.join(10)
        listener.close()
    assert results == [True]


@pytest.mark.parametrize(
    "header",
    ["", "Digest", 'Digest realm="x"', "Basic", '"unterminated', "Bearer realm=x", "Digest nonce=, realm="],
)
def test_malformed_or_missing_challenges_give_a_clear_401(run_server, header):
    headers = {"WWW-Authenticate": header} if header else {}
    server = run_server(process_request=lambda r: Response(401, headers=headers))
    start = time.monotonic()
    with pytest.raises(blockws.InvalidStatus) as info:
        blockws.connect(server.url, auth=("u", "p"), open_timeout=5)
    assert info.value.status == 401
    assert time.monotonic() - start < 2
    if header == "Basic":  # a Basic challenge without a realm is still answered, once
        assert "credentials refused" in str(info.value)
    else:
        assert "401 Unauthorized: no supported challenge (got: " in str(info.value)


def test_non_ascii_password_for_an_unknown_user_gets_a_401_and_the_server_keeps_serving(run_server):
    """hmac.compare_digest refuses non-ASCII str: the check must compare bytes on every path."""
    server = run_server(auth=BasicAuth("chat", USERS))
    for user, password in [("nobody", "pässword"), ("zoë", "wröng"), ("Mufasa", "ünïcode")]:
        with pytest.raises(blockws.InvalidStatus) as info:
            blockws.connect(server.url, auth=(user, password), open_timeout=5)
        assert info.value.status == 401
    with blockws.connect(server.url, auth=("zoë", "pässwörd"), timeout=5) as ws:
        ws.sendall("still serving")
        assert ws.recv() == "still serving"


def test_forged_nonce_with_non_ascii_signature_is_refused_not_crashing():
    """A base64 nonce decoding to a non-ASCII signature must be "invalid", not a TypeError."""
    server = DigestAuth("realm", USERS)
    nonce = base64.b64encode("1:é".encode()).decode()
    value = (
        f'Digest username="Mufasa", realm="realm", nonce="{nonce}", uri="/", response="é", qop=auth, nc=1, cnonce="c"'
    )
    assert server.check(request_with(value)) is None
    assert "stale" not in server.challenge(request_with(value)).headers["WWW-Authenticate"]


@pytest.mark.parametrize("algorithm", ["MD5-sess", "SHA-256-sess"])
def test_sess_algorithms_round_trip_over_sockets(run_server, algorithm):
    server = run_server(auth=DigestAuth("chat", USERS, algorithms=[algorithm]))
    with pytest.raises(blockws.InvalidStatus) as info:
        blockws.connect(server.url, open_timeout=5)
    assert f"algorithm={algorithm}" in info.value.headers["WWW-Authenticate"]
    with blockws.connect(server.url, auth=("zoë", "pässwörd"), timeout=5) as ws:
        ws.sendall(algorithm)
        assert ws.recv() == algorithm
    with pytest.raises(blockws.InvalidStatus) as info:
        blockws.connect(server.url, auth=("zoë", "wrong"), open_timeout=5)
    assert info.value.status == 401


def test_attempts_are_capped_at_three_by_default(run_server):
    server = run_server(auth=DigestAuth("chat", USERS))
    attempts: list[int] = []

    def always_wrong(challenge: Challenge) -> tuple[str, str]:
        attempts.append(challenge.attempt)
        return ("Mufasa", f"guess {challenge.attempt}")

    with pytest.raises(blockws.InvalidStatus) as info:
        blockws.connect(server.url, auth=always_wrong, open_timeout=5)
    assert info.value.status == 401 and "max_attempts=3" in str(info.value)
    assert attempts == [1, 2, 3]


def test_max_answers_counts_each_attempt_and_its_stale_retries():
    assert ClientAuth(("a", "b")).max_answers == 6
    assert ClientAuth(("a", "b"), max_attempts=2, max_stale=0).max_answers == 2


def test_a_server_always_answering_stale_ends_with_a_401(run_server):
    """stale=true retries are bounded: a server whose fresh nonces are always stale is a 401, not a loop."""
    requests: list[Request] = []
    stale = 'Digest realm="r", qop="auth", algorithm=SHA-256, nonce="n", stale=true'

    def always_stale(request: Request) -> Response:
        requests.append(request)
        return Response(401, headers={"WWW-Authenticate": stale})

    server = run_server(process_request=always_stale)
    with pytest.raises(blockws.InvalidStatus) as info:
        blockws.connect(server.url, auth=("u", "p"), open_timeout=5)
    assert info.value.status == 401 and "stale=true" in str(info.value) and "max_stale=1" in str(info.value)
    # No credentials, then the first answer, then one stale retry (max_stale=1).
    assert len(requests) == 3 and "Authorization" in requests[2].headers


def test_stale_retries_are_bounded_and_explained():
    stale = Response(401, headers={"WWW-Authenticate": 'Digest realm="r", qop="auth", nonce="n", stale=true'})
    calls: list[Challenge] = []
    client = ClientAuth(lambda c: calls.append(c) or ("u", "p"))
    assert client.authorize(stale, "GET", "/")  # no credentials yet: a new attempt
    assert client.authorize(stale, "GET", "/")  # a stale retry, without asking
    assert client.authorize(stale, "GET", "/") is None
    assert len(calls) == 1
    assert client.failure is not None and "stale=true" in client.failure and "max_stale=1" in client.failure
    assert client.failure.startswith("401 Unauthorized: ")
    patient = ClientAuth(("u", "p"), max_stale=3)
    assert all(patient.authorize(stale, "GET", "/") for _ in range(4))
    assert patient.authorize(stale, "GET", "/") is None and "max_stale=3" in str(patient.failure)


@pytest.mark.parametrize(
    ("headers", "got"),
    [
        ({}, "got: no WWW-Authenticate header"),
        ({"WWW-Authenticate": "Negotiate"}, "got: 'Negotiate'"),
        ({"WWW-Authenticate": 'Digest realm="x"'}, "got: 'Digest realm=\"x\"'"),  # no nonce
        ({"WWW-Authenticate": "Bearer realm=x, Digest nonce=, realm="}, "got: 'Bearer realm=x, Digest"),
    ],
)
def test_no_supported_challenge_is_explained(headers, got):
    client = ClientAuth(("u", "p"))
    assert client.authorize(Response(401, headers=headers), "GET", "/") is None
    assert client.failure is not None
    assert client.failure.startswith("401 Unauthorized: no supported challenge (")
    assert got in client.failure and client.attempts == 0


def test_why_credentials_were_given_up_is_explained():
    challenge = Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
    fixed = ClientAuth(("u", "p"))
    assert fixed.authorize(challenge, "GET", "/") and fixed.failure is None
    assert fixed.authorize(challenge, "GET", "/") is None and "tried once" in str(fixed.failure)
    asking = ClientAuth(lambda c: ("u", "p"), max_attempts=2)
    assert asking.authorize(challenge, "GET", "/") and asking.authorize(challenge, "GET", "/")
    assert asking.authorize(challenge, "GET", "/") is None
    assert "refused 2 times (max_attempts=2)" in str(asking.failure)
    quitting = ClientAuth(lambda c: None)
    assert quitting.authorize(challenge, "GET", "/") is None and "callback gave up" in str(quitting.failure)


def test_passwords_never_appear_in_reprs_or_messages():
    secret = "s3cret-pässwörd"
    basic = BasicAuth("realm", {"u": secret})
    digest = DigestAuth("realm", lambda name: secret)
    texts = [repr(basic), repr(digest)]  # (their users mapping is the application's own object)
    for auth in [("u", secret), lambda c: ("u", secret)]:
        for header in ['Basic realm="r"', 'Digest realm="r", qop="auth", nonce="n"']:
            client = ClientAuth(auth, max_attempts=1)  # type: ignore[arg-type]
            response = Response(401, headers={"WWW-Authenticate": header})
            assert client.authorize(response, "GET", "/")
            assert client.authorize(response, "GET", "/") is None
            texts += [repr(client), repr(vars(client)), str(client.failure)]
    for bad_user in ["a:b", "a\r\nb"]:
        for header in ['Basic realm="r"', 'Digest realm="r", qop="auth", nonce="n"']:
            response = Response(401, headers={"WWW-Authenticate": header})
            try:
                ClientAuth((bad_user, secret)).authorize(response, "GET", "/")
            except ValueError as exc:
                texts.append(str(exc))
    assert len(texts) > 12
    for text in texts:
        assert secret not in text, text


def test_fuzz_auth_crash_regression():
    """Found by fuzzing/fuzz_auth.py on the old BasicAuth: base64 credentials whose
    password is non-ASCII crashed hmac.compare_digest on str (TypeError)."""
    found = b"#:\x1egc\x1ei\x1ep#s\xc3\x99'#\x1eDig\x1e#\x1e\x1e#\x1ei\x1e#si\x1e"
    header = "Basic " + base64.b64encode(found).decode()
    for server in (BasicAuth("r", {"user": "password"}), DigestAuth("r", {"user": "password"})):
        assert server.check(Request("GET", "/", {"Authorization": header})) is None
