"""Soak test: many connections echoing for a long time against a blockws server.

    python bench/soak.py [--connections 500] [--duration 600] [--interval 10]

The server runs in its own process; its RSS and thread count are sampled
every ``interval`` seconds. Clients (threads in this process) send messages
of random sizes and check every echo byte for byte. The run fails (exit 1)
on any error, on a lost or corrupted message, or when the server's memory
keeps growing (last third of the run more than 10 % above the middle third).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import subprocess
import sys
import threading
import time

import blockws

SERVER = """
import sys, threading, blockws
def echo(ws):
    for message in ws:
        ws.sendall(message)
server = blockws.serve(echo, "127.0.0.1", 0, backlog=2048, max_size=None, compression=None)
print(server.port, flush=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
sys.stdin.readline()
server.shutdown(timeout=10)
"""


def _status(pid: int) -> tuple[float, int]:
    rss = threads = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss / 1024, threads


def client(url: str, stop: threading.Event, seed: int, counts: list[int], errors: list[str]) -> None:
    rng = random.Random(seed)
    try:
        with blockws.connect(url, timeout=30, max_size=None, compression=None, connect_gate=None) as ws:
            while not stop.is_set():
                size = rng.choice((0, 10, 100, 1000, 20000))
                message: str | bytes = rng.randbytes(size) if rng.random() < 0.5 else "é" * (size // 2)
                ws.sendall(message)
                if ws.recv() != message:
                    errors.append("echo mismatch")
                    return
                counts[seed] += 1
                stop.wait(rng.random() * 0.2)
    except Exception as exc:  # every error is a finding: report, don't crash
        errors.append(f"{type(exc).__name__}: {exc}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--duration", type=float, default=600)
    parser.add_argument("--interval", type=float, default=10)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, 4 * args.connections + 100), hard), hard))
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdin is not None
    url = f"ws://127.0.0.1:{server.stdout.readline().strip()}/"
    stop = threading.Event()
    counts = [0] * args.connections
    errors: list[str] = []
    threads = [
        threading.Thread(target=client, args=(url, stop, i, counts, errors), daemon=True)
        for i in range(args.connections)
    ]
    for t in threads:
        t.start()
    samples: list[tuple[float, float, int, int]] = []
    start = time.monotonic()
    print(f"soak: {args.connections} connections for {args.duration:.0f} s against {url}")
    print(f"{'t (s)':>6} {'server RSS MiB':>15} {'server threads':>15} {'messages':>10} {'errors':>7}")
    while (elapsed := time.monotonic() - start) < args.duration:
        time.sleep(min(args.interval, max(args.duration - elapsed, 0.1)))
        rss, nthreads = _status(server.pid)
        samples.append((time.monotonic() - start, rss, nthreads, sum(counts)))
        print(f"{samples[-1][0]:>6.0f} {rss:>15.1f} {nthreads:>15} {sum(counts):>10} {len(errors):>7}", flush=True)
    stop.set()
    for t in threads:
        t.join(60)
    server.stdin.write("stop\n")
    server.stdin.flush()
    server.wait(60)
    total = sum(counts)
    # Growth: the last third against the middle one (the first is warm-up).
    third = max(len(samples) // 3, 1)
    middle = samples[third : 2 * third] or samples[:1]
    first = sum(s[1] for s in middle) / len(middle)
    last = sum(s[1] for s in samples[-third:]) / third
    growth = (last - first) / first * 100 if first else 0.0
    print(f"soak: {total} messages ({total / args.duration:.0f}/s), {len(errors)} errors, RSS growth {growth:+.1f} %")
    for error in sorted(set(errors))[:10]:
        print(f"  error: {error}")
    return 1 if errors or total == 0 or (len(samples) >= 6 and growth > 10) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
