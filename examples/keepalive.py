"""KeepAlive: one thread keeps many connections alive and measures latency.

    python examples/keepalive.py

Every connection is kept alive by default, by one thread for the whole
process (KeepAlive.shared(): pings every 20 s, answers the peer's pings).
Here the server side uses that default, and five idle client connections
share a KeepAlive of their own that pings each one quiet for `interval`
seconds; ws.latency is the last round trip. A peer that stops answering
would be failed with 1011 after `timeout` more seconds.
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
        conns = [blockws.connect(f"ws://127.0.0.1:{server.port}/", keepalive=ka) for _ in range(5)]
        time.sleep(0.6)
        threads = [t for t in threading.enumerate() if t.name == "blockws keepalive"]
        print(f"keepalive threads for 10 connection ends: {len(threads)} (the shared one and ka's)")
        for i, ws in enumerate(conns):
            print(f"connection {i}: last ping round trip {ws.latency * 1000:.2f} ms" if ws.latency else "no pong yet")
        for ws in conns:
            ws.close()
        ka.close()


if __name__ == "__main__":
    main()
