"""One thread, several connections: a select() loop with fileno() and pending().

    python examples/select_loop.py

select() only sees bytes still in the kernel. A WebSocket may already hold
a whole message it read earlier: pending() says so, so check it first.
"""

from __future__ import annotations

import select
import threading

import blockws


def echo(ws: blockws.WebSocket) -> None:
    for message in ws:
        ws.sendall(f"echo: {message}")


def main() -> None:
    with blockws.serve(echo, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        conns = [blockws.connect(f"ws://127.0.0.1:{server.port}/", timeout=5) for _ in range(3)]
        for i, ws in enumerate(conns):
            ws.sendall(f"first from {i}")
            ws.sendall(f"second from {i}")
            ws.setblocking(False)  # recv() will raise BlockingIOError instead of waiting
        expected = 2 * len(conns)
        while expected:
            ready = [ws for ws in conns if ws.pending()] or select.select(conns, [], [], 5)[0]
            for ws in ready:
                try:
                    print(ws.recv())
                    expected -= 1
                except BlockingIOError:
                    pass  # part of a message so far: select() again
        for ws in conns:
            ws.setblocking(True)
            ws.close()


if __name__ == "__main__":
    main()
