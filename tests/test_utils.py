"""utils.py: URL redaction, the one helper every message with a URL goes through."""

from __future__ import annotations

import string
import urllib.parse

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import blockws
from blockws.client import parse_uri
from blockws.proxy import ProxyURL
from blockws.utils import redact_url, split_url

# Characters for user names and passwords: URL delimiters, percent signs,
# unicode, and fullwidth forms that NFKC turns into delimiters (urlsplit's
# error for those quotes the whole netloc).
CHARS = string.ascii_letters + string.digits + ":@%/?#!$&'()*+,;=~-._ \u00e9\u4e2d\uff03\uff1a\uff0f\uff20\u2100"
# Every password holds one of these: they are in no other part of a URL and
# in no message's wording, so a text holding the password got it from the
# password, whatever its length (the check can't be a false alarm). They are
# printable, so repr() shows them as they are (CHARS has no backslash or
# double quote either, which repr() would escape).
MARKERS = "\u2603\u265e\u2691"
HOSTS = ["host", "127.0.0.1", "[::1]", "[::1", "::1]", "h\uff03x", "", "exa mple", "h\u00e9"]
PORTS = ["", ":80", ":3128", ":99999", ":port", ":", ":-1", ":\u0663"]


@st.composite
def secrets(draw: st.DrawFn) -> str:
    return draw(st.text(CHARS, max_size=8)) + draw(st.sampled_from(MARKERS)) + draw(st.text(CHARS, max_size=8))


def embed(text: str, raw: bool, delimiters: str) -> str:
    """``text`` as it goes into the userinfo: as typed, or percent-encoded.

    Typed as is only without ``delimiters``: in a URL with a path, RFC 3986
    ends the authority at ``/``, ``?`` or ``#``, so what follows is the path,
    not a password, and no parser could tell.
    """
    if raw and not any(c in text for c in delimiters):
        return text
    return urllib.parse.quote(text, safe="")


@st.composite
def urls_with_credentials(draw: st.DrawFn, schemes: list[str], paths: list[str], delimiters: str) -> tuple[str, str]:
    """``(url, password)``: the URL's userinfo holds the password."""
    password = draw(secrets())
    raw = draw(st.booleans())
    user = embed(draw(st.text(CHARS, max_size=8)), raw, delimiters)
    scheme = draw(st.sampled_from(schemes))
    netloc = f"{user}:{embed(password, raw, delimiters)}@{draw(st.sampled_from(HOSTS))}{draw(st.sampled_from(PORTS))}"
    url = f"{scheme}://{netloc}" if scheme else netloc
    return url + draw(st.sampled_from(paths)), password


def shown(value: object) -> list[str]:
    """Every text that a message, a repr or a traceback can show of ``value``."""
    texts = [str(value), repr(value)]
    seen: list[BaseException] = []
    todo = [value] if isinstance(value, BaseException) else []
    while todo:
        exc = todo.pop()
        if exc in seen:
            continue
        seen.append(exc)
        texts += [str(exc), repr(exc)]
        todo += [e for e in (exc.__cause__, exc.__context__) if e is not None]
    return texts


def assert_hidden(value: object, url: str, password: str) -> None:
    forms = {password, urllib.parse.quote(password, safe=""), ascii(password)[1:-1]}
    for text in shown(value):
        for form in forms:
            assert form not in text, f"{url!r} shows its password in {text!r}"


WS_SCHEMES = ["ws", "wss", "http", "WSS", "ftp", "", "w s"]
WS_PATHS = ["", "/", "/p?q", "/#f", "/a b", "/a@b"]
PROXY_SCHEMES = ["http", "https", "HTTP", "socks5", "socks5h", "socks4a", "ftp", "ws", "", "x"]


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(urls_with_credentials(PROXY_SCHEMES, ["", "/", "/a@b"], delimiters=""))
@example(("http://u:p\u2603@host:99999", "p\u2603"))  # str.replace masked the "p" of "http"
@example(("u:pw\u2603@host:99999", "pw\u2603"))  # no scheme: the old _safe found no password
@example(("http://u:pw\u2603@[::1", "pw\u2603"))  # urlsplit's bare ValueError
@example(("http://u:pw\u2603\uff03@h", "pw\u2603\uff03"))  # urlsplit quotes the netloc
@example(("http://u:pa/ss\u2603@h:1", "pa/ss\u2603"))  # an unencoded "/" ends the netloc early
@example(("u:pw://\u2603@host:99999", "pw://\u2603"))  # a "://" in the password was taken for a scheme's
def test_proxy_urls_never_show_the_password(url_and_password: tuple[str, str]) -> None:
    url, password = url_and_password
    try:
        parsed = ProxyURL(url)
    except Exception as exc:
        assert isinstance(exc, blockws.ProxyError), f"{url!r}: {exc!r} is not a ProxyError"
        assert_hidden(exc, url, password)
        return
    assert_hidden(parsed, url, password)


@pytest.mark.slow
@settings(max_examples=400, deadline=None)
@given(urls_with_credentials(WS_SCHEMES, WS_PATHS, delimiters="/?#"))
@example(("ws://u:pw\u2603\uff03@h/", "pw\u2603\uff03"))  # urlsplit's error, quoting the netloc, was the context
def test_websocket_urls_never_show_the_password(url_and_password: tuple[str, str]) -> None:
    url, password = url_and_password
    try:
        uri = parse_uri(url)
    except Exception as exc:
        assert isinstance(exc, blockws.InvalidURI), f"{url!r}: {exc!r} is not an InvalidURI"
        assert_hidden(exc, url, password)
        # connect() parses before any I/O: the same error, just as hidden.
        with pytest.raises(blockws.InvalidURI) as info:
            blockws.connect(url, proxy=None, connect_gate=None)
        assert_hidden(info.value, url, password)
        return
    assert_hidden([uri, uri.url], url, password)


def test_redact_url_masks_only_the_password():
    assert redact_url("http://u:p@host:99999") == "http://u:***@host:99999"  # not "htt***://..."
    assert redact_url("ws://u:pw@h/a@b") == "ws://u:***@h/a@b"
    assert redact_url("ws://h:1/a:b@c") == "ws://h:1/a:b@c"  # the path is not userinfo...
    assert redact_url("http://u:pa/ss@h:1", no_path=True) == "http://u:***@h:1"  # ... unless there is no path


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://u:pw@[::1", "Invalid IPv6 URL"),
        ("http://u:pw@h:99999", "Port out of range"),
        ("http://u:pw\uff03@h", r"netloc 'u:\*\*\*@h' contains invalid characters"),
        ("http://u:p\tw@h", "control characters"),
    ],
)
def test_split_url_errors_mask_the_password_and_have_no_context(url, message):
    with pytest.raises(ValueError, match=message) as info:
        split_url(url)
    assert "pw" not in str(info.value)
    assert info.value.__context__ is None and info.value.__cause__ is None


def test_split_url_refuses_delimiters_in_the_userinfo_of_a_url_without_path():
    with pytest.raises(ValueError, match="percent-encode"):
        split_url("http://u:pa/ss@h:1", no_path=True)
    parts, port = split_url("ws://u:80/ss@h:1")  # with a path, that is a path
    assert (parts.hostname, port, parts.path) == ("u", 80, "/ss@h:1")
