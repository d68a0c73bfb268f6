"""blockws's server on several interpreters, interleaved in one run: free-threaded CPython against the GIL.

    python bench/freethreaded.py --python gil=/path/python3.13 --python ft=/path/python3.13t
                                 [--quick] [--rounds N] [--only echo,handshake,broadcast] [--no-raw]

Each ``--python LABEL=PATH`` runs the blockws echo server (server_worker.py
blockws) and, unless ``--no-raw``, the raw TCP echo server (server_worker.py
raw: a socketserver thread per connection, what the interpreter alone costs)
with that interpreter; PATH must have blockws importable (an environment's
``bin/python`` with ``pip install -e .``). The first ``--python`` is the
baseline of the ratios. The load generator is bench/node/load.js as in
run.py; the broadcast figures are broadcast.py's (its blockws server child
run by each interpreter, the receiver by this one).

Every figure is measured for every server before the next figure, rounds
outermost, the servers' order reversed every other round (a burst of noise
on the shared machine hits them alike, and none is always first). A ratio
is taken within each round (two runs seconds apart) and the table shows the
range of those ratios over the rounds, then the median: the spread is the
noise. CPU per operation is the server process's CPU (user + system, all
threads, /proc/PID/stat, 10 ms ticks) over the measured window divided by
the operations in it: handshakes, echoed messages, or deliveries; its ratio
reads "X spends this many times the baseline's CPU per operation".

``--json FILE`` writes every run's figures, for combining repeated runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Optional

from procs import BENCH_DIR, HOST, Child, ChildError, node, raise_fd_limit, run_json


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class Load:
    key: str
    label: str
    mode: str
    conns: int


LOADS = [
    Load("handshake1", "handshakes/s, sequential", "handshake", 1),
    Load("handshake50", "handshakes/s, 50 concurrent", "handshake", 50),
    Load("echo1", "echo msg/s, 1 conn", "echo", 1),
    Load("echo10", "echo msg/s, 10 conns", "echo", 10),
    Load("echo100", "echo msg/s, 100 conns", "echo", 100),
]
BROADCAST_CONNS = [10, 100]
BROADCAST_SIZE = 100

Result = Optional[dict[str, Any]]  # rate (/s) and cpu_us (server CPU µs per operation), or None: failed
Runs = dict[tuple[str, str], list[Result]]  # (figure key, server name) -> one result per round


def interpreter_info(path: str) -> str:
    code = (
        "import sys, sysconfig, blockws.frames as f; "
        "gil = getattr(sys, '_is_gil_enabled', lambda: True)(); "
        "print(sys.version.split()[0], 'free-threaded' if sysconfig.get_config_var('Py_GIL_DISABLED') else 'GIL', "
        "'GIL on' if gil else 'GIL off', 'C accelerator' if f.ACCELERATED else 'pure Python')"
    )
    done = subprocess.run([path, "-c", code], capture_output=True, text=True, timeout=60, cwd=BENCH_DIR)
    if done.returncode != 0:
        raise SystemExit(f"{path}: cannot import blockws: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout.strip()


def run_load(load: Load, server: Child, scheme: str, duration: float, warmup: float) -> dict[str, Any]:
    port = server.info["port"]
    url = f"ws://{HOST}:{port}/" if scheme == "ws" else f"tcp://{HOST}:{port}"
    args = node("load.js", "--mode", load.mode, "--url", url, "--conns", str(load.conns), "--duration", str(duration),
                "--warmup", str(warmup), "--server-pid", str(server.pid))  # fmt: skip
    result = run_json(args, timeout=60 + 10 * duration)
    if result.get("errors"):
        log(f"  ! {result['errors']} connection errors ({result.get('lastError')})")
    if (result.get("cpu") or 0) > 0.9:
        log(f"  ! the load generator used {result['cpu']:.0%} of a core: it may be the bottleneck")
    count = result.get("count") or 0
    cpu = result.get("server_cpu")
    return {"rate": result["rate"], "cpu_us": cpu / count * 1e6 if cpu is not None and count else None,
            "load_cpu": result.get("cpu")}  # fmt: skip


def measure_loads(servers: dict[str, tuple[list[str], str]], rounds: int, duration: float, warmup: float,
                  loads: list[Load]) -> Runs:  # fmt: skip
    runs: Runs = {}
    children: dict[str, Child] = {}
    try:
        for name, (command, _) in servers.items():
            children[name] = Child(command)
        for round_no in range(1, rounds + 1):
            order = list(children) if round_no % 2 else list(reversed(children))
            for load in loads:
                for name in order:
                    log(f"{load.key} [{name}] (round {round_no}/{rounds})")
                    try:
                        result: Result = run_load(load, children[name], servers[name][1], duration, warmup)
                    except (ChildError, OSError, ValueError, KeyError) as exc:
                        log(f"  ! {load.key} [{name}] failed: {exc}")
                        result = None
                    runs.setdefault((load.key, name), []).append(result)
    finally:
        for child in children.values():
            child.stop()
    return runs


def measure_broadcast(pythons: dict[str, str], rounds: int, duration: float, conns_list: list[int]) -> Runs:
    from broadcast import Bench
    from broadcast import Settings as BroadcastSettings

    settings = BroadcastSettings(conns=conns_list, sizes=[BROADCAST_SIZE], rounds=rounds, duration=duration,
                                 stall_cap=256_000_000)  # fmt: skip
    commands = {f"blockws {label}": [path, str(BENCH_DIR / "broadcast.py"), "--child", "blockws"]
                for label, path in pythons.items()}  # fmt: skip
    bench = Bench(settings, commands)
    runs: Runs = {}
    try:
        for conns in conns_list:
            names = list(bench.servers)
            for name in names:
                bench.connect(name, conns)
            count = bench.calibrate(conns, BROADCAST_SIZE)
            for round_no in range(1, rounds + 1):
                log(f"broadcast {conns} conns x {count} (round {round_no}/{rounds})")
                for name in names if round_no % 2 else reversed(names):
                    run = bench.attempt(name, conns, BROADCAST_SIZE, count, stall=False)
                    result = {"rate": run.rate, "cpu_us": run.cpu_per_delivery * 1e6} if run else None
                    runs.setdefault((f"broadcast{conns}", name), []).append(result)
            for name in names:
                bench.disconnect(name)
    finally:
        bench.close()
    return runs


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "—"
    if unit == "µs":
        return f"{value:.1f}"
    return f"{value:,.0f}"


def ratios(runs: Runs, key: str, name: str, base: str, field: str) -> list[float]:
    """Per round: name's figure over base's."""
    out = []
    for a, b in zip(runs.get((key, name), []), runs.get((key, base), [])):
        if a and b and a.get(field) and b.get(field):
            out.append(a[field] / b[field])
    return out


def _range(values: list[float]) -> str:
    if not values:
        return "—"
    return f"{min(values):.2f}–{max(values):.2f} (med {statistics.median(values):.2f})"


def render(runs: Runs, figures: list[tuple[str, str]], groups: list[list[str]], rounds: int) -> str:
    """A table per group of servers (blockws, raw): best rate, median CPU/op, ratios to the group's first."""
    out = []
    for names in groups:
        base = names[0]
        header = ["figure", *[f"{n} /s" for n in names], *[f"{n} CPU µs/op" for n in names]]
        header += [f"{n} / {base} rate" for n in names[1:]] + [f"{n} / {base} CPU" for n in names[1:]]
        lines = []
        for key, label in figures:
            if not any(runs.get((key, n)) for n in names):
                continue
            cells = [label]
            for n in names:
                done = [r for r in runs.get((key, n), []) if r]
                cells.append(_fmt(max(r["rate"] for r in done)) if done else "—")
            for n in names:
                cpus = [r["cpu_us"] for r in runs.get((key, n), []) if r and r.get("cpu_us")]
                cells.append(_fmt(statistics.median(cpus), "µs") if cpus else "—")
            cells += [_range(ratios(runs, key, n, base, "rate")) for n in names[1:]]
            cells += [_range(ratios(runs, key, n, base, "cpu_us")) for n in names[1:]]
            lines.append(cells)
        widths = [max(len(row[i]) for row in [header, *lines]) for i in range(len(header))]
        text = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                for row in [header, *lines]]  # fmt: skip
        text.insert(1, "-" * len(text[0]))
        out.append("\n".join(text))
    out.append(
        f"rates: the best of {rounds} round(s); CPU µs/op: the median round's (server process, all threads);\n"
        "ratios X / baseline: per round (runs seconds apart), then their range over the rounds and\n"
        "its median. Rate above 1: X is faster; CPU above 1: X spends more CPU per operation."
    )
    return "\n\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", action="append", required=True, metavar="LABEL=PATH",
                        help="an interpreter for blockws's servers (the first: the ratios' baseline)")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="0.2 s runs, one round")
    parser.add_argument("--rounds", type=int, help="rounds (default 5; quick: 1)")
    parser.add_argument("--duration", type=float, help="seconds per run (default 1; quick: 0.2)")
    parser.add_argument("--only", default="echo,handshake,broadcast", help="comma-separated: echo,handshake,broadcast")
    parser.add_argument("--no-raw", action="store_true", help="blockws only, without the raw TCP server")
    parser.add_argument("--json", metavar="FILE", help="write every run's figures to FILE")
    args = parser.parse_args()
    pythons = dict(item.split("=", 1) for item in args.python)
    rounds = args.rounds or (1 if args.quick else 5)
    duration = args.duration or (0.2 if args.quick else 1.0)
    warmup = 0.05 if args.quick else 0.3
    only = set(args.only.split(","))
    raise_fd_limit()
    from run import ensure_node_packages, versions

    ensure_node_packages()
    print("\n".join(versions()))
    for label, path in pythons.items():
        print(f"server interpreter {label}: {path}: {interpreter_info(path)}")
    print(flush=True)

    started = time.monotonic()
    runs: Runs = {}
    servers: dict[str, tuple[list[str], str]] = {}
    for label, path in pythons.items():
        servers[f"blockws {label}"] = ([path, str(BENCH_DIR / "server_worker.py"), "blockws"], "ws")
    if not args.no_raw:
        for label, path in pythons.items():
            servers[f"raw {label}"] = ([path, str(BENCH_DIR / "server_worker.py"), "raw"], "tcp")
    loads = [load for load in LOADS if load.mode in only]
    if loads:
        runs.update(measure_loads(servers, rounds, duration, warmup, loads))
    conns_list = [100] if args.quick else BROADCAST_CONNS
    if "broadcast" in only:
        runs.update(measure_broadcast(pythons, rounds, 0.1 if args.quick else 0.5, conns_list))
    figures = [(load.key, load.label) for load in loads]
    figures += [(f"broadcast{c}", f"broadcast {BROADCAST_SIZE} B to {c} conns, deliveries/s") for c in conns_list]
    groups = [[f"blockws {label}" for label in pythons]]
    if not args.no_raw and loads:
        groups.append([f"raw {label}" for label in pythons])
    print(render(runs, figures, groups, rounds))
    print(f"\n{time.monotonic() - started:.0f} s, {rounds} round(s) of {duration:g} s runs")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({f"{k} | {n}": v for (k, n), v in runs.items()}, f, indent=1)
    failed = [k for k, results in runs.items() if k[1].startswith("blockws") and not all(results)]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
