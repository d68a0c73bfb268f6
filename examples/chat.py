"""A threaded chat server: every message goes to every other client.

    python examples/chat.py            (a server and three clients, in one process)

Each connection has its own thread (that's what serve() does); the set of
clients is shared, so it is guarded by a lock. broadcast() sends each
message to the others without ever waiting on one of them.
"""

from __future__ import annotations

import threading

import blockws

clients: set[blockws.WebSocket] = set()
lock = threading.Lock()


def chat(ws: blockws.WebSocket) -> None:
    with lock:
        clients.add(ws)
    try:
        for message in ws:
            with lock:
                others = [c for c in clients if c is not ws]
            # broadcast() never waits on a slow reader: a client that can't
            # take the whole message now is handed back, and misses it.
            for slow in blockws.broadcast(others, message):
                print(f"{slow.remote_address} is too slow: it misses {message!r}")
    finally:
        with lock:
            clients.discard(ws)


def main() -> None:
    with blockws.serve(chat, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"ws://127.0.0.1:{server.port}/"
        alice, bob, carol = (blockws.connect(url, timeout=5) for _ in range(3))
        while len(clients) < 3:  # wait until the server registered all three
            threading.Event().wait(0.01)
        alice.sendall("hi, it's alice")
        print(f"bob got: {bob.recv()!r}; carol got: {carol.recv()!r}")
        for ws in (alice, bob, carol):
            ws.close()


if __name__ == "__main__":
    main()
