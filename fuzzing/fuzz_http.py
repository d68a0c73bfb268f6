"""Coverage-guided fuzzing of the HTTP parser and the handshake checks.

    python fuzzing/fuzz_http.py -max_total_time=600 [corpus_dir]

Arbitrary heads may only raise InvalidHandshake (HandshakeFailure included).
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from blockws.exceptions import InvalidHandshake
    from blockws.handshake import check_request, check_response, parse_extensions
    from blockws.http import find_head_end, parse_request, parse_response


def test_one_input(data: bytes) -> None:
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
