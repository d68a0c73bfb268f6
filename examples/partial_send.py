"""Partial send() under backpressure, like a non-blocking TCP socket.

    python examples/partial_send.py

The server reads slowly; the client's kernel send buffer is tiny (SO_SNDBUF
4096). In non-blocking mode send() accepts what fits and returns how much;
when nothing fits it raises BlockingIOError. The loop keeps data = data[n:]
and waits with select() until the socket can take more. Nothing accepted is
ever lost: the server checks it got every byte, in order.
"""

from __future__ import annotations

import os
import select
import socket
import threading
import time

import blockws

received: list[bytes] = []


def slow_reader(ws: blockws.WebSocket) -> None:
    # Read the message piece by piece, pausing after each: a slow consumer.
    pieces = []
    for piece in ws.recv_fragments():
        assert isinstance(piece, bytes)
        pieces.append(piece)
        time.sleep(0.005)
    received.append(b"".join(pieces))
    ws.recv()  # until the client closes


def main() -> None:
    with blockws.serve(slow_reader, "127.0.0.1", 0, max_size=None) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        ws = blockws.connect(f"ws://127.0.0.1:{server.port}/", sock=sock, compression=None)
        ws.setblocking(False)
        data = os.urandom(1_000_000)
        view = memoryview(data)
        calls = would_block = 0
        while view:
            try:
                n = ws.send(view)  # a prefix of the message; the rest continues it
            except BlockingIOError:
                would_block += 1
                select.select([], [ws], [], 1)  # wait until the socket drains
                continue
            calls += 1
            if calls <= 5:
                print(f"send() accepted {n} of {len(view)} bytes")
            view = view[n:]
        print(f"{calls} partial sends, {would_block} times BlockingIOError")
        ws.setblocking(True)
        ws.close()  # flushes what is still buffered, then the closing handshake
        while not received:
            time.sleep(0.01)
        print("the server received every byte, in order:", received == [data])


if __name__ == "__main__":
    main()
