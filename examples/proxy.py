"""Through an HTTP CONNECT proxy that wants a password (407).

    python examples/proxy.py [PROXY_URL]

Without an argument a tiny CONNECT proxy runs in this process (user "me",
password "pw"); with one, e.g. http://user:pw@proxy:3128 or
socks5h://proxy:1080 (pip install "blockws[socks]"), that proxy is used.
"""

from __future__ import annotations

import base64
import socket
import sys
import threading

import blockws


def echo(ws: blockws.WebSocket) -> None:
    for message in ws:
        ws.sendall(message)


def tiny_connect_proxy(listener: socket.socket) -> None:
    """Just enough of a proxy for the example: CONNECT, Basic auth, then relay."""
    expected = "Basic " + base64.b64encode(b"me:pw").decode()
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        head = b""
        while b"\r\n\r\n" not in head:
            head += client.recv(4096)
        lines = head.decode().split("\r\n")
        host, port = lines[0].split()[1].rsplit(":", 1)
        if f"Proxy-Authorization: {expected}" not in lines:
            client.sendall(b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="proxy"\r\n'
                           b"Content-Length: 0\r\nConnection: close\r\n\r\n")  # fmt: skip
            client.close()
            continue
        upstream = socket.create_connection((host, int(port)))
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=relay, args=(a, b), daemon=True).start()


def relay(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def main() -> None:
    with blockws.serve(echo, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        if len(sys.argv) > 1:
            proxy, proxy_auth = sys.argv[1], None
        else:
            listener = socket.create_server(("127.0.0.1", 0))
            threading.Thread(target=tiny_connect_proxy, args=(listener,), daemon=True).start()
            proxy = f"http://127.0.0.1:{listener.getsockname()[1]}"

            def proxy_auth(challenge: blockws.Challenge) -> tuple[str, str]:
                print(f"the proxy asks for a password (realm {challenge.realm!r})")
                return ("me", "pw")

        with blockws.connect(f"ws://127.0.0.1:{server.port}/", proxy=proxy, proxy_auth=proxy_auth, timeout=5) as ws:
            ws.sendall("hello through the proxy")
            print(f"echo: {ws.recv()}")
            print(f"we talk to {ws.remote_address}, the proxy; the server is on port {server.port}")


if __name__ == "__main__":
    main()
