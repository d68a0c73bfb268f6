"""Half-close: shutdown(SHUT_WR) says "I'm done sending", then read until None.

    python examples/half_close.py

Like TCP's FIN: the server reads until recv() returns None, then answers;
the client keeps receiving after its own shutdown until the server's Close.
"""

from __future__ import annotations

import socket
import threading

import blockws


def summer(ws: blockws.WebSocket) -> None:
    numbers = []
    while (message := ws.recv()) is not None:  # None: the client has finished
        numbers.append(int(message))
    ws.sendall(f"got {len(numbers)} numbers")
    ws.sendall(f"their sum is {sum(numbers)}")
    # Returning closes our half too.


def main() -> None:
    with blockws.serve(summer, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        ws = blockws.connect(f"ws://127.0.0.1:{server.port}/", timeout=5)
        for n in range(1, 11):
            ws.sendall(str(n))
        ws.shutdown(socket.SHUT_WR)
        print(f"after shutdown(SHUT_WR): state {ws.state.name}")
        while (message := ws.recv()) is not None:
            print(f"server: {message}")
        print(f"recv() returned None: the server closed with {ws.close_code}")
        ws.close()


if __name__ == "__main__":
    main()
