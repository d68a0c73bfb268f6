"""The cost of keeping 1,000 idle connections alive: blockws vs the websockets sync API.

    python bench/keepalive_scale.py [--connections 1000] [--interval 1] [--idle 10]
                                    [--libraries blockws,websockets] [--sides client,server] [--json]
    python bench/keepalive_scale.py --10k     # 10,000 connections, ping every 5 s

A short check that it runs: ``--connections 20 --interval 0.5 --idle 1``.
``--10k`` is ``--connections 10000 --interval 5``: each process then needs
more than 10,000 descriptors, so the soft ``RLIMIT_NOFILE`` is raised as far
as the hard limit allows (a note says how many connections that leaves room
for when it is not enough), and the server side runs 10,000 handler threads.

``--libraries raw`` adds the floor on the client side: the same
connections pinged by a minimal Python loop (a heap of timers, one prebuilt
Ping, one ``recv`` per Pong, nothing checked), what the kernel and the
least Python cost per ping on this machine.

For each library, on each side (client, server), one process holds N idle
connections with pings every ``interval`` seconds; we report its threads,
its RSS and the CPU it burns per second of idleness, and that CPU per ping
sent (``connections / interval`` pings a second). blockws uses one
KeepAlive thread for all of them (its own CPU is reported too, from
``/proc/PID/task/TID/stat``); websockets' sync API uses a keepalive
thread per connection (and a reader thread per connection).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from typing import Any


def _proc_status(pid: int) -> dict[str, int]:
    status: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Threads", "VmRSS"):
                status[key] = int(value.split()[0])
    return status


def _cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU (user + system) of a process, or of one of its threads.

    A thread's comes from ``schedstat`` where the kernel has it (in
    nanoseconds; ``stat`` counts clock ticks, 10 ms each: 0.1 % of a core
    in a 10 s window, as much as the gap between blockws and the floor
    moves).
    """
    if tid is not None:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                return int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            pass
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(pid: int, idle: float, pings_per_s: float, tid: int | None) -> dict[str, Any]:
    start_cpu = _cpu_seconds(pid)
    start_thread = _cpu_seconds(pid, tid) if tid else 0.0
    time.sleep(idle)
    cpu = (_cpu_seconds(pid) - start_cpu) / idle
    thread_cpu = (_cpu_seconds(pid, tid) - start_thread) / idle if tid else None
    status = _proc_status(pid)
    return {
        "threads": status["Threads"],
        "rss_mib": status["VmRSS"] / 1024,
        "cpu_percent": cpu * 100,
        "us_per_ping": cpu / pings_per_s * 1e6,
        "keepalive_cpu_percent": None if thread_cpu is None else thread_cpu * 100,
    }


def _ready_line(line: str) -> tuple[int, int | None]:
    """A child's "ready CONNECTIONS [KEEPALIVE_TID]" line."""
    words = line.split()
    if not words or words[0] != "ready":
        raise RuntimeError(f"a child failed to start: {line!r}")
    return int(words[1]), int(words[2]) if len(words) > 2 else None


def _keepalive_tid(ka: Any) -> str:
    thread = ka.thread
    return str(thread.native_id) if thread is not None else ""


def raise_fd_limit(count: int) -> int:
    """Raise the soft RLIMIT_NOFILE (children inherit it) for ``count``
    connections; return how many connections the limit leaves room for."""
    needed = count + 200  # the listener, pipes, the interpreter's own files
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard >= needed:
        target = needed
    else:
        target = hard
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return count
    return max(soft - 200, 0)


# -- children: each holds the connections and waits for "stop" on stdin ----------


def _child_server(lib: str, interval: float) -> None:
    if lib == "blockws":
        import blockws

        def handler(ws: blockws.WebSocket) -> None:
            for message in ws:
                ws.sendall(message)

        ka = blockws.KeepAlive(interval=interval, timeout=30)
        server = blockws.serve(handler, "127.0.0.1", 0, keepalive=ka, compression=None, backlog=2048)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(server.port, flush=True)
        if sys.stdin.readline().strip() == "tid":  # the clients are connected
            print(_keepalive_tid(ka), flush=True)
            sys.stdin.readline()
        server.shutdown(timeout=5)
    else:
        from websockets.sync.server import serve

        def ws_handler(ws: Any) -> None:
            for message in ws:
                ws.send(message)

        wserver = serve(ws_handler, "127.0.0.1", 0, ping_interval=interval, ping_timeout=30, compression=None)
        threading.Thread(target=wserver.serve_forever, daemon=True).start()
        print(wserver.socket.getsockname()[1], flush=True)
        if sys.stdin.readline().strip() == "tid":
            print("", flush=True)
            sys.stdin.readline()
        wserver.shutdown()


def _child_client(lib: str, url: str, count: int, interval: float) -> None:
    conns: list[Any] = []
    tid = ""
    try:
        if lib == "blockws":
            import blockws

            ka = blockws.KeepAlive(interval=interval, timeout=30)
            for _ in range(count):
                # A long open_timeout: the server process starts a thread per connection.
                conns.append(blockws.connect(url, keepalive=ka, compression=None, connect_gate=None, open_timeout=120))
            tid = _keepalive_tid(ka)
        elif lib == "raw":
            import blockws

            for _ in range(count):
                conns.append(
                    blockws.connect(url, keepalive=None, compression=None, connect_gate=None, open_timeout=120)
                )
            thread = threading.Thread(target=_minimal_keepalive, args=(conns, interval), daemon=True)
            thread.start()
            tid = str(thread.native_id)
        else:
            from websockets.sync.client import connect

            for _ in range(count):
                conns.append(connect(url, ping_interval=interval, ping_timeout=30, compression=None))
    except OSError as exc:  # out of descriptors, ports or memory: measure what we have
        print(f"after {len(conns)} connections: {exc!r}", file=sys.stderr, flush=True)
        if lib == "blockws":
            tid = _keepalive_tid(ka)
    print("ready", len(conns), tid, flush=True)
    sys.stdin.readline()
    for ws in conns:
        if lib == "raw":
            ws.abort()  # its Close would wait for an answer the minimal loop swallows
        else:
            ws.close()


def _minimal_keepalive(conns: list[Any], interval: float) -> None:
    """The floor for a keepalive thread in Python: what the kernel and the least
    Python cost per ping. One thread pings every connection every ``interval``
    (timers in a heap, woken at most every ``interval / 20`` as blockws's
    are, the same masked Ping frame each time) and reads the
    Pongs (one ``recv`` per ready socket, not parsed). No liveness tracking,
    no timeouts, no locks: not a keepalive, a yardstick for one."""
    import heapq
    import selectors
    import socket

    socks = [ws._transport.sock for ws in conns]  # the bench peeks inside: nothing else reads them
    ping = bytes([0x89, 0x84, 1, 2, 3, 4]) + bytes(b ^ k for b, k in zip(b"ping", b"\x01\x02\x03\x04"))
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ, sock)
    start = time.monotonic()
    timers = [(start + i * interval / len(socks), i) for i in range(len(socks))]
    heapq.heapify(timers)
    try:
        while timers:
            now = time.monotonic()
            while timers[0][0] <= now:
                when, i = heapq.heappop(timers)
                socks[i].send(ping)
                heapq.heappush(timers, (when + interval, i))
            # Batched as blockws batches its timers: a wake-up per ping costs more than the ping.
            for key, _ in selector.select(max(timers[0][0] - now, interval / 20)):
                key.data.recv(4096, socket.MSG_DONTWAIT)
    except OSError:  # the connections are aborted at the end
        pass


def _plain_clients(url: str, count: int) -> None:
    """Idle clients that answer the server's pings but send none of their own."""
    import blockws

    answer_only = blockws.KeepAlive(interval=1e6, timeout=1e6)
    conns: list[Any] = []
    try:
        for _ in range(count):
            conns.append(
                blockws.connect(url, compression=None, connect_gate=None, keepalive=answer_only, open_timeout=120)
            )
    except OSError as exc:
        print(f"after {len(conns)} connections: {exc!r}", file=sys.stderr, flush=True)
    print("ready", len(conns), flush=True)
    sys.stdin.readline()
    for ws in conns:
        ws.abort()


def _spawn(*args: str) -> subprocess.Popen[str]:
    # stderr is dropped for websockets: it logs every connection it drops at shutdown.
    return subprocess.Popen(
        [sys.executable, __file__, "--child", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if "websockets" in args else None,
        text=True,
    )


def _send(proc: subprocess.Popen[str], line: str) -> None:
    assert proc.stdin is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()


def _stop(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        proc.wait(60)
    except (subprocess.TimeoutExpired, BrokenPipeError):
        proc.kill()
        proc.wait()


def run(
    count: int,
    interval: float,
    idle: float,
    libraries: tuple[str, ...] = ("blockws", "websockets"),
    sides: tuple[str, ...] = ("client", "server"),
) -> list[dict[str, Any]]:
    rows = []
    for lib in libraries:
        if "client" in sides:
            # Client side: a blockws server without keepalive; the client process holds N kept-alive connections.
            server = _spawn("server", "blockws", "1000000")
            assert server.stdout is not None
            port = int(server.stdout.readline())
            client = _spawn("client", lib, f"ws://127.0.0.1:{port}/", str(count), str(interval))
            assert client.stdout is not None
            connected, tid = _ready_line(client.stdout.readline())
            time.sleep(min(interval, 5.0))  # past the first round of pings
            row = _measure(client.pid, idle, connected / interval, tid)
            rows.append({"library": lib, "side": "client", "connections": connected, **row})
            _stop(client)
            _stop(server)
        if "server" in sides and lib != "raw":  # raw: a client-side yardstick only
            # Server side: the server keeps N connections alive; clients are plain.
            server = _spawn("server", lib, str(interval))
            assert server.stdout is not None
            port = int(server.stdout.readline())
            clients = _spawn("plain", f"ws://127.0.0.1:{port}/", str(count))
            assert clients.stdout is not None
            connected, _ = _ready_line(clients.stdout.readline())
            _send(server, "tid")
            line = server.stdout.readline().strip()
            time.sleep(min(interval, 5.0))
            row = _measure(server.pid, idle, connected / interval, int(line) if line else None)
            rows.append({"library": lib, "side": "server", "connections": connected, **row})
            _stop(clients)
            _stop(server)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        # The parent raised the soft limit of open files: children inherit it.
        kind, *args = sys.argv[2:]
        if kind == "server":
            _child_server(args[0], float(args[1]))
        elif kind == "client":
            _child_client(args[0], args[1], int(args[2]), float(args[3]))
        else:
            _plain_clients(args[0], int(args[1]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--idle", type=float, default=10.0, help="seconds of idleness measured")
    parser.add_argument(
        "--10k",
        dest="ten_k",
        action="store_true",
        help="10,000 connections, ping every 5 s (--connections 10000 --interval 5)",
    )
    parser.add_argument("--libraries", default="blockws,websockets", help="comma-separated: blockws,websockets,raw")
    parser.add_argument("--sides", default="client,server", help="comma-separated: client,server")
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat the measurement; with raw, each round's ratio to the floor"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.ten_k:
        args.connections, args.interval = 10_000, 5.0
    room = raise_fd_limit(args.connections)
    if room < args.connections:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        print(
            f"note: the hard limit of open files (RLIMIT_NOFILE) is {hard}: room for about {room} connections"
            f" per process, not {args.connections}; raise it (ulimit -Hn) to measure them all",
            file=sys.stderr,
        )
    libraries = tuple(name for name in args.libraries.split(",") if name)
    sides = tuple(name for name in args.sides.split(",") if name)
    rounds = [run(args.connections, args.interval, args.idle, libraries, sides) for _ in range(args.rounds)]
    rows = rounds[-1]
    short = [row for row in rows if row["connections"] < args.connections]
    for row in short:
        print(
            f"note: {row['library']} {row['side']} side: only {row['connections']} of {args.connections}"
            " connections opened (see the error above); measured with those",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(rounds if args.rounds > 1 else rows, indent=2))
        return
    print(f"{args.connections} idle connections, ping every {args.interval} s, measured over {args.idle} s")
    if args.rounds > 1:
        print(f"(the last of {args.rounds} rounds)")
    print(side_by_side(rows))
    if args.rounds > 1 and "raw" in libraries:
        print(against_the_floor(rounds))


def against_the_floor(rounds: list[list[dict[str, Any]]]) -> str:
    """Each library's keepalive thread CPU over the floor's, client side, per round, and the median.

    Rounds run one after another, each library then the floor: the
    machine's load moves both figures of a round alike, so their ratio is
    steadier than either (it still moves by ~0.1 from run to run here).
    """
    lines = ["keepalive thread CPU over the floor's (client side), round by round:"]
    for lib in dict.fromkeys(row["library"] for row in rounds[0]):
        if lib == "raw":
            continue
        ratios = []
        for rows in rounds:
            by_lib = {row["library"]: row for row in rows if row["side"] == "client"}
            ours = by_lib.get(lib, {}).get("keepalive_cpu_percent")
            floor = by_lib.get("raw", {}).get("keepalive_cpu_percent")
            if ours is not None and floor:
                ratios.append(ours / floor)
        if ratios:
            cells = " ".join(f"{ratio:.2f}x" for ratio in ratios)
            lines.append(f"  {lib}: {cells}; median {statistics.median(ratios):.2f}x")
    return "\n".join(lines)


def side_by_side(rows: list[dict[str, Any]]) -> str:
    """One line per side and metric, one column per library."""
    libraries = list(dict.fromkeys(row["library"] for row in rows))
    lines = [f"{'side':<7} {'':<15}" + "".join(f" {lib:>11}" for lib in libraries)]
    for side in dict.fromkeys(row["side"] for row in rows):
        by_lib = {row["library"]: row for row in rows if row["side"] == side}
        for key, label, fmt in (
            ("connections", "connections", "d"),
            ("threads", "threads", "d"),
            ("rss_mib", "RSS MiB", ".1f"),
            ("cpu_percent", "idle CPU %", ".2f"),
            ("us_per_ping", "CPU us/ping", ".1f"),
            ("keepalive_cpu_percent", "keepalive CPU%", ".2f"),
        ):
            cells = "".join(
                f" {by_lib[lib][key]:>11{fmt}}" if by_lib.get(lib, {}).get(key) is not None else f" {'-':>11}"
                for lib in libraries
            )
            lines.append(f"{side:<7} {label:<15}{cells}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
