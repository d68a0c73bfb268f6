"""Coverage-guided fuzzing of the auth header parsers, client and server.

    python fuzzing/fuzz_auth.py -max_total_time=600 [corpus_dir]

Arbitrary WWW-Authenticate values are parsed or skipped; answering them
never raises but ValueError for unusable parameters; arbitrary
Authorization headers are refused by the servers (unless they are right),
never an exception. Besides the raw text, the input is also wrapped in the
shapes a parser would otherwise rarely reach by mutation: the base64
credentials of a Basic header, and the nonce of a well-formed Digest header.
"""

from __future__ import annotations

import base64
import sys

import atheris

with atheris.instrument_imports():
    from blockws.auth import BasicAuth, ClientAuth, DigestAuth, parse_challenges
    from blockws.http import Request, Response

USERS = {"user": "password"}
SERVERS = (BasicAuth("r", USERS), DigestAuth("r", USERS))


def test_one_input(data: bytes) -> None:
    text = data.decode("latin-1").replace("\r", "").replace("\n", "")
    parse_challenges([text])
    try:
        ClientAuth(("user", "password")).authorize(Response(401, headers={"WWW-Authenticate": text}), "GET", "/")
    except ValueError:
        pass  # e.g. a parameter with a line break can't be echoed back
    token = base64.b64encode(data).decode()
    headers = (
        text,
        f"Basic {token}",
        f'Digest username="user", realm="r", nonce="{token}", uri="/", response="{"0" * 32}", '
        'qop=auth, nc=00000001, cnonce="c"',
    )
    for header in headers:
        for server in SERVERS:
            assert server.check(Request("GET", "/", {"Authorization": header})) in (None, "user")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
