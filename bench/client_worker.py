"""One client's figures against the Node reference server; run by run.py, a process per client.

    python bench/client_worker.py CLIENT --port P --serve        # throughput figures on demand
    python bench/client_worker.py CLIENT --port P --idle N       # RSS per idle connection
    python bench/client_worker.py CLIENT --port P --peak BYTES   # peak memory receiving one message

CLIENT is raw, blockws, websockets or websocket-client (blockws without the C
accelerator is blockws with BLOCKWS_NO_EXTENSIONS=1 in the environment).
With --serve it reads lines "FIGURE SECONDS" (FIGURE: rtt32, send64, recv64,
up1m, down1m) and answers each with a JSON line; otherwise it prints one
JSON line and exits.

Every client, raw TCP included, speaks to the same server paths
(bench/node/echo_server.js) through the same small interface, so the loops
timed below are identical for all of them: only send() and recv() differ.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import socket
import struct
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

HOST = "127.0.0.1"
SMALL = 64  # bytes: the one-way message rate tests
RTT_SIZE = 32  # bytes: the round-trip test
LARGE = 1 << 20  # bytes: the bandwidth tests


class Conn:
    """A connection to one path of the reference server: "/" (echo), "/sink" or "/source".

    ``send`` and ``recv`` are the library's own bound methods wherever
    possible, so the timed loops pay no adapter call.
    """

    send: Callable[[bytes], Any]
    recv: Callable[[], Any]
    send_text: Callable[[str], Any]
    close: Callable[[], Any]

    def begin_sink(self, count: int, size: int) -> None:
        """Announce ``count`` messages of ``size`` bytes to /sink (WebSocket: nothing to say)."""

    def end_sink(self, count: int) -> None:
        """Wait until /sink has received every message: it answers a text message with its count."""
        self.send_text("end")
        reply = self.recv()
        if isinstance(reply, (bytes, bytearray)):
            reply = reply.decode()  # the raw client doesn't tell text from binary
        if int(reply.split()[0]) != count:
            raise RuntimeError(f"sink counted {reply!r}, expected {count} messages")

    def request_source(self, count: int, size: int) -> None:
        """Ask /source for ``count`` messages of ``size`` bytes."""
        self.send_text(f"{count} {size}")


class BlockwsConn(Conn):
    def __init__(self, url: str) -> None:
        import blockws

        ws = blockws.connect(url, compression=None, max_size=None)
        self.send = self.send_text = ws.send
        self.recv = ws.recv
        self.close = ws.close


class WebsocketsConn(Conn):
    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        # Entered as a context manager: websockets >= 17.1 warns about a bare connect().
        ws = connect(url, compression=None, max_size=None).__enter__()
        self.send = self.send_text = ws.send
        self.recv = ws.recv
        self.close = ws.close


class WebsocketClientConn(Conn):
    def __init__(self, url: str) -> None:
        import websocket  # websocket-client: no compression unless asked for

        ws = websocket.create_connection(url)
        self.send = ws.send_binary
        self.send_text = ws.send
        self.recv = ws.recv
        self.close = ws.close


def frame_header(size: int, opcode: int = 0x2) -> bytes:
    """The header of a client frame masked with the key 0 (so the payload goes as it is)."""
    if size < 126:
        head = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, size)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, size)
    return head + b"\0\0\0\0"


_SMALL_HEADERS = [frame_header(n) for n in range(126)]


class RawConn(Conn):
    """The raw-TCP ceiling: a plain socket sending and receiving the same bytes as a WebSocket client.

    It talks to the same server paths, so the server does the same work for
    it as for the libraries and a ratio measures only the client side. The
    handshake is a canned request (not timed). Frames are masked with the
    key 0, which leaves the payload as it is: framing costs a header
    concatenation, receiving the least possible Python work per message.
    """

    def __init__(self, port: int, path: str) -> None:
        self.sock = sock = socket.create_connection((HOST, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk or len(head) > 65536:
                raise ConnectionError(f"no handshake response from {path}: {head[:200]!r}")
            head += chunk
        head, _, self.buf = head.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"handshake refused: {head[:200]!r}")
        self.pos = 0

    def send(self, data: bytes) -> None:
        size = len(data)
        if size < 126:
            self.sock.sendall(_SMALL_HEADERS[size] + data)
        else:
            header = frame_header(size)
            sent = self.sock.sendmsg([header, data])  # no 1 MiB copy to prepend a header
            if sent < len(header):
                self.sock.sendall(header[sent:])
                sent = len(header)
            if sent < len(header) + size:
                self.sock.sendall(memoryview(data)[sent - len(header) :])

    def send_text(self, text: str) -> None:
        payload = text.encode()
        self.sock.sendall(frame_header(len(payload), opcode=0x1) + payload)

    def close(self) -> None:
        self.sock.close()  # no closing handshake: nothing to measure there

    def recv(self) -> bytes | bytearray:
        buf, pos = self.buf, self.pos
        if len(buf) - pos >= 2:
            size = buf[pos + 1]
            end = pos + 2 + size
            if size < 126 and end <= len(buf):
                self.pos = end
                return buf[pos + 2 : end]
        return self._recv_slow()

    def _recv_slow(self) -> bytes | bytearray:
        """A frame that isn't whole in the buffer: read more, or read a large payload in place."""
        buf = self.buf[self.pos :]
        while True:
            if len(buf) >= 2:
                size, start = buf[1] & 0x7F, 2
                if size == 126 and len(buf) >= 4:
                    (size,), start = struct.unpack_from("!H", buf, 2), 4
                elif size == 127 and len(buf) >= 10:
                    (size,), start = struct.unpack_from("!Q", buf, 2), 10
                if size < 126 or start > 2:
                    if len(buf) >= start + size:
                        self.buf, self.pos = buf, start + size
                        return buf[start : start + size]
                    if size >= 65536:
                        return self._recv_large(buf[start:], size)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            buf += chunk

    def _recv_large(self, head: bytes, size: int) -> bytearray:
        message = bytearray(size)
        message[: len(head)] = head
        view = memoryview(message)
        got = len(head)
        while got < size:
            n = self.sock.recv_into(view[got:])
            if not n:
                raise ConnectionError("the server closed the connection")
            got += n
        self.buf, self.pos = b"", 0
        return message


Opener = Callable[[str], Conn]


def opener(client: str, port: int) -> Opener:
    """A function opening a connection of ``client`` to a path of the reference server."""
    if client == "raw":
        return lambda path: RawConn(port, path)
    classes: dict[str, Callable[[str], Conn]] = {
        "blockws": BlockwsConn,
        "websockets": WebsocketsConn,
        "websocket-client": WebsocketClientConn,
    }
    cls = classes[client]
    return lambda path: cls(f"ws://{HOST}:{port}{path}")


# -- throughput ---------------------------------------------------------------------


def round_trips(conn: Conn, count: int) -> None:
    send, recv = conn.send, conn.recv
    message = b"r" * RTT_SIZE
    reply = None
    for _ in range(count):
        send(message)
        reply = recv()
    if reply != message:
        raise RuntimeError(f"bad echo: {reply!r}")


def sends(conn: Conn, count: int, size: int) -> None:
    send = conn.send
    message = b"s" * size
    conn.begin_sink(count, size)
    for _ in range(count):
        send(message)
    conn.end_sink(count)


def receives(conn: Conn, count: int, size: int) -> None:
    recv = conn.recv
    conn.request_source(count, size)
    message = None
    for _ in range(count):
        message = recv()
    if message is None or len(message) != size:
        raise RuntimeError(f"bad message from the source: {len(message or b'')} bytes, expected {size}")


def timed(op: Callable[[int], None], count: int) -> float:
    start = time.perf_counter()
    op(count)
    return time.perf_counter() - start


def per_second(op: Callable[[int], None], duration: float, count: int | None = None) -> tuple[float, int]:
    """Operations per second, and the batch size used.

    Without ``count``, batches grow until one lasts duration/8 (which is also
    the warm-up), then one batch sized to last about ``duration`` is timed.
    With ``count`` (the size that suited a previous call) it is timed at once.
    """
    if count is None:
        count = 1
        while True:
            elapsed = timed(op, count)
            if elapsed >= duration / 8:
                break
            count *= 2 if elapsed > duration / 64 else 8
        count = max(1, round(count * duration / elapsed))
    return count / timed(op, count), count


FIGURES: dict[str, tuple[str, Callable[[Conn, int], None], float]] = {
    # name: (server path, operation, scale from operations/s to the figure)
    "rtt32": ("/", round_trips, 1.0),
    "send64": ("/sink", lambda conn, n: sends(conn, n, SMALL), 1.0),
    "recv64": ("/source", lambda conn, n: receives(conn, n, SMALL), 1.0),
    "up1m": ("/sink", lambda conn, n: sends(conn, n, LARGE), LARGE / 1e6),
    "down1m": ("/source", lambda conn, n: receives(conn, n, LARGE), LARGE / 1e6),
}


class Measurer:
    """Throughput figures on demand; remembers each figure's batch size so repeats skip calibration."""

    def __init__(self, open_conn: Opener) -> None:
        self.open_conn = open_conn
        self.counts: dict[str, int] = {}

    def measure(self, figure: str, duration: float) -> float:
        """One figure, on a connection of its own."""
        path, op, scale = FIGURES[figure]
        conn = self.open_conn(path)
        try:
            count = self.counts.get(figure)
            if count is not None:
                op(conn, max(1, count // 16))  # a short warm-up of the new connection
            rate, count = per_second(lambda n: op(conn, n), duration, count)
        finally:
            conn.close()
        self.counts[figure] = max(1, round(rate * duration))
        return rate * scale


def serve_commands(open_conn: Opener) -> None:
    """Answer "FIGURE SECONDS" lines from stdin with {"value": ...} lines, until stdin closes.

    A long-lived worker per client lets the driver interleave the clients
    figure by figure, so that noise on a shared machine hits them alike.
    """
    measurer = Measurer(open_conn)
    print(json.dumps({"ready": True, **_accelerated()}), flush=True)
    for line in sys.stdin:
        figure, duration = line.split()
        try:
            reply: dict[str, Any] = {"value": measurer.measure(figure, float(duration))}
        except Exception as exc:  # reported to the driver, which carries on with the other clients
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(reply), flush=True)


def _accelerated() -> dict[str, bool]:
    """Whether blockws runs with its C accelerator (only said in blockws workers)."""
    if "blockws" not in sys.modules:
        return {}
    import blockws.frames

    return {"accelerated": blockws.frames.ACCELERATED}


# -- memory ------------------------------------------------------------------------------


def _rss() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def idle_rss(open_conn: Opener, count: int) -> dict[str, float]:
    """RSS bytes per open idle connection in this process."""
    keep = [open_conn("/")]  # the first connection pays for imports and caches: not counted
    gc.collect()
    before = _rss()
    keep += [open_conn("/") for _ in range(count)]
    gc.collect()
    time.sleep(0.3)  # background reader threads (websockets) start their loops
    return {"idle_rss": (_rss() - before) / count, "open": len(keep) - 1}


def peak_memory(open_conn: Opener, size: int) -> dict[str, float]:
    """Peak memory while receiving one message of ``size`` bytes, as multiples of ``size``.

    peak_rss: growth of the process's peak RSS; peak_traced: tracemalloc's
    peak (Python allocations only, the message itself included).
    """
    conn = open_conn("/source")
    conn.request_source(1, 1 << 16)  # warm-up: lazy buffers are made before the baseline
    conn.recv()
    gc.collect()
    before = _rss()
    conn.request_source(1, size)
    message = conn.recv()
    if len(message) != size:
        raise RuntimeError(f"received {len(message)} bytes, expected {size}")
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    del message
    gc.collect()
    tracemalloc.start()
    conn.request_source(1, size)
    conn.recv()
    peak_traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"peak_rss": peak_rss / size, "peak_traced": peak_traced / size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("client", choices=["raw", "blockws", "websockets", "websocket-client"])
    parser.add_argument("--port", type=int, required=True, help="the reference server's port")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--serve", action="store_true", help='answer "FIGURE SECONDS" commands from stdin')
    mode.add_argument("--idle", type=int, metavar="N", help="open N idle connections")
    mode.add_argument("--peak", type=int, metavar="BYTES", help="receive one message of BYTES")
    args = parser.parse_args()
    open_conn = opener(args.client, args.port)
    if args.serve:
        open_conn("/").close()  # import the library before saying ready
        serve_commands(open_conn)  # every connection is closed: a normal exit (cProfile can report)
        return
    result = idle_rss(open_conn, args.idle) if args.idle is not None else peak_memory(open_conn, args.peak)
    print(json.dumps({**result, **_accelerated()}), flush=True)
    # A thousand open connections and their reader threads would make a clean exit slow.
    os._exit(0)


if __name__ == "__main__":
    main()
