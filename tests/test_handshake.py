"""Opening handshake checks, without I/O."""

from __future__ import annotations

import pytest

from blockws.exceptions import InvalidHandshake, InvalidStatus
from blockws.handshake import (
    HandshakeFailure,
    accept_key,
    accept_response,
    check_request,
    check_response,
    check_subprotocols,
    client_request,
    make_key,
    parse_extensions,
    select_subprotocol,
)
from blockws.http import Headers, Request, Response


def test_rfc6455_example_key():
    assert accept_key("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_round_trip():
    key = make_key()
    request = client_request("h:1", "/p", key, origin="https://o", subprotocols=["a", "b"], headers={"X": "1"})
    assert check_request(request) == key
    assert request.headers["Origin"] == "https://o" and request.headers["X"] == "1"
    subprotocol = select_subprotocol(request, ["b", "a"])
    assert subprotocol == "a"  # the client's preference
    response = accept_response(key, subprotocol)
    assert check_response(response, key, ["a", "b"]) == "a"
    assert select_subprotocol(request, None) is None and select_subprotocol(request, ["z"]) is None


def good_request(**overrides: str | None) -> Request:
    headers = {
        "Host": "h",
        "Upgrade": "websocket",
        "Connection": "keep-alive, Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    for name, value in overrides.items():
        headers.pop(name.replace("_", "-"), None)
        if value is not None:
            headers[name.replace("_", "-")] = value
    return Request("GET", "/", headers)


@pytest.mark.parametrize(
    ("request_", "status"),
    [
        (Request("POST", "/", good_request().headers), 405),
        (good_request(Upgrade=None), 426),
        (good_request(Connection="close"), 400),
        (good_request(**{"Sec_WebSocket_Version": "8"}), 426),
        (good_request(**{"Sec_WebSocket_Key": None}), 400),
        (good_request(**{"Sec_WebSocket_Key": "c2hvcnQ="}), 400),
        (good_request(**{"Sec_WebSocket_Key": "not base64!"}), 400),
    ],
)
def test_request_failures(request_, status):
    with pytest.raises(HandshakeFailure) as info:
        check_request(request_)
    assert info.value.status == status
    assert info.value.response().status == status


def test_upgrade_token_is_case_insensitive():
    assert check_request(good_request(Upgrade="WebSocket")) == "dGhlIHNhbXBsZSBub25jZQ=="


def test_response_failures():
    key = make_key()
    with pytest.raises(InvalidStatus) as info:
        check_response(Response(404, body=b"nope"), key, None)
    assert (info.value.status, info.value.body) == (404, b"nope")
    good = accept_response(key)
    for name, value, match in [
        ("Upgrade", "h2c", "Upgrade"),
        ("Connection", "close", "Connection"),
        ("Sec-WebSocket-Accept", "wrong", "Sec-WebSocket-Accept"),
        ("Sec-WebSocket-Protocol", "z", "not offered"),
    ]:
        response = Response(101, headers=Headers(good.headers))
        response.headers[name] = value
        with pytest.raises(InvalidHandshake, match=match):
            check_response(response, key, ["a"])


def test_parse_extensions():
    assert parse_extensions(['permessage-deflate; client_max_window_bits, x-foo; a="1\\"2"; b=3']) == [
        ("permessage-deflate", [("client_max_window_bits", None)]),
        ("x-foo", [("a", '1"2'), ("b", "3")]),
    ]
    assert parse_extensions(["a", "b;c=d"]) == [("a", []), ("b", [("c", "d")])]
    assert parse_extensions([""]) == []
    for bad in ["=x", "a;", "a b", 'a;b="unterminated']:
        with pytest.raises(InvalidHandshake):
            parse_extensions([bad])


BAD_SUBPROTOCOLS = ["a, b", "a b", "chat\r\nX-Injected: 1", "chat\n", "chat\r", "", "é", "a;b", "(x)", 'a"b', "a\tb"]


@pytest.mark.parametrize("bad", BAD_SUBPROTOCOLS)
def test_subprotocols_must_be_tokens(bad):
    """Client offers and server configuration alike: a name that isn't an RFC 7230 token is refused, named."""
    with pytest.raises(ValueError, match="invalid subprotocol name") as info:
        client_request("h", "/", make_key(), subprotocols=["ok", bad])
    assert repr(bad) in str(info.value)
    with pytest.raises(ValueError, match="invalid subprotocol name") as info:
        select_subprotocol(good_request(**{"Sec_WebSocket_Protocol": "ok"}), ["ok", bad])
    assert repr(bad) in str(info.value)
    with pytest.raises(ValueError, match="invalid subprotocol name"):
        check_subprotocols([bad])


def test_every_tchar_is_a_valid_subprotocol_and_a_bare_str_is_refused():
    name = "!#$%&'*+-.^_`|~09azAZ"
    request = client_request("h", "/", make_key(), subprotocols=[name, "v2.chat"])
    assert request.headers["Sec-WebSocket-Protocol"] == f"{name}, v2.chat"
    assert select_subprotocol(request, ("v2.chat",)) == "v2.chat"
    assert check_subprotocols(None) is None and check_subprotocols(("a",)) == ["a"]
    with pytest.raises(TypeError, match="sequence of names"):
        client_request("h", "/", make_key(), subprotocols="chat")  # would offer "c, h, a, t"


def test_connect_refuses_a_subprotocol_with_a_line_break_before_sending(run_server):
    import blockws

    seen: list[Request] = []
    server = run_server(process_request=lambda request: seen.append(request))
    with pytest.raises(ValueError, match="invalid subprotocol name 'chat\\\\r\\\\nX-Injected: 1'"):
        blockws.connect(server.url, subprotocols=["chat\r\nX-Injected: 1"], open_timeout=5)
    with blockws.connect(server.url, subprotocols=["chat"], timeout=5) as ws:
        assert ws.subprotocol is None
    assert len(seen) == 1 and "X-Injected" not in seen[0].headers
