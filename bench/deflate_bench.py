"""permessage-deflate cost: 1 KiB JSON-like text messages, compressed vs not, blockws vs websockets.

    python bench/deflate_bench.py [--messages 20000]

Each library's client sends messages to its own echo server (in another
process) and reads the echoes, one at a time. Reported per configuration:
messages per second, the client's CPU time per message, and the bytes the
client sent on the wire per message (from the kernel's TCP counters).
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from typing import Any

SERVER = """
import sys, threading
lib, compression = sys.argv[1], sys.argv[2] if sys.argv[2] != "none" else None
if lib == "blockws":
    import blockws
    def echo(ws):
        for m in ws:
            ws.sendall(m)
    server = blockws.serve(echo, "127.0.0.1", 0, compression=compression)
    port = server.port
else:
    from websockets.sync.server import serve
    def echo(ws):
        for m in ws:
            ws.send(m)
    server = serve(echo, "127.0.0.1", 0, compression=compression)
    port = server.socket.getsockname()[1]
print(port, flush=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
sys.stdin.readline()
"""


def messages(count: int) -> list[str]:
    rng = random.Random(7)
    words = ["alpha", "beta", "gamma", "delta", "price", "volume", "update", "user", "status", "ok"]
    out = []
    for i in range(count):
        record = {"id": i, "type": rng.choice(words), "items": []}
        while len(json.dumps(record)) < 1024:
            record["items"].append({"name": rng.choice(words), "value": round(rng.random() * 1000, 2)})
        out.append(json.dumps(record)[:1024])
    return out


def _tcp_bytes_sent(sock: Any) -> int:
    import socket as socket_module

    # TCP_INFO's tcpi_bytes_sent (Linux >= 4.19) sits at offset 200 as a u64.
    info = sock.getsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_INFO, 256)
    return int.from_bytes(info[200:208], "little") if len(info) >= 208 else 0


def run_one(lib: str, compression: str | None, payloads: list[str]) -> dict[str, Any]:
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, lib, compression or "none"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert server.stdout is not None and server.stdin is not None
    url = f"ws://127.0.0.1:{server.stdout.readline().strip()}/"
    try:
        if lib == "blockws":
            import blockws

            opened: Any = blockws.connect(url, compression=compression)
        else:
            from websockets.sync.client import connect

            opened = connect(url, compression=compression)
        with opened as ws:
            sock = ws._sock if lib == "blockws" else ws.socket
            send, recv = ws.send, ws.recv
            for message in payloads[:200]:
                send(message)
                recv()
            sent0 = _tcp_bytes_sent(sock)
            cpu0, t0 = time.process_time(), time.perf_counter()
            for message in payloads:
                send(message)
                recv()
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            wire = (_tcp_bytes_sent(sock) - sent0) / len(payloads)
    finally:
        server.stdin.write("\n")
        server.stdin.flush()
        server.wait(10)
    return {
        "library": lib,
        "compression": compression or "none",
        "msgs_per_s": len(payloads) / elapsed,
        "cpu_us_per_msg": cpu / len(payloads) * 1e6,
        "wire_bytes_per_msg": wire,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()
    payloads = messages(args.messages)
    rows = [run_one(lib, c, payloads) for lib in ("blockws", "websockets") for c in ("deflate", None)]
    print(f"{args.messages} round trips of 1 KiB JSON-like text")
    print(f"{'library':<11} {'compression':<12} {'msgs/s':>9} {'client CPU us/msg':>18} {'bytes sent/msg':>15}")
    for r in rows:
        print(
            f"{r['library']:<11} {r['compression']:<12} {r['msgs_per_s']:>9.0f} "
            f"{r['cpu_us_per_msg']:>18.1f} {r['wire_bytes_per_msg']:>15.0f}"
        )
    by = {(r["library"], r["compression"]): r for r in rows}
    for c in ("deflate", "none"):
        ratio = by[("blockws", c)]["msgs_per_s"] / by[("websockets", c)]["msgs_per_s"]
        print(f"blockws / websockets, compression {c}: {ratio:.2f}x messages per second")


if __name__ == "__main__":
    main()
