"""``python -m blockws``: a demo, an echo server and a minimal client."""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence

from . import connect, serve
from .connection import WebSocket
from .exceptions import WebSocketError


def _echo(ws: WebSocket) -> None:
    for message in ws:
        ws.sendall(message)


def demo() -> int:
    """A server and a client in one process, saying what happens."""

    def handler(ws: WebSocket) -> None:
        print(f"server: connection from {ws.remote_address[0]}:{ws.remote_address[1]}")
        for message in ws:
            print(f"server: received {message!r}, echoing it")
            ws.sendall(message)
        print(f"server: client closed with code {ws.close_code}")

    with serve(handler, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        url = f"ws://127.0.0.1:{server.port}/demo"
        print(f"client: connecting to {url}")
        with connect(url, timeout=5) as ws:
            print("client: connected")
            messages: list[str | bytes] = ["hello", "WebSockets carry messages", b"\x00\x01binary\xff"]
            for message in messages:
                n = ws.send(message)
                print(f"client: send({message!r}) accepted {n} of {len(message)}")
                print(f"client: recv() -> {ws.recv()!r}")
            print("client: closing (code 1000)")
        print(f"client: closed, close_code={ws.close_code}")
    return 0


def client(url: str) -> int:
    """Send each line of stdin as a text message; print what comes back."""
    with connect(url) as ws:

        def reader() -> None:
            for message in ws:
                print(f"< {message!r}" if isinstance(message, bytes) else f"< {message}", flush=True)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        for line in sys.stdin:
            ws.sendall(line.rstrip("\n"))
        ws.shutdown(__import__("socket").SHUT_WR)
        thread.join(ws.close_timeout)
    return 0 if ws.close_code in (1000, 1001, None) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m blockws", description="blockws WebSocket command line")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("demo", help="run a server and a client in one process")
    srv = sub.add_parser("serve", help="run an echo server")
    srv.add_argument("--host", default="127.0.0.1")
    srv.add_argument("--port", type=int, default=8765)
    cli = sub.add_parser("connect", help="send stdin lines to URL, print what comes back")
    cli.add_argument("url")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            return demo()
        if args.command == "serve":
            with serve(_echo, args.host, args.port) as server:
                print(f"echo server on ws://{args.host}:{server.port}/", flush=True)
                try:
                    server.serve_forever()
                except KeyboardInterrupt:
                    pass
            return 0
        if args.command == "connect":
            return client(args.url)
    except (WebSocketError, OSError) as exc:
        print(f"blockws: {exc}", file=sys.stderr)
        return 1
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
