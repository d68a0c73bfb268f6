"""Coverage-guided fuzzing of the HTTP parser and the handshake checks.

    python fuzzing/fuzz_http.py -max_total_time=600 [corpus_dir]

Arbitrary heads may only raise InvalidHandshake (HandshakeFailure included),
and the head splitter that uses the C accelerator (its split_head) must give
exactly what the pure-Python one gives: the same headers or the same error.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import atheris

with atheris.instrument_imports():
    from blockws import http
    from blockws.exceptions import InvalidHandshake
    from blockws.handshake import check_request, check_response, parse_extensions
    from blockws.http import Headers, find_head_end, parse_request, parse_response


def _split(split: Callable[[bytes, int, int], tuple[str, Headers]], head: bytes, limits: tuple[int, int]) -> object:
    try:
        start, headers = split(head, *limits)
    except InvalidHandshake as exc:
        return str(exc)
    return start, headers.items(), list(headers._index.items())


def test_one_input(data: bytes) -> None:
    for limits in ((http.MAX_LINE, http.MAX_HEADERS), (40, 4)):
        fast = _split(http._split_head, data, limits)
        assert fast == _split(http._split_head_python, data, limits), (data, limits)
    try:
        end = find_head_end(data)
    except InvalidHandshake:
        return
    head = data if end is None else data[:end]
    try:
        request = parse_request(head)
        check_request(request)
        parse_extensions(request.headers.get_all("Sec-WebSocket-Extensions"))
    except InvalidHandshake:
        pass
    try:
        response = parse_response(head)
        check_response(response, "dGhlIHNhbXBsZSBub25jZQ==", ["chat"])
    except InvalidHandshake:
        pass


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
