"""The lenient, bounded HTTP layer."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockws import http
from blockws.exceptions import InvalidHandshake
from blockws.http import (
    MAX_HEAD,
    MAX_HEADERS,
    MAX_LINE,
    TOKEN,
    Headers,
    Request,
    Response,
    find_head_end,
    parse_list,
    parse_request,
    parse_response,
    redact_header,
    redact_header_line,
    unquote_string,
)


@pytest.mark.parametrize(
    "head",
    [
        b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
        b"GET /chat HTTP/1.1\nHost: x\nUpgrade: websocket\n\n",  # typed into nc
        b"GET /chat HTTP/1.1\r\nHost: x\nUpgrade: websocket\r\n\n",  # mixed
        b"\r\nGET /chat HTTP/1.1\nhost:x\nUPGRADE :   websocket  \n\n",  # blank line first, case, spaces
    ],
)
def test_lenient_request_parsing(head):
    assert find_head_end(head) == len(head)
    request = parse_request(head)
    assert (request.method, request.path) == ("GET", "/chat")
    assert request.headers["upgrade"] == "websocket"
    assert request.headers["Host"] == "x"


def test_find_head_end_incrementally():
    head = b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"
    buf = b""
    searched = 0
    end = None
    for byte in head:
        buf += bytes([byte])
        end = find_head_end(buf, searched)
        searched = len(buf)
        if end is not None:
            break
    assert end == len(buf) == len(head) - 4


def test_limits_have_clear_errors():
    with pytest.raises(InvalidHandshake, match=f"HTTP line exceeds {MAX_LINE} bytes"):
        find_head_end(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_LINE, max_line=MAX_LINE)
    # Without max_line, only the whole head is bounded (the parser checks lines).
    assert find_head_end(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_LINE) is None
    with pytest.raises(InvalidHandshake, match=f"HTTP line exceeds {MAX_LINE} bytes"):
        parse_request(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_LINE + b"\r\n\r\n")
    with pytest.raises(InvalidHandshake, match=f"more than {MAX_HEADERS} HTTP headers"):
        parse_request(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_HEADERS + 1) + b"\r\n")
    with pytest.raises(InvalidHandshake, match=f"HTTP head exceeds {MAX_HEAD} bytes"):
        find_head_end(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_HEAD // 6 + 1))


def test_line_and_header_limits_are_options_named_in_the_errors():
    long_line = b"GET / HTTP/1.1\r\nX: " + b"a" * 100 + b"\r\n\r\n"
    many = b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 10 + b"\r\n"
    assert parse_request(long_line).headers["X"] == "a" * 100
    assert len(parse_request(many).headers) == 10
    with pytest.raises(InvalidHandshake, match=r"HTTP line exceeds 50 bytes \(max_line=50\)"):
        parse_request(long_line, max_line=50)
    with pytest.raises(InvalidHandshake, match=r"more than 5 HTTP headers \(max_headers=5\)"):
        parse_request(many, max_headers=5)
    with pytest.raises(InvalidHandshake, match=r"\(max_line=20\)"):
        parse_request(b"GET /" + b"p" * 30 + b" HTTP/1.1\r\n\r\n", max_line=20)  # the request line too
    status = b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 10 + b"\r\n"
    with pytest.raises(InvalidHandshake, match=r"\(max_headers=9\)"):
        parse_response(status, max_headers=9)
    assert len(parse_response(status, max_headers=10).headers) == 10
    # Raised above the default.
    huge = b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_LINE + 100) + b"\r\n\r\n"
    with pytest.raises(InvalidHandshake, match=f"max_line={MAX_LINE}"):
        parse_request(huge)
    assert len(parse_request(huge, max_line=2 * MAX_LINE).headers["X"]) == MAX_LINE + 100
    with pytest.raises(InvalidHandshake, match=r"HTTP line exceeds 10 bytes \(max_line=10\)"):
        find_head_end(b"GET / HTTP/1.1\r\nX: aaaaaaaaaaaa", max_line=10)


def test_credentials_never_shown_in_reprs_or_errors():
    secret = "hunter2-s3cret"
    headers = Headers({"Authorization": f"Basic {secret}", "Cookie": f"s={secret}", "X": "shown"})
    headers.add("proxy-authorization", secret)
    request = Request("GET", "/", headers)
    for text in (repr(headers), repr(request)):
        assert secret not in text
    assert "'shown'" in repr(headers) and "'Authorization', 'Basic ***'" in repr(headers)
    for name in ("Authorization", "Proxy-Authorization", "Cookie"):
        with pytest.raises(ValueError) as info:
            Request("GET", "/", {name: f"{secret}\r\nX: injected"}).serialize()
        assert secret not in str(info.value) and secret not in repr(info.value)
        assert f"in header {name}" in str(info.value)
    # Any header may hold a credential (X-Api-Key): no value is shown, only where the bad character is.
    with pytest.raises(ValueError, match="at offset 7 in header X-Other$"):
        Request("GET", "/", {"X-Other": "private\r\n"}).serialize()


@pytest.mark.parametrize(
    "head",
    [
        b"\r\n\r\n",
        b"GET /\r\n\r\n",
        b"GET / FTP/1.0\r\n\r\n",
        b"GET / HTTP/2.0\r\n\r\n",
        b"GET / HTTP/1.1\r\nNo colon\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n",
    ],
)
def test_malformed_requests(head):
    with pytest.raises(InvalidHandshake):
        parse_request(head)


def test_responses():
    response = parse_response(b"HTTP/1.0 401 Unauthorized\nWWW-Authenticate: Basic realm=x\n\n")
    assert (response.status, response.reason) == (401, "Unauthorized")
    assert parse_response(b"HTTP/1.1 101\r\n\r\n").reason == ""
    for bad in (b"HTTP/1.1 99 x\r\n\r\n", b"ICY 200 OK\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n"):
        with pytest.raises(InvalidHandshake, match="invalid HTTP status line"):
            parse_response(bad)


def test_headers():
    h = Headers([("A", "1"), ("b", "2")])
    h.add("a", "3")
    assert h["A"] == "1, 3" and h.get_all("a") == ["1", "3"] and "B" in h and 3 not in h
    h["A"] = "4"
    assert h.get_all("a") == ["4"] and len(h) == 2 and list(h) == ["b", "A"]
    del h["B"]
    assert h.get("b") is None and h.get("b", "d") == "d"
    with pytest.raises(KeyError):
        h["missing"]
    assert Headers({"x": "1"}) == Headers([("x", "1")]) and Headers(Headers({"x": "1"})) == Headers({"x": "1"})
    assert "Headers(" in repr(h)


def test_serialize_round_trips_and_refuses_injection():
    request = Request("GET", "/a?b=c", {"Host": "h", "X": "1"})
    assert parse_request(request.serialize()).headers == request.headers
    response = Response(403, headers={"X": "y"}, body=b"no")
    wire = response.serialize()
    assert wire.endswith(b"\r\n\r\nno") and b"Content-Length: 2" in wire
    assert parse_response(wire[: find_head_end(wire)]).status == 403
    assert "Request(" in repr(request) and "Response(" in repr(response)
    for bad in (Request("GET", "/", {"X": "a\r\nEvil: 1"}), Request("GET", "/", {"X\n": "a"}), Request("GET", "/ x")):
        with pytest.raises(ValueError):
            bad.serialize()
    with pytest.raises(ValueError):
        Response(200, headers={"X": "a\nb"}).serialize()


def test_redirect_helper():
    assert Response.redirect("/x").headers["Location"] == "/x"
    assert Response.redirect("/x", 308).status == 308
    with pytest.raises(ValueError):
        Response.redirect("/x", 200)


def test_parse_list():
    assert parse_list(["a, b", " c ,,", ""]) == ["a", "b", "c"]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_arbitrary_heads_only_raise_invalid_handshake(data):
    for parse in (parse_request, parse_response):
        try:
            parse(data)
        except InvalidHandshake:
            pass
    try:
        find_head_end(data)
    except InvalidHandshake:
        pass


def _blank_line_end(data: bytes) -> int | None:
    """find_head_end's answer, the slow way: past the first line that is empty or a lone CR."""
    pos = 0
    while (nl := data.find(b"\n", pos)) >= 0:
        if data[nl + 1 : nl + 2] == b"\n":
            return nl + 2
        if data[nl + 1 : nl + 3] == b"\r\n":
            return nl + 3
        pos = nl + 1
    return None


_TOKENS = st.text("abcXYZ-_!~09", min_size=1, max_size=8)
_VALUES = st.text(" \tabc:;,=\"\u00e9\u00ff/", max_size=12)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(_TOKENS, st.sampled_from(["", " ", "\t "]), _VALUES), max_size=8), st.booleans())
def test_headers_parse_as_the_grammar_says(fields, crlf):
    """The one-pass parser (a regex per line, a dict by lower-cased name)
    gives what the grammar does: the name, the value without the blanks
    around it, in order, looked up case-insensitively."""
    eol = "\r\n" if crlf else "\n"
    head = "GET / HTTP/1.1" + eol + "".join(f"{n}{gap}:{v}{eol}" for n, gap, v in fields) + eol
    data = head.encode("latin-1")
    assert find_head_end(data) == _blank_line_end(data) == len(data)
    headers = parse_request(data).headers
    assert headers.items() == [(n, v.strip(" \t")) for n, _, v in fields]
    for name, _, _ in fields:
        assert headers.get_all(name.upper()) == [v.strip(" \t") for n, _, v in fields if n.lower() == name.lower()]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200).map(lambda b: b.replace(b"\x00", b"\n")))
def test_the_end_of_a_head_is_the_first_blank_line(data):
    try:
        end = find_head_end(data)
    except InvalidHandshake:
        return
    assert end == _blank_line_end(data)


def test_header_lookups_follow_changes():
    h = Headers()
    h.add("X-A", "1")
    h["x-a"] = "2"
    h.add("X-a", "3")
    assert h.get_all("X-A") == ["2", "3"] and h.items() == [("x-a", "2"), ("X-a", "3")]
    h.get_all("x-a").append("not kept")  # a copy: the headers don't change
    del h["X-A"]
    assert "x-a" not in h and h.get("X-A") is None and not h.items()


def test_the_grammar_shared_by_every_parser():
    assert TOKEN.fullmatch("permessage-deflate") and TOKEN.fullmatch("!#$%&'*+-.^_`|~09Az")
    assert not any(TOKEN.fullmatch(text) for text in ("", "a b", "a,b", 'a"', "caf\u00e9", "a\n"))
    assert unquote_string('"a \\"quoted\\" \\\\ word"') == 'a "quoted" \\ word'
    assert unquote_string("token") == "token"
    assert unquote_string('"') == '"'


@pytest.mark.parametrize(
    ("response", "error", "says"),
    [
        (
            Response(302, headers={"Location": "/x\r\nSet-Cookie: s=evil"}),
            ValueError,
            "'\\r' at offset 2 in header Location",
        ),
        (Response(200, headers={"Bad Name": "v"}), ValueError, "invalid header name 'Bad'"),
        (Response(200, headers={"X-Price": "5 \u20ac"}), ValueError, "not Latin-1 at offset 2 in header X-Price"),
        (Response(200, reason="OK\r\nSet-Cookie: s=evil"), ValueError, "in the reason phrase"),
        (Response(2000), ValueError, "invalid HTTP status 2000"),
        (Response(42), ValueError, "invalid HTTP status 42"),
        (Response("200"), TypeError, "must be an int, not str"),  # type: ignore[arg-type]
        (Response(200, body="text"), TypeError, "body must be bytes, not str"),  # type: ignore[arg-type]
    ],
)
def test_a_response_that_cant_be_sent_is_refused_by_check_and_serialize(
    response: Response, error: type[Exception], says: str
) -> None:
    with pytest.raises(error, match=re.escape(says)):
        response.check()
    with pytest.raises(error, match=re.escape(says)):
        response.serialize()
    assert "evil" not in says  # the value is never in the message


def test_check_never_shows_a_header_value() -> None:
    secret = "t0ken-s3cret"
    for name in ("Set-Cookie", "X-Api-Key", "Location"):
        with pytest.raises(ValueError) as info:
            Response(200, headers={name: f"{secret}\nX: y"}).check()
        assert name in str(info.value) and secret not in str(info.value)


def test_redact_header() -> None:
    assert redact_header("Authorization", "Bearer abc") == "Bearer ***"
    assert redact_header("proxy-authorization", "Basic dTpw") == "Basic ***"
    assert redact_header("Authorization", "justasecret") == "***"
    assert redact_header("Cookie", "a=b") == "***" and redact_header("Set-Cookie", "a=b") == "***"
    assert redact_header("X-Test", "shown") == "shown"
    assert redact_header_line("Authorization Bearer abc") == "'Authorization' (and 11 more characters, not shown)"
    assert redact_header_line("Upgrade") == "'Upgrade'"


@pytest.mark.parametrize(
    "line",
    [b"Authorization Bearer S3CRET", b"Authorization Basic user:S3CRET", b"Cookie\ts=S3CRET", b"X-Key=S3CRET:1"],
)
def test_a_malformed_header_line_is_named_not_quoted(line: bytes) -> None:
    for parse, start in ((parse_request, b"GET / HTTP/1.1"), (parse_response, b"HTTP/1.1 101 Switching Protocols")):
        with pytest.raises(InvalidHandshake, match="invalid HTTP header line '") as info:
            parse(start + b"\r\nHost: x\r\n" + line + b"\r\n\r\n")
        assert "S3CRET" not in str(info.value), info.value
        assert line[:5].decode() in str(info.value)  # which line: its would-be name


def test_the_headers_checked_once_for_all_would_pass_the_check() -> None:
    # check_header_value skips these: each must be what it would accept anyway.
    for name, value in http._CONSTANT_HEADERS:
        assert http.TOKEN.fullmatch(name) and not http._BAD_VALUE.search(value)
        value.encode("latin-1")


def test_the_reason_phrases_checked_once_for_all_would_pass_the_check() -> None:
    for reason in http._KNOWN_REASONS:
        assert not http._BAD_VALUE.search(reason)
        reason.encode("latin-1")
