"""An echo server for the Autobahn|Testsuite fuzzing client: python compliance/server.py [PORT]."""

from __future__ import annotations

import sys

import blockws


def echo(ws: blockws.WebSocket) -> None:
    try:
        for message in ws:
            ws.sendall(message)
    except blockws.ConnectionClosed:
        pass


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9001
    with blockws.serve(echo, "127.0.0.1", port, max_size=None, max_fragments=None, close_timeout=2) as server:
        print(f"listening on ws://127.0.0.1:{server.port}", flush=True)
        server.serve_forever()


if __name__ == "__main__":
    main()
