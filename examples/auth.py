"""Challenge-response authentication: a Digest-protected server and a client that asks again.

    python examples/auth.py

The first password is wrong: the server answers 401 with a fresh challenge,
the client's callback is called again (attempt 2) and gives the right one.
"""

from __future__ import annotations

import threading

import blockws


def handler(ws: blockws.WebSocket) -> None:
    ws.sendall(f"hello {ws.username}")


def main() -> None:
    auth = blockws.DigestAuth("example", {"alice": "wonderland"})
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
            print(f"server says: {ws.recv()}")
        try:
            blockws.connect(url, auth=("alice", "wrong"))
        except blockws.InvalidStatus as exc:
            print(f"with a wrong fixed password: HTTP {exc.status}")


if __name__ == "__main__":
    main()
