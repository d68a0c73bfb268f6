"""The Autobahn|Testsuite client driver: python compliance/client.py [URL]."""

from __future__ import annotations

import json
import sys

import blockws

AGENT = "blockws"


def main() -> None:
    server = sys.argv[1] if len(sys.argv) > 1 else "ws://127.0.0.1:9002"
    with blockws.connect(f"{server}/getCaseCount") as ws:
        count = json.loads(ws.recv() or "0")
    for case in range(1, count + 1):
        try:
            with blockws.connect(
                f"{server}/runCase?case={case}&agent={AGENT}", max_size=None, max_fragments=None, close_timeout=2
            ) as ws:
                for message in ws:
                    ws.sendall(message)
        except blockws.ConnectionClosedError:
            pass  # the cases that break the protocol on purpose end here
        except blockws.WebSocketError as exc:
            print(f"case {case}: {type(exc).__name__}: {exc}", file=sys.stderr)
    with blockws.connect(f"{server}/updateReports?agent={AGENT}") as ws:
        pass


if __name__ == "__main__":
    main()
