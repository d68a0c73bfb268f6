"""The messages of the exceptions: what a newcomer reads first."""

from __future__ import annotations

import pytest

from blockws import InvalidHandshake, InvalidStatus, Response


def message(status: int, body: bytes, content_type: str | None = None, reason: str | None = None) -> str:
    headers = {"Content-Type": content_type} if content_type is not None else {}
    return str(InvalidStatus(Response(status, reason, headers=headers, body=body)))


def test_the_first_line_of_a_short_text_body_is_shown():
    assert message(400, b"this server speaks TLS: use a wss:// URL\n") == (
        'server rejected WebSocket connection: HTTP 400 Bad Request: "this server speaks TLS: use a wss:// URL"'
    )
    assert message(403, b"\n\n  origin not allowed  \r\nsecond line\n", "text/plain; charset=utf-8").endswith(
        'HTTP 403 Forbidden: "origin not allowed"'
    )
    assert message(503, "trop de connexions, réessayez\n".encode(), "TEXT/PLAIN").endswith(
        '"trop de connexions, réessayez"'
    )


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"", None),
        (b"\n \n", None),
        (b"<!DOCTYPE html>\n<html><body>Bad Request</body></html>", "text/html"),
        (b"<html>Bad Request</html>", None),  # markup without a content type
        (b'{"error": "bad"}', "application/json"),
        (b"\x89PNG\r\n\x1a\n", "image/png"),
        (b"\xff\xfe not utf-8", None),
    ],
)
def test_bodies_that_say_nothing_readable_are_left_out(body: bytes, content_type: str | None):
    assert message(400, body, content_type) == "server rejected WebSocket connection: HTTP 400 Bad Request"


def test_a_server_cannot_inject_escapes_or_lines_into_the_message():
    text = message(400, "\x1b[2J\x1b]0;pwned\x07gone\x00 \u202eevil\tend\rFAKE LOG LINE\n".encode())
    assert text.endswith('HTTP 400 Bad Request: "[2J]0;pwnedgone evil end"')
    assert all(c.isprintable() for c in text)
    # The reason phrase comes from the server too.
    assert (
        message(400, b"", reason="Bad\x1b[31m Request")
        == "server rejected WebSocket connection: HTTP 400 Bad[31m Request"
    )


def test_a_long_first_line_is_cut():
    text = message(400, b"x" * 1000 + b"\nmore")
    assert text.endswith('"' + "x" * 200 + '..."')
    assert len(text) < 300
    # A two-byte character cut where the body is sliced doesn't make it "not text".
    assert message(400, ("x" + "é" * 500).encode()).endswith('"x' + "é" * 199 + '..."')


def test_an_explicit_message_is_kept_and_the_body_stays_available():
    exc = InvalidStatus(Response(401, body=b"who are you?\n"), "authentication failed: no credentials")
    assert str(exc) == "authentication failed: no credentials"
    assert exc.body == b"who are you?\n" and exc.status == 401


def test_handshake_failure_and_head_cut_are_in_the_tree_and_where_they_were():
    from blockws import exceptions, handshake, utils

    assert handshake.HandshakeFailure is exceptions.HandshakeFailure
    assert utils.HeadCut is exceptions.HeadCut
    assert issubclass(exceptions.HandshakeFailure, InvalidHandshake)
    assert issubclass(exceptions.HeadCut, InvalidHandshake)
    refused = exceptions.HandshakeFailure("method POST is not GET", 405, {"Allow": "GET"})
    answer = refused.response()
    assert (answer.status, answer.headers["Allow"], answer.body) == (405, "GET", b"method POST is not GET\n")


# -- pickling: exceptions cross process boundaries (multiprocessing, worker pools) --


def _examples() -> list[BaseException]:
    """One of each exception blockws exports, made with representative arguments."""
    import ssl

    from blockws import exceptions, workers

    original = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    original.verify_code, original.verify_message = 62, "Hostname mismatch, certificate is not valid for 'h'."
    original.reason, original.library = "CERTIFICATE_VERIFY_FAILED", "SSL"
    proxy_error = exceptions.ProxyError("the proxy answered 502")
    proxy_error.response = Response(502, body=b"no upstream")  # type: ignore[attr-defined]
    return [
        exceptions.WebSocketError("something failed"),
        exceptions.InvalidURI("ftp://x/ isn't a WebSocket URL"),
        exceptions.BadPortError("port 25 is banned"),
        exceptions.InvalidHandshake("missing Upgrade"),
        InvalidStatus(Response(503, headers={"Retry-After": "5"}, body=b"busy\n")),
        InvalidStatus(Response(401), "authentication failed: no credentials"),
        exceptions.HandshakeFailure("method POST is not GET", 405, {"Allow": "GET"}),
        exceptions.HeadCut("the server closed the connection in the head"),
        exceptions.TooManyRedirects("more than 5 redirects"),
        proxy_error,
        exceptions.ProtocolError("invalid UTF-8", exceptions.CloseCode.INVALID_DATA),
        exceptions.PayloadTooBig("message over max_size=1048576"),
        exceptions.BufferTooSmall(2000, 1024, False),
        exceptions.ConnectionClosed(1001, "going away"),
        exceptions.ConnectionClosedOK(1000, ""),
        exceptions.ConnectionClosedError(exceptions.CloseCode.ABNORMAL_CLOSURE, "lost", "connection lost: reset"),
        exceptions.CertificateVerifyError.from_error(original, "h", 443),
        workers.LoadError("'app' is not MODULE:HANDLER"),
    ]


def _exported_exception_classes() -> set[type[BaseException]]:
    """Every exception class in the ``__all__`` of blockws and of its public modules."""
    import importlib
    import pkgutil

    import blockws

    modules = [blockws] + [
        importlib.import_module(f"blockws.{info.name}")
        for info in pkgutil.iter_modules(blockws.__path__)
        if not info.name.startswith("_")
    ]
    return {
        obj
        for module in modules
        for name in getattr(module, "__all__", [])
        if isinstance(obj := getattr(module, name), type) and issubclass(obj, BaseException)
    }


def _state(value: object) -> object:
    """What to compare: the attributes of objects (a Response has no ``__eq__``), recursively."""
    if isinstance(value, dict):
        return {k: _state(v) for k, v in value.items()}
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return (type(value), _state(vars(value)))
    return value


def test_every_exported_exception_has_a_pickling_example():
    assert _exported_exception_classes() <= {type(exc) for exc in _examples()}


@pytest.mark.parametrize("exc", _examples(), ids=lambda exc: type(exc).__name__)
def test_every_exception_pickles_with_its_message_and_attributes(exc: BaseException):
    import pickle

    for protocol in range(2, pickle.HIGHEST_PROTOCOL + 1):
        copy = pickle.loads(pickle.dumps(exc, protocol))
        assert type(copy) is type(exc)
        assert str(copy) == str(exc) and copy.args == exc.args
        assert _state(vars(copy)) == _state(vars(exc))
        if isinstance(exc, OSError):
            assert (copy.errno, copy.strerror) == (exc.errno, exc.strerror)


def _raise(exc: BaseException) -> None:
    raise exc


@pytest.mark.slow
def test_exceptions_cross_a_process_pool():
    import concurrent.futures
    import multiprocessing

    from blockws import BufferTooSmall, ConnectionClosedError

    sent = [BufferTooSmall(2000, 1024, True), ConnectionClosedError(1011, "keepalive timeout")]
    # spawn: a fresh interpreter unpickles what it is sent and pickles what it raises
    # (fork would warn in a process with threads).
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_raise, exc) for exc in sent]
        received = [future.exception(timeout=60) for future in futures]
    for got, exc in zip(received, sent):
        assert type(got) is type(exc) and str(got) == str(exc) and vars(got) == vars(exc)
