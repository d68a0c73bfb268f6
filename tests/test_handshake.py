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
