"""1 MiB downloads on loopback: blockws ``recv()`` and ``recv_into()`` against raw TCP.

    python bench/recv_into.py                 # 7 rounds; per round, per client, the best of 3 runs of 32 MiB
    python bench/recv_into.py --rounds 3 --mib 16 --repeat 2

A server process (this script with ``--serve``, plain sockets) answers a
WebSocket handshake asking for N messages with N pre-built 1 MiB binary
frames (unmasked, as a server sends them) and a Close. Three clients take
turns, round after round, on fresh connections:

* ``raw``: the TCP ceiling: ``socket.recv_into`` of the whole stream into
  one preallocated buffer, no framing at all (the handshake is not timed);
* ``recv``: ``WebSocket.recv()``, a new ``bytes`` per message;
* ``recv_into``: ``WebSocket.recv_into()`` into one preallocated bytearray.

Each figure is MB/s (10⁶ bytes) from the first byte asked for to the last
message, the best of ``--repeat`` runs (the one least disturbed by other
work); the ratios to raw are taken within a round (the machine is shared
and noisy: neighbouring measurements move together) and reported as their
median and range over the rounds.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's blockws

import blockws  # noqa: E402

MIB = 1 << 20
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def frame(payload: bytes, opcode: int = 0x2) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, n))
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    return head + payload


def serve(listener: socket.socket) -> None:
    message = frame(os.urandom(MIB))
    close = frame(struct.pack("!H", 1000), 0x8)

    def handle(conn: socket.socket) -> None:
        with conn:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            lines = head.split(b"\r\n")
            count = int(lines[0].split()[1].strip(b"/"))
            key = next(ln.split(b":", 1)[1].strip() for ln in lines if ln.lower().startswith(b"sec-websocket-key"))
            accept = base64.b64encode(hashlib.sha1(key + GUID.encode()).digest())
            conn.sendall(
                b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
            )
            for _ in range(count):
                conn.sendall(message)
            conn.sendall(close)
            try:
                while conn.recv(65536):  # until the client's Close or EOF
                    pass
            except ConnectionResetError:
                pass  # the raw client leaves our Close unread

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


def handshake(port: int, count: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        f"GET /{count} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while not head.endswith(b"\r\n\r\n"):  # byte by byte: nothing of the stream read ahead
        head += sock.recv(1)
    return sock


def raw(port: int, count: int, buf: bytearray) -> tuple[float, float]:
    sock = handshake(port, count)
    total = count * (MIB + 10)
    view = memoryview(buf)
    got = 0
    start, cpu = time.perf_counter(), time.process_time()
    while got < total:
        n = sock.recv_into(view[: min(len(view), total - got)])
        if not n:
            raise ConnectionError("the server closed early")
        got += n
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    sock.close()
    return elapsed, cpu


def with_blockws(port: int, count: int, buf: bytearray, into: bool) -> tuple[float, float]:
    ws = blockws.connect(f"ws://127.0.0.1:{port}/{count}", compression=None, max_size=None, keepalive=None)
    start, cpu = time.perf_counter(), time.process_time()
    if into:
        recv_into = ws.recv_into
        for _ in range(count):
            if recv_into(buf) != MIB:
                raise RuntimeError("bad message")
    else:
        recv = ws.recv
        for _ in range(count):
            if len(recv()) != MIB:  # type: ignore[arg-type]
                raise RuntimeError("bad message")
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    ws.close()
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--mib", type=int, default=32, help="MiB downloaded per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per client per round (the best counts)")
    parser.add_argument("--pin", action="store_true", help="the server on one CPU, the clients on another")
    parser.add_argument("--serve", type=int, metavar="FD", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve is not None:
        serve(socket.socket(fileno=args.serve))
        return
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, __file__, "--serve", str(listener.fileno())], pass_fds=[listener.fileno()]
    )
    listener.close()
    if args.pin and hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2:
        first, second, *_ = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(server.pid, {first})
        os.sched_setaffinity(0, {second})
    try:
        buf = bytearray(2 * MIB)
        clients = {
            "raw": lambda: raw(port, args.mib, buf),
            "recv": lambda: with_blockws(port, args.mib, buf, False),
            "recv_into": lambda: with_blockws(port, args.mib, buf, True),
        }
        for run in clients.values():  # warm up
            run()
        rates: dict[str, list[float]] = {name: [] for name in clients}
        cpus: dict[str, list[float]] = {name: [] for name in clients}
        for _ in range(args.rounds):
            for name, run in clients.items():
                runs = [run() for _ in range(args.repeat)]
                rates[name].append(args.mib * MIB / min(wall for wall, _ in runs) / 1e6)
                cpus[name].append(min(cpu for _, cpu in runs) / (args.mib * MIB) * 1e9)  # ns per byte
    finally:
        server.kill()
        server.wait()
    print(
        f"blockws {blockws.__version__}, Python {sys.version.split()[0]}: {args.rounds} rounds, "
        f"best of {args.repeat} runs of {args.mib} MiB per client per round"
    )
    for name in clients:
        print(
            f"{name:>10}: {statistics.median(rates[name]):6.0f} MB/s (median; best {max(rates[name]):.0f}), "
            f"client CPU {statistics.median(cpus[name]):.3f} ns/byte (median)"
        )
    for name in ("recv", "recv_into"):
        speed = [a / b for a, b in zip(rates[name], rates["raw"])]
        cpu = [b / a for a, b in zip(cpus[name], cpus["raw"])]
        print(
            f"{name:>10} vs raw: speed {statistics.median(speed):.2f}× "
            f"(median; range {min(speed):.2f}–{max(speed):.2f}), "
            f"CPU raw/{name} {statistics.median(cpu):.2f}× (median; range {min(cpu):.2f}–{max(cpu):.2f})"
        )


if __name__ == "__main__":
    main()
