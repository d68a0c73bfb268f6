"""An echo server: every message comes back unchanged.

python examples/echo_server.py [PORT]        (default 8765; 0 picks a free port)
"""

from __future__ import annotations

import sys

import blockws


def echo(ws: blockws.WebSocket) -> None:
    # Each connection runs in a thread of its own; recv() returns None at the end.
    for message in ws:
        ws.sendall(message)


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
    with blockws.serve(echo, "127.0.0.1", port) as server:
        print(f"echo server on ws://127.0.0.1:{server.port}/", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
