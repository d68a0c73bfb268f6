"""Send a few messages to an echo server and print the answers.

python examples/echo_client.py [URL]         (default ws://127.0.0.1:8765/)
"""

from __future__ import annotations

import sys

import blockws


def main() -> None:
    url = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:8765/"
    with blockws.connect(url, timeout=10) as ws:
        for message in ["hello", "wörld", b"\x00\x01\x02"]:
            ws.sendall(message)
            print(f"sent {message!r}, got back {ws.recv()!r}")
    print(f"closed with code {ws.close_code}")


if __name__ == "__main__":
    main()
