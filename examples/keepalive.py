"""KeepAlive: one thread keeps many connections alive and measures latency.

    python examples/keepalive.py

Five idle connections share one KeepAlive thread: it pings each one that has
been quiet for `interval` seconds; ws.latency is the last round trip. A peer
that stops answering would be failed with 1011 after `timeout` more seconds.
"""

from __future__ import annotations

import threading
import time

import blockws


def idle(ws: blockws.WebSocket) -> None:
    for _ in ws:
        pass


def main() -> None:
    with blockws.serve(idle, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ka = blockws.KeepAlive(interval=0.2, timeout=1.0)
        before = threading.active_count()
        conns = [blockws.connect(f"ws://127.0.0.1:{server.port}/", keepalive=ka) for _ in range(5)]
        time.sleep(0.6)
        print(f"threads added on the client side by the keepalive: {threading.active_count() - before - 5}")
        for i, ws in enumerate(conns):
            print(f"connection {i}: last ping round trip {ws.latency * 1000:.2f} ms" if ws.latency else "no pong yet")
        for ws in conns:
            ws.close()
        ka.close()


if __name__ == "__main__":
    main()
