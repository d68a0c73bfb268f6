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
