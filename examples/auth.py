"""Authentication: Basic and Digest protected servers, and a client that asks again.

    python examples/auth.py

For each scheme the first password is wrong: the server answers 401 with a
(fresh) challenge, the client's callback is called again (attempt 2) and
gives the right one. Basic sends the password itself (base64, so use it
over wss:// only); Digest sends a hash bound to the server's nonce.
"""

from __future__ import annotations

import threading

import blockws

USERS = {"alice": "wonderland"}


def handler(ws: blockws.WebSocket) -> None:
    ws.sendall(f"hello {ws.username}")


def try_scheme(auth: blockws.BasicAuth | blockws.DigestAuth) -> None:
    with blockws.serve(handler, "127.0.0.1", 0, auth=auth) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"ws://127.0.0.1:{server.port}/"

        passwords = iter(["rabbit", "wonderland"])

        def ask(challenge: blockws.Challenge) -> tuple[str, str] | None:
            # A real program would prompt: getpass.getpass(f"password for {challenge.realm}: ")
            password = next(passwords, None)
            print(f"{challenge.scheme} challenge for realm {challenge.realm!r}, attempt {challenge.attempt}")
            return None if password is None else ("alice", password)

        with blockws.connect(url, auth=ask, timeout=5) as ws:
            sent = (ws.request.headers.get("Authorization") or "") if ws.request is not None else ""
            print(f"sent 'Authorization: {sent.split(' ')[0]} ...', server says: {ws.recv()!s}")
        try:
            blockws.connect(url, auth=("alice", "wrong"))
        except blockws.InvalidStatus as exc:
            print(f"with a wrong fixed password: HTTP {exc.status}")


def main() -> None:
    try_scheme(blockws.BasicAuth("example", USERS))
    try_scheme(blockws.DigestAuth("example", USERS))


if __name__ == "__main__":
    main()
