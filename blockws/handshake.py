"""The opening handshake of RFC 6455 section 4, without I/O.

The client builds its request with :func:`client_request` and checks the
answer with :func:`check_response`; the server checks a request with
:func:`check_request` and answers with :func:`accept_response` or any
:class:`~blockws.http.Response`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Sequence

from .exceptions import HandshakeFailure, InvalidHandshake, InvalidStatus
from .http import QUOTED_STRING, TOKEN, Headers, HeadersLike, Request, Response, parse_list, unquote_string

__all__ = [
    "GUID",
    "make_key",
    "accept_key",
    "client_request",
    "check_response",
    "check_request",
    "accept_response",
    "parse_extensions",
    "check_subprotocols",
    "ExtensionOffer",
    "HandshakeFailure",  # defined in exceptions.py with the other errors; importable from here as before
]

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# What base64 of 16 bytes looks like: what b64decode(key, validate=True)
# accepted and decoded to 16 bytes, without decoding it (once per handshake).
_KEY = re.compile(r"[A-Za-z0-9+/]{22}==")

ExtensionOffer = tuple[str, list[tuple[str, "str | None"]]]


def make_key() -> str:
    """A fresh random Sec-WebSocket-Key."""
    return base64.b64encode(os.urandom(16)).decode()


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept value that answers ``key``."""
    # binascii, not base64.b64encode: the same bytes without its Python wrapper (once per handshake).
    return binascii.b2a_base64(hashlib.sha1((key + GUID).encode()).digest(), newline=False).decode()


def check_subprotocols(subprotocols: Sequence[str] | None) -> list[str] | None:
    """Check subprotocol names before they are offered or configured.

    Each must be an HTTP token (RFC 6455 section 4.1, RFC 7230 tchar): a
    name like ``"a, b"`` would be read as two, and a space, CR or LF could
    inject a header.

    Returns:
        The names as a list (None for None).

    Raises:
        TypeError: a single ``str`` instead of a sequence of names.
        ValueError: a name is not a token (the message shows it).
    """
    if subprotocols is None:
        return None
    if isinstance(subprotocols, (str, bytes)):
        raise TypeError(f"subprotocols must be a sequence of names, not a single {type(subprotocols).__name__}")
    names = list(subprotocols)
    for name in names:
        if not isinstance(name, str) or not TOKEN.fullmatch(name):
            raise ValueError(
                f"invalid subprotocol name {name!r}: it must be an HTTP token (letters, digits, !#$%&'*+-.^_`|~)"
            )
    return names


def _has_token(headers: Headers, name: str, token: str) -> bool:
    values = headers.get_all(name)
    if len(values) == 1 and values[0].lower() == token:
        return True  # the usual header: the token alone
    return token in (item.lower() for item in parse_list(values))


def client_request(
    host: str,
    target: str,
    key: str,
    *,
    origin: str | None = None,
    subprotocols: Sequence[str] | None = None,
    extensions: str | None = None,
    headers: HeadersLike | None = None,
) -> Request:
    """Build the upgrade request; user ``headers`` may override the defaults.

    Raises:
        ValueError: a subprotocol name is not an HTTP token.
    """
    subprotocols = check_subprotocols(subprotocols)
    h = Headers({"Host": host, "Upgrade": "websocket", "Connection": "Upgrade"})
    h["Sec-WebSocket-Key"] = key
    h["Sec-WebSocket-Version"] = "13"
    if origin is not None:
        h["Origin"] = origin
    if subprotocols:
        h["Sec-WebSocket-Protocol"] = ", ".join(subprotocols)
    if extensions:
        h["Sec-WebSocket-Extensions"] = extensions
    for name, value in Headers(headers).items():
        h[name] = value
    return Request("GET", target, h)


def check_response(response: Response, key: str, subprotocols: Sequence[str] | None) -> str | None:
    """Check the server's answer to an upgrade request; return the subprotocol.

    Raises:
        InvalidStatus: the status is not 101.
        InvalidHandshake: a required header is missing or wrong.
    """
    if response.status != 101:
        raise InvalidStatus(response)
    headers = response.headers
    if not _has_token(headers, "Upgrade", "websocket"):
        raise InvalidHandshake(f"missing 'Upgrade: websocket' in response (got {headers.get('Upgrade')!r})")
    if not _has_token(headers, "Connection", "upgrade"):
        raise InvalidHandshake(f"missing 'Connection: Upgrade' in response (got {headers.get('Connection')!r})")
    accept = headers.get("Sec-WebSocket-Accept")
    if accept != accept_key(key):
        raise InvalidHandshake(f"wrong Sec-WebSocket-Accept {accept!r}")
    chosen = parse_list(headers.get_all("Sec-WebSocket-Protocol"))
    if not chosen:
        return None
    if len(chosen) > 1 or not subprotocols or chosen[0] not in subprotocols:
        raise InvalidHandshake(f"server chose subprotocol {', '.join(chosen)!r}, which was not offered")
    return chosen[0]


def not_websocket(request: Request) -> HandshakeFailure | None:
    """The 426 refusal of a request without ``Upgrade: websocket``; None for an upgrade request."""
    if _has_token(request.headers, "Upgrade", "websocket"):
        return None
    return HandshakeFailure(
        "missing 'Upgrade: websocket' header: this is a WebSocket server",
        426,
        {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"},
    )


def check_request(request: Request) -> str:
    """Check an upgrade request; return its Sec-WebSocket-Key.

    Raises:
        HandshakeFailure: with the status to answer (400, 405, 426).
    """
    if request.method != "GET":
        raise HandshakeFailure(f"method {request.method} is not GET", 405, {"Allow": "GET"})
    headers = request.headers
    refusal = not_websocket(request)
    if refusal is not None:
        raise refusal
    if not _has_token(headers, "Connection", "upgrade"):
        raise HandshakeFailure("missing 'Connection: Upgrade' header")
    version = headers.get("Sec-WebSocket-Version")
    if version != "13":
        raise HandshakeFailure(f"unsupported Sec-WebSocket-Version {version!r}", 426, {"Sec-WebSocket-Version": "13"})
    keys = headers.get_all("Sec-WebSocket-Key")
    if len(keys) != 1:
        raise HandshakeFailure("missing or repeated Sec-WebSocket-Key header")
    key = keys[0]
    if not _KEY.fullmatch(key):
        raise HandshakeFailure(f"invalid Sec-WebSocket-Key {key[:40]!r}")
    return key


def select_subprotocol(request: Request, supported: Sequence[str] | None) -> str | None:
    """The first subprotocol the client offered that the server supports.

    Raises:
        ValueError: a name in ``supported`` is not an HTTP token.
    """
    supported = check_subprotocols(supported)
    if not supported:
        return None
    for offered in parse_list(request.headers.get_all("Sec-WebSocket-Protocol")):
        if offered in supported:
            return offered
    return None


def accept_response(
    key: str,
    subprotocol: str | None = None,
    extensions: str | None = None,
    headers: HeadersLike | None = None,
) -> Response:
    """The 101 response accepting an upgrade request."""
    pairs = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", accept_key(key))]
    if subprotocol:
        pairs.append(("Sec-WebSocket-Protocol", subprotocol))
    if extensions:
        pairs.append(("Sec-WebSocket-Extensions", extensions))
    h = Headers._from_pairs(pairs)
    if headers:
        h.update(headers)
    return Response(101, headers=h)


_PARAM = re.compile(rf'\s*([^\s=;,"]+)\s*(?:=\s*({QUOTED_STRING}|[^\s;,"]*)\s*)?')


def parse_extensions(values: Sequence[str]) -> list[ExtensionOffer]:
    """Parse Sec-WebSocket-Extensions values (RFC 6455 section 9.1).

    ``"permessage-deflate; client_max_window_bits, x-foo; a=\\"1\\""`` gives
    ``[("permessage-deflate", [("client_max_window_bits", None)]), ("x-foo", [("a", "1")])]``.

    Raises:
        InvalidHandshake: the header does not follow the grammar.
    """
    result: list[ExtensionOffer] = []
    for value in values:
        pos = 0
        while pos < len(value):
            m = _PARAM.match(value, pos)
            if not m or m.group(2) is not None or not m.group(1):
                if value[pos:].strip(" \t,") == "":
                    break
                raise InvalidHandshake(f"invalid Sec-WebSocket-Extensions header {value[:80]!r}")
            name = m.group(1)
            params: list[tuple[str, str | None]] = []
            pos = m.end()
            while pos < len(value) and value[pos] == ";":
                m = _PARAM.match(value, pos + 1)
                if not m or not m.group(1):
                    raise InvalidHandshake(f"invalid Sec-WebSocket-Extensions header {value[:80]!r}")
                raw = m.group(2)
                params.append((m.group(1), None if raw is None else unquote_string(raw)))
                pos = m.end()
            result.append((name, params))
            if pos < len(value):
                if value[pos] != ",":
                    raise InvalidHandshake(f"invalid Sec-WebSocket-Extensions header {value[:80]!r}")
                pos += 1
    return result
