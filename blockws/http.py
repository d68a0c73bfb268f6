"""A small HTTP/1.1 message layer for the opening handshake, proxies and auth.

Parsing is lenient where people and old peers differ (bare LF line endings,
header name case, optional whitespace, an HTTP/1.0 status line) and strict
where it matters for safety (every size is bounded, control characters in
names and values are refused). No I/O: :func:`find_head_end` tells the I/O
layer when it has read a whole head.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Union

from ._accel import split_head
from .exceptions import InvalidHandshake

__all__ = [
    "Headers",
    "HeadersLike",
    "Request",
    "Response",
    "find_head_end",
    "parse_request",
    "parse_response",
    "parse_list",
    "MAX_LINE",
    "MAX_HEADERS",
    "MAX_BODY",
    "check_header_value",
    "redact_header",
    "redact_header_line",
    "CREDENTIAL_HEADERS",
    "TCHAR",
    "TOKEN",
    "QUOTED_STRING",
    "unquote_string",
]

# Defaults of the parsers' max_line and max_headers options.
MAX_LINE = 8192
MAX_HEADERS = 128
# A head may hold max_headers lines of max_line bytes, but nobody needs that:
# bound the whole head so a slow client can't make us hold a megabyte.
MAX_HEAD = 64 * 1024
MAX_BODY = 64 * 1024

#: Headers whose values are secrets, in lower case: never shown in reprs,
#: error messages or traces.
CREDENTIAL_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})

# The grammar of header values (RFC 9110 section 5.6), defined here once for
# every parser in blockws: handshake, extensions, authentication.

#: One token character (tchar), for patterns that embed a token.
TCHAR = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
#: A token: header names, auth schemes and parameters, subprotocols.
TOKEN = re.compile(TCHAR + "+")
#: A quoted-string, quotes included (:func:`unquote_string` takes them off).
QUOTED_STRING = r'"(?:[^"\\]|\\.)*"'
_QUOTED_PAIR = re.compile(r"\\(.)")


def unquote_string(value: str) -> str:
    """The text of a quoted-string, its backslash escapes undone; any other value unchanged."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return _QUOTED_PAIR.sub(r"\1", value[1:-1])
    return value


_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class Headers:
    """Case-insensitive HTTP headers that keep order and repeated names.

    The pairs are kept in order, and their values by lower-cased name too,
    so that a look-up is one dict access, not a scan that lower-cases every
    name (a handshake looks up about ten headers).
    """

    __slots__ = ("_items", "_index")

    def __init__(self, items: HeadersLike | None = None) -> None:
        self._items: list[tuple[str, str]] = []
        self._index: dict[str, list[str]] = {}
        if items is not None:
            self.update(items)

    @classmethod
    def _from_pairs(cls, pairs: list[tuple[str, str]], index: dict[str, list[str]] | None = None) -> Headers:
        """Headers holding ``pairs``, the list itself: for a list of tuples
        the caller built and gives away (update() would check and copy it),
        with their ``index`` by lower-cased name if the caller has it."""
        headers = cls()
        headers._items = pairs
        if index is None:
            _index_into(headers._index, pairs)
        else:
            headers._index = index
        return headers

    def update(self, items: HeadersLike) -> None:
        pairs = items.items() if isinstance(items, (Mapping, Headers)) else items
        for name, value in pairs:
            self.add(name, value)

    def add(self, name: str, value: str) -> None:
        self._items.append((name, value))
        values = self._index.get(name.lower())
        if values is None:
            self._index[name.lower()] = [value]
        else:
            values.append(value)

    def __setitem__(self, name: str, value: str) -> None:
        del self[name]
        self.add(name, value)

    def __delitem__(self, name: str) -> None:
        lname = name.lower()
        if self._index.pop(lname, None) is not None:
            self._items = [(n, v) for n, v in self._items if n.lower() != lname]

    def __getitem__(self, name: str) -> str:
        values = self._index.get(name.lower())
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def get(self, name: str, default: str | None = None) -> str | None:
        values = self._index.get(name.lower())
        return ", ".join(values) if values else default

    def get_all(self, name: str) -> list[str]:
        values = self._index.get(name.lower())
        return list(values) if values else []

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._index

    def __iter__(self) -> Iterator[str]:
        return (n for n, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def items(self) -> list[tuple[str, str]]:
        return list(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        shown = [(n, redact_header(n, v)) for n, v in self._items]
        return f"Headers({shown!r})"

    def serialize(self) -> bytes:
        items = self._items
        if not items:
            return b""
        return ("\r\n".join(map(": ".join, items)) + "\r\n").encode("latin-1")


HeadersLike = Union[Headers, Mapping[str, str], Iterable[tuple[str, str]]]


def _index_into(index: dict[str, list[str]], pairs: list[tuple[str, str]]) -> None:
    """Add ``pairs`` to a :class:`Headers` index (as :meth:`Headers.add` does, without a call per pair)."""
    for name, value in pairs:
        lname = name.lower()
        values = index.get(lname)
        if values is None:
            index[lname] = [value]
        else:
            values.append(value)


# The headers blockws itself sends in every handshake, known to pass
# check_header_value: not checked again each time (two regexes and an
# encode, ~5,500 instructions a pair; a 101 has two of these).
_CONSTANT_HEADERS = frozenset({("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Version", "13")})


def check_header_value(name: str, value: str) -> None:
    """Refuse header names and values that could inject lines (CR, LF, ...) or can't be sent.

    The message says where, never the value: it may be a password or a
    cookie, even under a name that doesn't say so (``X-Api-Key``).

    Raises:
        ValueError: the name is not a token, or the value holds a control
            character or one that is not Latin-1.
    """
    if (name, value) in _CONSTANT_HEADERS:
        return
    if not TOKEN.fullmatch(name):
        raise ValueError(f"invalid header name {redact_header_line(name)}")
    bad = _BAD_VALUE.search(value)
    if bad:
        raise ValueError(f"invalid character {bad.group()!r} at offset {bad.start()} in header {name}")
    try:
        value.encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ValueError(f"a character that is not Latin-1 at offset {exc.start} in header {name}") from None


def redact_header(name: str, value: str) -> str:
    """``value`` as a log line, an error message or a trace may show it.

    The value of a credential header (:data:`CREDENTIAL_HEADERS`) is
    ``***``; an ``Authorization`` keeps its scheme (``Bearer ***``), which
    says what was sent without giving it away.
    """
    lname = name.lower()
    if lname not in CREDENTIAL_HEADERS:
        return value
    if lname.endswith("authorization"):
        scheme, sep, _ = value.strip().partition(" ")
        return f"{scheme} ***" if sep and TOKEN.fullmatch(scheme) else "***"
    return "***"


_LEADING_TOKEN = re.compile(TCHAR + "{0,60}")


def redact_header_line(line: str) -> str:
    """A malformed header line for a message: the token it starts with, never the rest.

    Without a colon there's no telling where a name would end and a value
    begin (``Authorization Bearer secret``), and a colon may be inside the
    credential (``Authorization Basic user:pw``): only the leading token,
    the would-be name, is shown, and how much was left out.
    """
    match = _LEADING_TOKEN.match(line)
    name = match.group() if match else ""
    hidden = len(line) - len(name)
    return f"{name!r}" + (f" (and {hidden} more characters, not shown)" if hidden else "")


class Request:
    """An HTTP request (the client's upgrade request, or a CONNECT)."""

    def __init__(self, method: str, target: str, headers: HeadersLike | None = None) -> None:
        self.method = method
        self.target = target
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)

    @property
    def path(self) -> str:
        return self.target

    def serialize(self) -> bytes:
        for name, value in self.headers.items():
            check_header_value(name, value)
        if _BAD_VALUE.search(self.target) or " " in self.target:
            raise ValueError(f"invalid request target {self.target!r}")
        return f"{self.method} {self.target} HTTP/1.1\r\n".encode("latin-1") + self.headers.serialize() + b"\r\n"

    def __repr__(self) -> str:
        return f"Request({self.method!r}, {self.target!r})"


_REASONS = {
    101: "Switching Protocols",
    200: "OK",
    301: "Moved Permanently",
    302: "Found",
    303: "See Other",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    426: "Upgrade Required",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}

_KNOWN_REASONS = frozenset(_REASONS.values())


class Response:
    """An HTTP response: the server's answer, a rejection, a redirect, a challenge.

    A server's ``process_request`` hook returns one to refuse the upgrade::

        return Response(403, body=b"go away\\n")
        return Response.redirect("wss://example.com/new")
    """

    def __init__(
        self,
        status: int,
        reason: str | None = None,
        headers: HeadersLike | None = None,
        body: bytes = b"",
    ) -> None:
        self.status = status
        self.reason = _REASONS.get(status, "") if reason is None else reason
        self.headers = headers if isinstance(headers, Headers) else Headers(headers)
        self.body = body

    @classmethod
    def redirect(cls, location: str, status: int = 302) -> Response:
        """A redirect to ``location`` (301, 302, 303, 307 or 308)."""
        if status not in (301, 302, 303, 307, 308):
            raise ValueError(f"{status} is not a redirect status")
        return cls(status, headers={"Location": location})

    def check(self) -> None:
        """Refuse a response that can't go out as it is.

        Every writer of a response calls it: :meth:`serialize`, and the
        embeddings that hand it to another server (:func:`~blockws.wsgi_app`,
        :func:`~blockws.accept_http`), which don't all check: so a
        ``process_request`` that builds a header from the request can't
        inject lines whichever server sends the answer.

        Raises:
            ValueError: a status that isn't three digits, a control
                character in the reason phrase, or a header name or value
                that :func:`check_header_value` refuses.
            TypeError: a status that is not an int, a reason that is not a
                str, a body that is not bytes.
        """
        if not isinstance(self.status, int) or isinstance(self.status, bool):
            raise TypeError(f"the HTTP status must be an int, not {type(self.status).__name__}")
        if not 100 <= self.status <= 999:
            raise ValueError(f"invalid HTTP status {self.status}: not three digits")
        if not isinstance(self.reason, str):
            raise TypeError(f"the reason phrase must be a str, not {type(self.reason).__name__}")
        if self.reason not in _KNOWN_REASONS:  # (ours pass: not checked again, as _CONSTANT_HEADERS)
            bad = _BAD_VALUE.search(self.reason)
            if bad:
                raise ValueError(f"invalid character {bad.group()!r} at offset {bad.start()} in the reason phrase")
            try:
                self.reason.encode("latin-1")
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"a character that is not Latin-1 at offset {exc.start} in the reason phrase"
                ) from None
        for name, value in self.headers.items():
            check_header_value(name, value)
        if not isinstance(self.body, (bytes, bytearray)):
            raise TypeError(f"the body must be bytes, not {type(self.body).__name__}")

    def serialize(self) -> bytes:
        """The response as bytes to send, checked first (see :meth:`check`)."""
        self.check()
        headers = self.headers
        if self.status != 101 and "Content-Length" not in headers:
            headers = Headers(headers)  # a copy: the response stays as it was made
            headers["Content-Length"] = str(len(self.body))
        status_line = f"HTTP/1.1 {self.status} {self.reason}\r\n".encode("latin-1")
        return status_line + headers.serialize() + b"\r\n" + self.body

    def __repr__(self) -> str:
        return f"Response({self.status}, {self.reason!r})"


def find_head_end(buf: bytes | bytearray, start: int = 0, *, max_line: int | None = None) -> int | None:
    """Return the offset just past the blank line ending the head, or None.

    ``start`` is where the previous, unsuccessful search may resume. The
    head is bounded by ``MAX_HEAD`` bytes; with ``max_line``, an unfinished
    line longer than that is refused at once too (by default lines are
    checked by the parser, against its own ``max_line`` option).

    Raises:
        InvalidHandshake: the head is already longer than allowed, or a line
            in it is.
    """
    _check_start(buf)  # cheap: it looks at the first bytes only
    pos = max(start - 3, 0)
    # A blank line is "\n" or "\r\n" right after a "\n": the first of either.
    crlf = buf.find(b"\n\r\n", pos)
    lf = buf.find(b"\n\n", pos)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf + 2
    if crlf >= 0:
        return crlf + 3
    if len(buf) > MAX_HEAD:
        raise InvalidHandshake(f"HTTP head exceeds {MAX_HEAD} bytes")
    last_line = len(buf) - (buf.rfind(b"\n") + 1)
    if max_line is not None and last_line > max_line:
        raise InvalidHandshake(f"HTTP line exceeds {max_line} bytes (max_line={max_line})")
    return None


_TCHAR_BYTES = frozenset(byte for byte in range(128) if TOKEN.fullmatch(chr(byte)))


def _check_start(buf: bytes | bytearray) -> None:
    """Refuse at once what can't begin an HTTP message, rather than wait for a blank line.

    A TLS record (a ClientHello sent to a plaintext server, an alert from a
    TLS server to a plaintext client) has no blank line and would otherwise
    hang until the timeout.
    """
    if buf[:1] and buf[0] in _TCHAR_BYTES:
        return  # the usual start: at once, without a search
    first = next((b for b in buf if b not in b"\r\n"), None)
    if first is None or first in _TCHAR_BYTES:
        return
    if first in (0x15, 0x16):
        raise InvalidHandshake(
            "the peer speaks TLS, not plain HTTP (a wss:// URL or a server ssl_context on one side only?)"
        )
    raise InvalidHandshake(f"not an HTTP message: it starts with byte 0x{first:02x}")


# A well-formed header line, in one match: a token, optional blanks
# ("Name :" typed by hand), a colon, the value without control characters
# (a tab is allowed) and without the blanks around it.
_FIELD_LINE = re.compile(r"(" + TCHAR + r"+)[ \t]*:[ \t]*((?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)[ \t]*")


# Every header line of a well-formed head at once (see _FIELD_LINE).
_FIELD_LINES = re.compile(
    r"^(" + TCHAR + r"+)[ \t]*:[ \t]*((?:[^\x00-\x08\x0a-\x1f\x7f]*[^\x00-\x20\x7f])?)[ \t]*$", re.MULTILINE
)


def _split_head(head: bytes, max_line: int, max_headers: int) -> tuple[str, Headers]:
    if split_head is not None:
        # The accelerator splits a well-formed head in one call (parse_request
        # 57,000 instructions -> 27,000, counted); anything else comes below.
        split = split_head(head, max_line, max_headers)
        if split is not None:
            start, pairs, index = split
            return start, Headers._from_pairs(pairs, index)
    return _split_head_python(head, max_line, max_headers)


def _split_head_python(head: bytes, max_line: int, max_headers: int) -> tuple[str, Headers]:
    """The grammar's reference (the accelerator's split_head gives the same or None), and its errors."""
    # Accept CRLF and bare LF; a CR anywhere else is refused below (a
    # control character in a value, or a malformed line).
    text = head.decode("latin-1")
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    # Blank lines before the start line are tolerated (RFC 9112 section 2.2).
    start, _, fields = text.strip("\n").partition("\n")
    if not start:
        raise InvalidHandshake("empty HTTP message")
    count = fields.count("\n") + 1 if fields else 0
    if count > max_headers:
        raise InvalidHandshake(f"more than {max_headers} HTTP headers (max_headers={max_headers})")
    if len(start) > max_line or count and len(fields) > max_line and max(map(len, fields.split("\n"))) > max_line:
        raise InvalidHandshake(f"HTTP line exceeds {max_line} bytes (max_line={max_line})")
    pairs = _FIELD_LINES.findall(fields)
    if len(pairs) != count:
        # Some line isn't "name: value": say which, and what is wrong with it.
        for line in fields.split("\n"):
            if _FIELD_LINE.fullmatch(line) is None:
                raise _bad_field(line)
    return start, Headers._from_pairs(pairs)


def _bad_field(line: str) -> InvalidHandshake:
    """What is wrong with a header line that isn't ``name: value``."""
    if line[:1] in (" ", "\t"):
        return InvalidHandshake("obsolete line folding in HTTP headers")
    name, sep, _ = line.partition(":")
    name = name.rstrip(" \t")
    if not sep or not TOKEN.fullmatch(name):
        # Not the line: "Authorization Bearer X" (no colon) is a credential.
        return InvalidHandshake(f"invalid HTTP header line {redact_header_line(line)}")
    return InvalidHandshake(f"invalid character in HTTP header {name[:60]!r}")


def parse_request(head: bytes, *, max_line: int = MAX_LINE, max_headers: int = MAX_HEADERS) -> Request:
    """Parse a request head (as delimited by :func:`find_head_end`).

    Args:
        head: the request line and headers, up to the blank line.
        max_line: the longest line accepted, in bytes.
        max_headers: the most header lines accepted.

    Raises:
        InvalidHandshake: the request line or a header is malformed, or a
            limit was exceeded (the message names the option).
    """
    start, headers = _split_head(head, max_line, max_headers)
    parts = start.split()
    if len(parts) != 3 or not parts[2].upper().startswith("HTTP/"):
        raise InvalidHandshake(f"invalid HTTP request line {start[:60]!r}")
    method, target, version = parts
    if not version.upper().startswith("HTTP/1."):
        raise InvalidHandshake(f"unsupported HTTP version {version[:20]!r}")
    return Request(method.upper(), target, headers)


def parse_response(head: bytes, *, max_line: int = MAX_LINE, max_headers: int = MAX_HEADERS) -> Response:
    """Parse a response head; the body, if any, is read by the caller.

    Args:
        head: the status line and headers, up to the blank line.
        max_line: the longest line accepted, in bytes.
        max_headers: the most header lines accepted.

    Raises:
        InvalidHandshake: the status line or a header is malformed, or a
            limit was exceeded (the message names the option).
    """
    start, headers = _split_head(head, max_line, max_headers)
    version, _, rest = start.partition(" ")
    status_text, _, reason = rest.strip().partition(" ")
    if not version.upper().startswith("HTTP/1.") or not (len(status_text) == 3 and status_text.isdigit()):
        raise InvalidHandshake(f"invalid HTTP status line {start[:60]!r}")
    return Response(int(status_text), reason.strip(), headers)


def parse_list(values: Iterable[str]) -> list[str]:
    """Split comma-separated header values into their non-empty items."""
    return [item.strip() for value in values for item in value.split(",") if item.strip()]
