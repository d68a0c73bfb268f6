"""Memory per idle connection: a blockws server against a bare threaded TCP server.

    python bench/memory_per_connection.py [--connections 1000,10000] [--breakdown 1000] [--json]

A short check that it runs: ``--connections 50 --breakdown 50``.

Each server runs in a process of its own; this process holds N client
sockets to it (plain sockets speaking just enough WebSocket: the
handshake, then one masked 1 KiB JSON-like text message, compressed when
permessage-deflate was negotiated), so the clients cost the server nothing
but their connections. We report the server's RSS growth per connection
(``VmRSS`` after N connections minus before, after a warm-up of 20
connections), twice: just opened, and after one message each way (the
server echoes it), which touches the buffers and the deflate contexts an
active connection keeps. ``--message-kib 32``: a 32 KiB message instead of
1 KiB, which fills more of the deflate windows. The servers:

* ``tcp``: ``socketserver.ThreadingTCPServer``, a thread per connection
  blocked in one ``recv()``, echoing: the floor of the thread-per-connection
  design, which the blockws rows are compared against;
* ``blockws``: ``blockws.serve(echo, compression=None)``;
* ``deflate``: ``blockws.serve(echo)``, permessage-deflate negotiated
  with the defaults (window bits 15 both ways, context takeover);
* ``lean``: ``compression=PerMessageDeflate(server_max_window_bits=11,
  client_max_window_bits=11)``.

Every server keeps the default keepalive (``KeepAlive.shared()``, pings
after 20 s of silence: none during the measurement).

``--breakdown N``: the same N connections under ``tracemalloc`` in the
``deflate`` server, after one message each way; the Python allocations
(zlib's included: Python's zlib module allocates through it) grouped by
where they were made, per connection. ``tracemalloc`` counts bytes
allocated, not pages touched: zlib allocates its whole deflate state up
front but touches only part of it, so these figures can exceed the RSS
ones. Thread stacks are counted apart, from ``/proc/PID/smaps``: the RSS of
the anonymous mappings the size of a thread stack (a stack is virtual
memory, ``threading.stack_size()`` or ``ulimit -s``; only the pages a
thread touched count).

Each process needs a descriptor per connection: the soft ``RLIMIT_NOFILE``
is raised as far as the hard limit allows, and a note says when that is not
enough for the counts asked.
"""

from __future__ import annotations

import argparse
import base64
import json
import linecache
import os
import re
import resource
import socket
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from deflate_bench import messages  # noqa: E402
from keepalive_scale import raise_fd_limit  # noqa: E402

SERVERS = ("tcp", "blockws", "deflate", "lean")
WARM_UP = 20
MESSAGE = messages(1)[0].encode()  # --message-kib changes it
OFFER = "permessage-deflate; client_max_window_bits"
# What zlib allocates, by the call in deflate.py that makes it allocate.
ZLIB_CALLS = (
    ("zlib.compressobj(", "zlib deflate state"),
    ("zlib.decompressobj(", "zlib inflate state"),
    (".decompress(", "zlib inflate window"),
)


# -- the servers, each in a child process: port on stdout, stop when stdin closes ---


def _child_server(kind: str, trace: bool) -> None:
    if trace:
        import tracemalloc

        tracemalloc.start(1)
    if kind == "tcp":
        import socketserver
        import threading

        class Echo(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                while data := self.request.recv(65536):
                    self.request.sendall(data)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 2048

        tcp = Server(("127.0.0.1", 0), Echo)
        threading.Thread(target=tcp.serve_forever, daemon=True).start()
        port = tcp.server_address[1]
    else:
        import threading

        import blockws

        def echo(ws: blockws.WebSocket) -> None:
            for message in ws:
                ws.sendall(message)

        compression: Any = {
            "blockws": None,
            "deflate": "deflate",
            "lean": blockws.PerMessageDeflate(server_max_window_bits=11, client_max_window_bits=11),
        }[kind]
        server = blockws.serve(echo, "127.0.0.1", 0, compression=compression, backlog=2048)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.port
    print(port, flush=True)
    snapshot = None
    for line in sys.stdin:
        if line.strip() == "snapshot" and trace:
            import tracemalloc

            now = tracemalloc.take_snapshot()
            if snapshot is None:
                snapshot = now
                print("{}", flush=True)
            else:
                print(json.dumps(_by_place(now.compare_to(snapshot, "lineno"))), flush=True)
    os._exit(0)  # 10,000 threads blocked in recv(): no orderly shutdown needed


def _by_place(diff: list[Any]) -> dict[str, int]:
    """Bytes grown, by blockws module (zlib's by the call in deflate.py that allocated them), or 'other'."""
    places: Counter[str] = Counter()
    for stat in diff:
        frame = stat.traceback[0]
        name = Path(frame.filename).name
        if "blockws" in Path(frame.filename).parts:
            place = name
            if name == "deflate.py":
                source = linecache.getline(frame.filename, frame.lineno)
                for call, what in ZLIB_CALLS:
                    if call in source:
                        place = what
                        break
        elif name in ("threading.py", "socket.py", "selectors.py"):
            place = name
        else:
            place = "other"
        places[place] += stat.size_diff
    return dict(places)


# -- the clients: plain sockets in this process ----------------------------------------


def _open(port: int, count: int, kind: str) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), 120)
        if kind != "tcp":
            key = base64.b64encode(os.urandom(16)).decode()
            extension = f"Sec-WebSocket-Extensions: {OFFER}\r\n" if kind in ("deflate", "lean") else ""
            s.sendall(
                (
                    f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extension}\r\n"
                ).encode()
            )
            response = b""
            while b"\r\n\r\n" not in response:
                chunk = s.recv(4096)
                if not chunk:
                    raise RuntimeError("the server closed during the handshake")
                response += chunk
            if not response.startswith(b"HTTP/1.1 101"):
                raise RuntimeError(f"handshake refused: {response[:80]!r}")
            if kind != "blockws" and b"permessage-deflate" not in response:
                raise RuntimeError("permessage-deflate was not negotiated")
        socks.append(s)
    return socks


def _frame(kind: str) -> bytes:
    """One masked text frame carrying MESSAGE (the mask key is zero: XOR leaves the payload as it is)."""
    if kind == "tcp":
        return MESSAGE
    payload, first = MESSAGE, 0x81
    if kind in ("deflate", "lean"):
        bits = 15 if kind == "deflate" else 11
        compressor = zlib.compressobj(3, zlib.DEFLATED, -bits, 8)
        payload = (compressor.compress(MESSAGE) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
        first = 0xC1  # FIN, RSV1 (compressed), text
    assert 125 < len(payload) < 65536, "--message-kib: up to 60"
    return bytes([first, 0x80 | 126]) + len(payload).to_bytes(2, "big") + b"\0\0\0\0" + payload


def _exchange(socks: list[socket.socket], kind: str, batch: int = 100) -> None:
    """One message each way on every connection, ``batch`` connections at a time.

    Batches keep the measurement about memory: 10,000 messages at once
    would make 10,000 server threads runnable together, a stampede that
    takes long on two cores and is not what this measures.
    """
    frame = _frame(kind)
    for start in range(0, len(socks), batch):
        group = socks[start : start + batch]
        for s in group:
            s.sendall(frame)
        for s in group:
            # The echo: the whole message for tcp; a frame header and payload otherwise.
            got = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    raise RuntimeError("the server closed the connection")
                got += chunk
                if kind == "tcp":
                    if len(got) >= len(MESSAGE):
                        break
                elif len(got) >= 4 and len(got) >= _frame_length(got):
                    break


def _frame_length(data: bytes) -> int:
    length = data[1] & 0x7F
    if length == 126:
        return 4 + int.from_bytes(data[2:4], "big")
    return 2 + length


# -- measuring --------------------------------------------------------------------------


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def thread_stacks_kib(pid: int) -> tuple[int, int]:
    """(count, RSS KiB) of the anonymous mappings the size of a thread stack."""
    soft = resource.getrlimit(resource.RLIMIT_STACK)[0]
    size_kib = 8192 if soft == resource.RLIM_INFINITY else soft // 1024
    count = rss = 0
    with open(f"/proc/{pid}/smaps") as f:
        text = f.read()
    for block in re.split(r"\n(?=[0-9a-f]+-[0-9a-f]+ )", text):
        head = block.split("\n", 1)[0].split()
        size = re.search(r"^Size:\s+(\d+) kB", block, re.M)
        if len(head) == 5 and head[1] == "rw-p" and size and int(size.group(1)) == size_kib:
            count += 1
            found = re.search(r"^Rss:\s+(\d+) kB", block, re.M)
            rss += int(found.group(1)) if found else 0
    return count, rss


def _settle(pid: int) -> int:
    """The RSS once it stops moving (threads finish starting, the allocator settles)."""
    last = _rss_kib(pid)
    for _ in range(20):
        time.sleep(0.2)
        now = _rss_kib(pid)
        if abs(now - last) < 64:
            return now
        last = now
    return last


class Server:
    def __init__(self, kind: str, trace: bool = False) -> None:
        args = [sys.executable, __file__, "--child", kind] + (["--trace"] if trace else [])
        self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline())

    def ask(self, line: str) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def measure(kind: str, count: int) -> dict[str, Any]:
    server = Server(kind)
    socks: list[socket.socket] = []
    try:
        warm = _open(server.port, WARM_UP, kind)
        _exchange(warm, kind)
        for s in warm:
            s.close()
        pid = server.proc.pid
        before = _settle(pid)
        socks = _open(server.port, count, kind)
        opened = _settle(pid)
        _exchange(socks, kind)
        used = _settle(pid)
        stacks, stack_rss = thread_stacks_kib(pid)
        return {
            "server": kind,
            "connections": count,
            "kib_opened": (opened - before) / count,
            "kib_used": (used - before) / count,
            "stack_kib": stack_rss / max(stacks, 1),
            "rss_mib": used / 1024,
        }
    finally:
        for s in socks:
            s.close()
        server.stop()


def breakdown(count: int) -> dict[str, float]:
    """Bytes per connection by place, from tracemalloc, in the deflate server after one message each way."""
    server = Server("deflate", trace=True)
    socks: list[socket.socket] = []
    try:
        warm = _open(server.port, WARM_UP, "deflate")
        _exchange(warm, "deflate")
        for s in warm:
            s.close()
        time.sleep(0.5)
        server.ask("snapshot")
        socks = _open(server.port, count, "deflate")
        _exchange(socks, "deflate")
        time.sleep(0.5)
        places: dict[str, int] = server.ask("snapshot")
        per = {place: size / count for place, size in places.items()}
        parts = {place: size for place, size in per.items() if size >= 256 and place != "other"}
        parts["other"] = sum(size for place, size in per.items() if place not in parts)
        return dict(sorted(parts.items(), key=lambda p: -p[1]))
    finally:
        for s in socks:
            s.close()
        server.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child_server(sys.argv[2], "--trace" in sys.argv)
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", default="1000,10000", help="comma-separated counts")
    parser.add_argument("--servers", default=",".join(SERVERS), help=f"comma-separated: {','.join(SERVERS)}")
    parser.add_argument("--breakdown", type=int, default=1000, help="connections for the breakdown (0: none)")
    parser.add_argument("--message-kib", type=int, default=1, help="the message's size (1 to 60 KiB)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    global MESSAGE
    MESSAGE = "".join(messages(args.message_kib)).encode()
    counts = [int(n) for n in args.connections.split(",") if n]
    # Both processes inherit the limit: this one holds the clients, the child the server's side.
    room = raise_fd_limit(max(counts + [args.breakdown]))
    if room < max(counts):
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        print(
            f"note: the hard limit of open files (RLIMIT_NOFILE) is {hard}: room for {room} connections;"
            f" skipping the counts above that (raise it with ulimit -Hn to measure them)",
            file=sys.stderr,
        )
        counts = [n for n in counts if n <= room] or [room]
    rows = []
    for n in counts:
        for kind in (kind for kind in args.servers.split(",") if kind):
            rows.append(measure(kind, n))
            print(f"measured: {rows[-1]}", file=sys.stderr, flush=True)
    parts = breakdown(args.breakdown) if args.breakdown else {}
    if args.json:
        print(json.dumps({"rows": rows, "breakdown": parts}, indent=2))
        return
    floor = {row["connections"]: row for row in rows if row["server"] == "tcp"}
    print(f"KiB of server RSS per idle connection, before and after one {args.message_kib} KiB message each way")
    print("(above: minus the bare threaded TCP server's)")
    print(f"{'server':<9}{'conns':>7}{'opened':>9}{'above':>8}{'1 msg':>9}{'above':>8}{'stack':>8}")
    for row in rows:
        tcp = floor.get(row["connections"])
        above_opened = f"{row['kib_opened'] - tcp['kib_opened']:8.1f}" if tcp else f"{'-':>8}"
        above_used = f"{row['kib_used'] - tcp['kib_used']:8.1f}" if tcp else f"{'-':>8}"
        print(
            f"{row['server']:<9}{row['connections']:>7}{row['kib_opened']:9.1f}{above_opened}"
            f"{row['kib_used']:9.1f}{above_used}{row['stack_kib']:8.1f}"
        )
    if parts:
        print(f"\nAllocated per connection (tracemalloc, deflate server, {args.breakdown} connections), KiB")
        for place, size in parts.items():
            print(f"  {place:<26}{size / 1024:8.1f}")
        print(f"  {'total':<26}{sum(parts.values()) / 1024:8.1f}")


if __name__ == "__main__":
    main()
