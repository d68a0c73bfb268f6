"""Python's own web server, plus a WebSocket: files from a directory, an echo at /ws.

    python examples/http_server.py [PORT] [--directory DIR]   (default 8000 and the current directory)

The smallest "add a WebSocket to my server": a page in DIR can do
``new WebSocket("ws://" + location.host + "/ws")`` on the port it came from.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import os

import blockws


class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path != "/ws":
            return super().do_GET()  # a file, as usual
        try:
            ws = blockws.accept_http(self)  # the 101, then the socket is ours
        except blockws.InvalidHandshake:
            return  # not a WebSocket request: it was answered (426)
        # This runs in the request's thread (ThreadingHTTPServer): one per connection.
        with ws:
            for message in ws:  # until the client closes
                ws.sendall(message)


def main() -> None:
    parser = argparse.ArgumentParser(description="files and a WebSocket echo on one port")
    parser.add_argument("port", nargs="?", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--directory", default=os.getcwd(), help="the files to serve")
    args = parser.parse_args()
    handler = functools.partial(Handler, directory=args.directory)
    with http.server.ThreadingHTTPServer(("127.0.0.1", args.port), handler) as server:
        print(f"http server on http://127.0.0.1:{server.server_port}/", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
