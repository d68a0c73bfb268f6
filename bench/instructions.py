"""Instructions per echo and per handshake, counted by callgrind: the figure that doesn't move with the machine's load.

    python bench/instructions.py                 # blockws and raw, echo and handshake
    python bench/instructions.py --only echo --servers blockws

Each server (bench/server_worker.py KIND) runs under ``valgrind
--tool=callgrind`` twice, for a small and a large number of operations,
driven from this process over loopback; the difference between the two
totals, divided by the difference in operations, is the cost of one
operation in the server's process (all its threads), start-up and exit
cancelled out. Unlike a rate, the count is the same on a quiet and on a
busy machine (the same binary, inputs and environment).

* echo: one connection sends a 32-byte message and waits for its echo
  (a masked binary frame for a WebSocket server, 32 bytes for raw TCP).
* handshake: a connection opens (the HTTP upgrade), closes (Close and
  its answer; the server closes TCP) and the next one follows; for raw
  TCP a connection, one byte each way, and a close.

Needs valgrind on the PATH (Debian: ``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
HOST = "127.0.0.1"
PAYLOAD = b"0123456789abcdef" * 2  # 32 bytes
KEY = b"\x01\x02\x03\x04"
# A masked binary frame of PAYLOAD, as a client sends it, and the echo as a server sends it.
MASKED = bytes([0x82, 0x80 | len(PAYLOAD)]) + KEY + bytes(b ^ KEY[i % 4] for i, b in enumerate(PAYLOAD))
ECHO = bytes([0x82, len(PAYLOAD)]) + PAYLOAD
CLOSE = bytes([0x88, 0x82]) + KEY + bytes(b ^ KEY[i % 4] for i, b in enumerate(struct.pack("!H", 1000)))
COUNTS = {"echo": (2_000, 10_000), "handshake": (100, 500)}


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def _upgrade(sock: socket.socket) -> None:
    key = base64.b64encode(os.urandom(16))
    sock.sendall(
        b"GET / HTTP/1.1\r\nHost: " + HOST.encode() + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake refused: {head.splitlines()[0]!r}")


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def echo(port: int, websocket: bool, count: int) -> None:
    sock = _connect(port)
    if websocket:
        _upgrade(sock)
    out, back = (MASKED, ECHO) if websocket else (PAYLOAD, PAYLOAD)
    for _ in range(count):
        sock.sendall(out)
        if _recv_exactly(sock, len(back)) != back:
            raise AssertionError("wrong echo")
    if websocket:
        _close(sock)
    sock.close()


def _close(sock: socket.socket) -> None:
    sock.sendall(CLOSE)
    while sock.recv(4096):  # the server's Close, then its FIN
        pass


def handshake(port: int, websocket: bool, count: int) -> None:
    for _ in range(count):
        sock = _connect(port)
        if websocket:
            _upgrade(sock)
            _close(sock)
        else:
            sock.sendall(b"x")
            _recv_exactly(sock, 1)
        sock.close()


DRIVERS: dict[str, Callable[[int, bool, int], None]] = {"echo": echo, "handshake": handshake}


def instructions(kind: str, drive: Callable[[int], None], workdir: Path) -> int:
    """Total instructions of one server process (all threads) while ``drive(port)`` runs."""
    out = workdir / f"callgrind.{kind}.{os.getpid()}.{len(list(workdir.iterdir()))}"
    proc = subprocess.Popen(
        [
            "valgrind",
            "--tool=callgrind",
            "--trace-children=no",
            f"--callgrind-out-file={out}",
            sys.executable,
            str(BENCH_DIR / "server_worker.py"),
            kind,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        cwd=BENCH_DIR,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {kind} server didn't start under valgrind")
        drive(json.loads(line)["port"])
        proc.stdin.close()  # server_worker.py exits; callgrind writes its totals
        proc.wait(300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = out.read_text()
    match = re.search(r"^(?:totals|summary):\s+(\d+)", text, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no totals in {out}")
    return int(match.group(1))


def per_operation(kind: str, operation: str, workdir: Path) -> float:
    small, large = COUNTS[operation]
    driver = DRIVERS[operation]
    websocket = kind != "raw"
    low = instructions(kind, lambda port: driver(port, websocket, small), workdir)
    high = instructions(kind, lambda port: driver(port, websocket, large), workdir)
    return (high - low) / (large - small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(DRIVERS), action="append", help="one operation (repeatable)")
    parser.add_argument("--servers", nargs="+", default=["blockws", "raw"], help="server_worker.py kinds")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        sys.exit("valgrind is not on the PATH (Debian: apt-get install valgrind)")
    operations = args.only or ["echo", "handshake"]
    sys.path.insert(0, str(BENCH_DIR.parent))
    import blockws
    from blockws import _accel

    print(f"Python {sys.version.split()[0]}, blockws {blockws.__version__}, C accelerator: {_accel.mask is not None}")
    with tempfile.TemporaryDirectory(prefix="blockws-callgrind-") as tmp:
        results: dict[str, dict[str, float]] = {}
        for operation in operations:
            for kind in args.servers:
                results.setdefault(operation, {})[kind] = per_operation(kind, operation, Path(tmp))
        for operation, by_kind in results.items():
            print(f"\ninstructions per {operation} (server process, all threads)")
            raw = by_kind.get("raw")
            for kind, count in by_kind.items():
                ratio = f"  {count / raw:5.2f}x raw" if raw and kind != "raw" else ""
                print(f"  {kind:<20} {count:>12,.0f}{ratio}")


if __name__ == "__main__":
    main()
