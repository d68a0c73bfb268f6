"""The cost of keeping 1,000 idle connections alive: blockws vs the websockets sync API.

    python bench/keepalive_scale.py [--connections 1000] [--interval 1] [--idle 10] [--json]

A short check that it runs: ``--connections 20 --interval 0.5 --idle 1``.

For each library, on each side (client, server), one process holds N idle
connections with pings every ``interval`` seconds; we report its threads,
its RSS and the CPU it burns per second of idleness. blockws uses one
KeepAlive thread for all of them; websockets' sync API uses a keepalive
thread per connection (and a reader thread per connection).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(pid: int, idle: float) -> dict[str, Any]:
    start_cpu = _cpu_seconds(pid)
    time.sleep(idle)
    cpu = (_cpu_seconds(pid) - start_cpu) / idle
    status = _proc_status(pid)
    return {"threads": status["Threads"], "rss_mib": status["VmRSS"] / 1024, "cpu_percent": cpu * 100}


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
        sys.stdin.readline()
        wserver.shutdown()


def _child_client(lib: str, url: str, count: int, interval: float) -> None:
    conns: list[Any] = []
    if lib == "blockws":
        import blockws

        ka = blockws.KeepAlive(interval=interval, timeout=30)
        for _ in range(count):
            conns.append(blockws.connect(url, keepalive=ka, compression=None, connect_gate=None))
    else:
        from websockets.sync.client import connect

        for _ in range(count):
            conns.append(connect(url, ping_interval=interval, ping_timeout=30, compression=None))
    print("ready", flush=True)
    sys.stdin.readline()
    for ws in conns:
        ws.close()


def _plain_clients(url: str, count: int) -> None:
    """Idle clients that answer the server's pings but send none of their own."""
    import blockws

    answer_only = blockws.KeepAlive(interval=1e6, timeout=1e6)
    conns = [blockws.connect(url, compression=None, connect_gate=None, keepalive=answer_only) for _ in range(count)]
    print("ready", flush=True)
    sys.stdin.readline()
    for ws in conns:
        ws.abort()


def _spawn(*args: str) -> subprocess.Popen[str]:
    # stderr is dropped: websockets logs every connection it drops at shutdown.
    return subprocess.Popen(
        [sys.executable, __file__, "--child", *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _stop(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write("stop\n")
        proc.stdin.flush()
        proc.wait(60)
    except (subprocess.TimeoutExpired, BrokenPipeError):
        proc.kill()
        proc.wait()


def run(count: int, interval: float, idle: float) -> list[dict[str, Any]]:
    rows = []
    for lib in ("blockws", "websockets"):
        # Client side: a blockws server without keepalive; the client process holds N kept-alive connections.
        server = _spawn("server", "blockws", "1000000")
        assert server.stdout is not None
        port = int(server.stdout.readline())
        client = _spawn("client", lib, f"ws://127.0.0.1:{port}/", str(count), str(interval))
        assert client.stdout is not None
        client.stdout.readline()
        rows.append({"library": lib, "side": "client", "connections": count, **_measure(client.pid, idle)})
        _stop(client)
        _stop(server)
        # Server side: the server keeps N connections alive; clients are plain.
        server = _spawn("server", lib, str(interval))
        assert server.stdout is not None
        port = int(server.stdout.readline())
        clients = _spawn("plain", f"ws://127.0.0.1:{port}/", str(count))
        assert clients.stdout is not None
        clients.stdout.readline()
        rows.append({"library": lib, "side": "server", "connections": count, **_measure(server.pid, idle)})
        _stop(clients)
        _stop(server)
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        resource.setrlimit(resource.RLIMIT_NOFILE, (8192, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
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
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = run(args.connections, args.interval, args.idle)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{args.connections} idle connections, ping every {args.interval} s, measured over {args.idle} s")
    print(side_by_side(rows))


def side_by_side(rows: list[dict[str, Any]]) -> str:
    """One line per side and metric, one column per library."""
    libraries = list(dict.fromkeys(row["library"] for row in rows))
    lines = [f"{'side':<7} {'':<13}" + "".join(f" {lib:>11}" for lib in libraries)]
    for side in dict.fromkeys(row["side"] for row in rows):
        by_lib = {row["library"]: row for row in rows if row["side"] == side}
        for key, label, fmt in (
            ("threads", "threads", "d"),
            ("rss_mib", "RSS MiB", ".1f"),
            ("cpu_percent", "idle CPU %", ".2f"),
        ):
            cells = "".join(f" {by_lib[lib][key]:>11{fmt}}" if lib in by_lib else f" {'-':>11}" for lib in libraries)
            lines.append(f"{side:<7} {label:<13}{cells}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
