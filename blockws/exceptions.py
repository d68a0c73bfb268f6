"""Exceptions raised by blockws.

The tree::

    WebSocketError
    ├── InvalidURI (also ValueError)
    ├── BadPortError (also ValueError)
    ├── InvalidHandshake
    │   ├── InvalidStatus        the peer answered with an HTTP status other than 101
    │   ├── HandshakeFailure     (server) a request refused, with the status to answer
    │   ├── HeadCut              the peer closed the connection inside an HTTP head
    │   ├── TooManyRedirects
    │   └── ProxyError           the proxy refused or broke the tunnel
    ├── ProtocolError            the peer broke RFC 6455 (carries the close code)
    │   └── PayloadTooBig        a message exceeded max_size (close code 1009)
    └── ConnectionClosed (also ConnectionError)
        ├── ConnectionClosedOK      closed by a clean closing handshake
        └── ConnectionClosedError   lost, or failed with an error close code

    ssl.SSLCertVerificationError
    └── CertificateVerifyError   names the host and what to do (not a WebSocketError:
                                 ``except ssl.SSLError`` catches it, as before)

Timeouts and non-blocking operations raise the builtin ``TimeoutError`` and
``BlockingIOError``, exactly as :mod:`socket` does.
"""

from __future__ import annotations

import ssl
import unicodedata
from typing import TYPE_CHECKING, Any

from .codes import CloseCode

if TYPE_CHECKING:
    from .http import Headers, HeadersLike, Response

__all__ = [
    "WebSocketError",
    "InvalidURI",
    "BadPortError",
    "InvalidHandshake",
    "InvalidStatus",
    "HandshakeFailure",
    "HeadCut",
    "TooManyRedirects",
    "ProxyError",
    "ProtocolError",
    "PayloadTooBig",
    "BufferTooSmall",
    "ConnectionClosed",
    "ConnectionClosedOK",
    "ConnectionClosedError",
    "CertificateVerifyError",
]


class WebSocketError(Exception):
    """Base class of every exception blockws defines.

    Every one pickles with its message and attributes, so it can cross a
    process boundary (``multiprocessing``, ``concurrent.futures``).
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickle's default calls the class with ``args``, the message alone,
        # which an __init__ taking (code, reason), (size, nbytes, exact) or
        # a Response can't take: rebuild without __init__ instead.
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[WebSocketError], args: tuple[Any, ...], state: dict[str, Any]) -> WebSocketError:
    """An exception unpickled: ``cls`` with ``args`` (its message) and the attributes ``state``."""
    exc = cls.__new__(cls)
    exc.args = args
    exc.__dict__.update(state)
    return exc


class InvalidURI(WebSocketError, ValueError):
    """The URL is not a valid ``ws://`` or ``wss://`` URL."""


class BadPortError(WebSocketError, ValueError):
    """The port is on the Fetch standard's list of ports banned for HTTP.

    Pass ``allow_bad_ports=True`` to :func:`blockws.connect` to use it anyway.
    """


class InvalidHandshake(WebSocketError):
    """The opening handshake failed (bad request, bad response, refused)."""


class InvalidStatus(InvalidHandshake):
    """The server answered the upgrade request with a status other than 101.

    The message shows the first line of the response body when it is short
    plain text (no Content-Type or ``text/*`` other than HTML, UTF-8), as in
    ``HTTP 400 Bad Request: "this server speaks TLS: use a wss:// URL"``:
    cut to 200 characters, control characters removed, so a server can't
    put escape sequences or extra lines into a terminal or a log.

    Attributes:
        response: the whole :class:`~blockws.http.Response`.
        status: its status code, e.g. 401.
        headers: its headers.
        body: its body (bounded), as bytes.
    """

    def __init__(self, response: Response, message: str | None = None) -> None:
        self.response = response
        if message is None:
            message = f"server rejected WebSocket connection: HTTP {response.status} {_printable(response.reason)}"
            said = _first_line(response)
            if said:
                message += f': "{said}"'
        super().__init__(message)

    @property
    def status(self) -> int:
        return self.response.status

    @property
    def headers(self) -> Headers:
        return self.response.headers

    @property
    def body(self) -> bytes:
        return self.response.body


#: The longest part of a response body an InvalidStatus message quotes.
MAX_QUOTED = 200


def _printable(text: str) -> str:
    """``text`` without control and format characters (escapes, bidi overrides); tabs become spaces."""
    return "".join(" " if c == "\t" else c for c in text if c == "\t" or not unicodedata.category(c).startswith("C"))


def _first_line(response: Response) -> str:
    """The first non-blank line of a short plain-text body, made safe to print; "" if none."""
    content_type = (response.headers.get("Content-Type") or "").partition(";")[0].strip().lower()
    if content_type and (not content_type.startswith("text/") or content_type == "text/html"):
        return ""
    head = response.body[: 4 * MAX_QUOTED]
    try:
        text = head.decode()
    except UnicodeDecodeError as exc:
        # A character cut by the slice is fine; invalid UTF-8 is not text.
        if len(response.body) == len(head) or exc.start < len(head) - 3:
            return ""
        text = head[: exc.start].decode()
    line = next((s for s in (_printable(line).strip() for line in text.splitlines()) if s), "")
    if line.startswith("<"):
        return ""  # markup (an error page without a Content-Type): its first line says nothing
    return line if len(line) <= MAX_QUOTED else line[:MAX_QUOTED] + "..."


class HandshakeFailure(InvalidHandshake):
    """A request the server refuses; ``status`` is the HTTP status to answer.

    Attributes:
        status: the status, e.g. 400, 403, 405 or 426.
        headers: headers the answer needs (``Allow``, ``Sec-WebSocket-Version``).
    """

    def __init__(self, message: str, status: int = 400, headers: HeadersLike | None = None) -> None:
        from .http import Headers  # here: http.py imports this module

        super().__init__(message)
        self.status = status
        self.headers = Headers(headers)

    def response(self) -> Response:
        """The answer to send: ``status``, ``headers``, and the message as the body."""
        from .http import Response

        return Response(self.status, headers=self.headers, body=f"{self}\n".encode())


class HeadCut(InvalidHandshake):
    """The peer closed the connection before the end of an HTTP head."""


class TooManyRedirects(InvalidHandshake):
    """More redirects than ``max_redirects``, or a redirect loop."""


class ProxyError(InvalidHandshake):
    """The proxy refused the tunnel or answered something invalid."""


class ProtocolError(WebSocketError):
    """The peer (or the caller) broke the WebSocket protocol.

    Attributes:
        close_code: the close code the connection is failed with
            (1002 protocol error, 1007 invalid data, 1009 too big, ...).
    """

    def __init__(self, message: str, close_code: int = CloseCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        # A plain int, as before the codes had names: str() of an IntEnum
        # member differs between Python versions, and this one is logged.
        self.close_code = int(close_code)


class PayloadTooBig(ProtocolError):
    """A message or frame exceeded a size limit (close code 1009)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, CloseCode.MESSAGE_TOO_BIG)


class BufferTooSmall(WebSocketError, ValueError):
    """The next message doesn't fit in the buffer given to
    :meth:`~blockws.WebSocket.recv_into`; it stays receivable, whole, by
    the next ``recv()`` or a ``recv_into()`` with a larger buffer.

    Attributes:
        size: the message's size in bytes when ``exact``; otherwise what is
            known so far (a fragmented or compressed message): it is at
            least that long.
        nbytes: the room the buffer had.
        exact: whether ``size`` is the whole message's.
    """

    def __init__(self, size: int, nbytes: int, exact: bool) -> None:
        known = f"{size}" if exact else f"at least {size}"
        super().__init__(f"message of {known} bytes doesn't fit in a buffer of {nbytes} bytes")
        self.size = size
        self.nbytes = nbytes
        self.exact = exact


class ConnectionClosed(WebSocketError, ConnectionError):
    """The connection is closed; no more data can be sent or received.

    Attributes:
        code: the close code (received, or sent when we failed the
            connection; 1006 when it was lost without a Close).
        reason: the close reason.
    """

    def __init__(self, code: int, reason: str, message: str | None = None) -> None:
        self.code = int(code)  # as ProtocolError.close_code
        self.reason = reason
        if message is None:
            message = f"connection closed: {code}" + (f" {reason}" if reason else "")
        super().__init__(message)


class ConnectionClosedOK(ConnectionClosed):
    """The connection was closed by a clean closing handshake (1000/1001)."""


class ConnectionClosedError(ConnectionClosed):
    """The connection was lost, or closed with an error code."""


# OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH.
_NAME_MISMATCH = frozenset({62, 64})


class CertificateVerifyError(ssl.SSLCertVerificationError):
    """The server's TLS certificate failed verification.

    Its message names the host and port and says what to do; the original
    :class:`ssl.SSLCertVerificationError` is its ``__cause__``, and
    ``verify_code``, ``verify_message``, ``reason``, ``library`` and
    ``errno`` are copied from it, so code written for the original works.

    Attributes:
        host: the host whose certificate was checked.
        port: its port.
    """

    host: str
    port: int

    @classmethod
    def from_error(cls, error: ssl.SSLCertVerificationError, host: str, port: int) -> CertificateVerifyError:
        """The error for ``host:port``, with the message a library user needs."""
        if error.verify_code in _NAME_MISMATCH:
            advice = "connect with a name the certificate lists, or pass server_hostname= with that name"
        else:
            advice = (
                "if you trust the CA that signed it, pass "
                "ssl_context=ssl.create_default_context(cafile=...) with that CA's certificate"
            )
        reason = getattr(error, "reason", None) or "CERTIFICATE_VERIFY_FAILED"
        exc = cls(error.errno, f"{_describe(host, port, error.verify_message, reason)}; {advice}")
        exc.host, exc.port = host, port
        exc.reason, exc.library = reason, getattr(error, "library", None) or "SSL"
        exc.verify_code, exc.verify_message = error.verify_code, error.verify_message
        return exc

    @property
    def mismatch(self) -> bool:
        """The certificate was issued for another name than the one connected to."""
        return self.verify_code in _NAME_MISMATCH

    def describe(self) -> str:
        """What failed, without the advice: for callers (the CLI) that give their own."""
        return _describe(self.host, self.port, self.verify_message, self.reason)


def _describe(host: str, port: int, verify_message: str | None, reason: str) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    what = (verify_message or "certificate verify failed").rstrip(".")
    return f"can't verify the TLS certificate of {where}: {what} ({reason})"
