"""Server redirects, followed by the client.

    python examples/redirect.py

The first server sends every client to the second with a 307; the client
follows (at most max_redirects times) and ws.url tells where it ended.
"""

from __future__ import annotations

import threading

import blockws


def greet(ws: blockws.WebSocket) -> None:
    ws.sendall(f"you reached {ws.request.path if ws.request else '?'}")


def main() -> None:
    with blockws.serve(greet, "127.0.0.1", 0) as new:
        threading.Thread(target=new.serve_forever, daemon=True).start()

        def moved(request: blockws.Request) -> blockws.Response:
            return blockws.Response.redirect(f"ws://127.0.0.1:{new.port}/new-home", 307)

        with blockws.serve(greet, "127.0.0.1", 0, process_request=moved) as old:
            threading.Thread(target=old.serve_forever, daemon=True).start()
            with blockws.connect(f"ws://127.0.0.1:{old.port}/old-home", timeout=5) as ws:
                print(f"connected to {ws.url}")
                print(f"server says: {ws.recv()}")
            try:
                blockws.connect(f"ws://127.0.0.1:{old.port}/", max_redirects=0)
            except blockws.TooManyRedirects as exc:
                print(f"with max_redirects=0: {exc}")


if __name__ == "__main__":
    main()
