"""blockws benchmarks: client, server and memory figures next to raw TCP and the other libraries.

    python bench/run.py [--quick] [--only client|server|memory]

Installs what it needs if missing (websockets and websocket-client with pip,
ws with npm into bench/node/node_modules), prints the versions of everything
measured, then one table per section: absolute figures, ratios to raw TCP
and to the best peer, and PASS/MISS for each target. Progress goes to
stderr, results to stdout. See bench/README.md for what each figure means.

Exit status: 0 when every blockws figure was measured (a MISS is not an
error), 1 when a blockws measurement failed, 2 when the setup failed.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Optional

from procs import (
    BENCH_DIR,
    CLIENT_CPUS,
    HOST,
    NODE_DIR,
    SERVER_CPUS,
    Child,
    ChildError,
    env_with,
    node,
    python,
    raise_fd_limit,
    run_json,
    settled_rss,
)
from report import PEER, RAW, Row, Table, Target, Value, render, render_verdicts, verdicts

REPO = BENCH_DIR.parent
MIB = 1 << 20


@dataclass
class Settings:
    duration: float  # seconds per run
    warmup: float  # seconds of load before a server run is timed
    rounds: int  # each figure is the best of this many runs, interleaved across implementations
    idle_connections: int
    peak_size: int  # bytes of the message received for the peak-memory figure

    @classmethod
    def make(cls, quick: bool) -> Settings:
        if quick:
            return cls(duration=0.2, warmup=0.05, rounds=1, idle_connections=100, peak_size=8 * MIB)
        # Several short runs rather than one long one: on a shared machine the
        # best of them is the one least disturbed by other work.
        return cls(duration=0.5, warmup=0.2, rounds=4, idle_connections=1000, peak_size=64 * MIB)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Failures:
    """Measurements that failed: blockws ones make the run fail, the others only warn."""

    def __init__(self) -> None:
        self.subject: list[str] = []

    def record(self, what: str, implementation: str, error: Exception) -> None:
        log(f"  ! {what} [{implementation}] failed: {error}")
        if implementation.startswith("blockws"):
            self.subject.append(f"{what} [{implementation}]")


FAILURES = Failures()


def attempt(what: str, implementation: str, run: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any] | None:
    """``run(*args)``, or None (and the failure recorded) if it fails."""
    try:
        return run(*args)
    except (ChildError, OSError, ValueError, KeyError) as exc:
        FAILURES.record(what, implementation, exc)
        return None


def best(results: Iterable[dict[str, Any] | None], key: str) -> dict[str, Any] | None:
    """The run with the highest ``key``: on a noisy machine the best run is the least disturbed one."""
    done = [r for r in results if r is not None and r.get(key) is not None]
    return max(done, key=lambda r: r[key]) if done else None


# -- setup: dependencies and versions ---------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def ensure_python_packages() -> None:
    """pip install the peers into this interpreter's environment if they are missing."""
    wanted = []
    websockets_version = _version("websockets")
    if websockets_version is None or int(websockets_version.split(".")[0]) < 13:
        wanted.append("websockets>=13")  # 13 brought the sync client/server and the new asyncio server
    if _version("websocket-client") is None:
        wanted.append("websocket-client")
    if wanted:
        log(f"installing {' '.join(wanted)} with pip ...")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *wanted], check=True)


def _node_package_version(name: str) -> str | None:
    try:
        with open(NODE_DIR / "node_modules" / name / "package.json") as f:
            return str(json.load(f)["version"])
    except (OSError, ValueError, KeyError):
        return None


def ensure_node_packages() -> None:
    """npm install ws (and bufferutil, its native masking, so ws isn't slowed by JavaScript XOR)."""
    if shutil.which("node") is None:
        raise SystemExit("node is not installed: the reference servers and the load generator need Node.js")
    if _node_package_version("ws") and _node_package_version("bufferutil"):
        return
    npm = shutil.which("npm")
    if npm is None:
        raise SystemExit("npm is not installed: it is needed once to install ws into bench/node")
    log("installing ws and bufferutil into bench/node with npm ...")
    # --no-save: no package.json or lock file appears next to the committed scripts.
    base = [npm, "install", "--prefix", str(NODE_DIR), "--no-save", "--no-package-lock", "--no-audit", "--no-fund"]
    if subprocess.run([*base, "ws@8", "bufferutil@4"]).returncode != 0:
        subprocess.run([*base, "ws@8"], check=True)  # bufferutil is optional for ws


def _git_state() -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "blockws"], capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "not a git checkout"
    return f"git {head}{' + uncommitted changes' if dirty else ''}"


def versions() -> list[str]:
    import blockws
    import blockws.frames

    node_version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    accel = "C accelerator loaded" if blockws.frames.ACCELERATED else "pure Python (no C accelerator)"
    bufferutil = _node_package_version("bufferutil")
    return [
        f"Python            {platform.python_implementation()} {platform.python_version()}",
        f"blockws           {blockws.__version__} ({accel}; {_git_state()})",
        f"websockets        {_version('websockets')}",
        f"websocket-client  {_version('websocket-client')}",
        f"Node.js           {node_version}",
        f"ws                {_node_package_version('ws')}"
        + (f" (bufferutil {bufferutil})" if bufferutil else " (no bufferutil)"),
        f"machine           {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start",
    ]


# -- client side -----------------------------------------------------------------------


@dataclass
class ClientSpec:
    column: str
    worker: str  # client_worker.py's CLIENT argument
    env: dict[str, str]


CLIENTS = [
    ClientSpec("raw TCP", "raw", {}),
    ClientSpec("blockws", "blockws", {}),
    ClientSpec("blockws pure-Py", "blockws", {"BLOCKWS_NO_EXTENSIONS": "1"}),
    ClientSpec("websockets", "websockets", {}),
    ClientSpec("websocket-client", "websocket-client", {}),
]
CLIENT_PEERS = ["websockets", "websocket-client"]


def client_worker(spec: ClientSpec, server: Child, *mode: str) -> list[str]:
    return python("client_worker.py", spec.worker, "--port", str(server.info["ws"]), *mode)


CLIENT_FIGURES = ["rtt32", "send64", "recv64", "up1m", "down1m"]
PINNED_FIGURES = {"rtt32"}


def ask_figure(worker: Child, figure: str, duration: float) -> dict[str, Any]:
    reply = worker.ask(f"{figure} {duration}", timeout=60 + 30 * duration)
    if "error" in reply:
        raise ChildError(reply["error"])
    return reply


def warm_up(worker: Child | None, settings: Settings) -> None:
    """Exercise every server path once, untimed: Node's JIT would otherwise slow the first client measured."""
    if worker is None:
        return
    log("client: warming up the reference server")
    for name in CLIENT_FIGURES:
        attempt(f"warm-up {name}", "", ask_figure, worker, name, settings.duration / 2)


def client_section(settings: Settings) -> Table:
    runs: dict[tuple[str, str], list[dict[str, Any] | None]] = {}
    accelerated = True
    with Child(node("echo_server.js")) as server:
        workers: dict[str, Child] = {}
        try:
            for spec in CLIENTS:
                try:
                    workers[spec.column] = Child(client_worker(spec, server, "--serve"), env=env_with(**spec.env))
                except ChildError as exc:
                    FAILURES.record("client start", spec.column, exc)
            accelerated = bool(workers["blockws"].info.get("accelerated")) if "blockws" in workers else True
            warm_up(next(iter(workers.values()), None), settings)
            # Clients innermost: each figure is measured for every client within seconds,
            # so a burst of noise on the shared machine hits them alike.
            for name in CLIENT_FIGURES:
                pinned = name in PINNED_FIGURES  # see procs.SERVER_CPUS
                server.pin(SERVER_CPUS if pinned else None)
                for worker in workers.values():
                    worker.pin(CLIENT_CPUS if pinned else None)
                for round_no in range(1, settings.rounds + 1):
                    log(f"client: {name} (round {round_no}/{settings.rounds})")
                    for column, worker in workers.items():
                        result = attempt(name, column, ask_figure, worker, name, settings.duration)
                        runs.setdefault((name, column), []).append(result)
        finally:
            for worker in workers.values():
                worker.stop()

    def figure(key: str) -> dict[str, Value]:
        values: dict[str, Value] = {}
        for spec in CLIENTS:
            chosen = best(runs.get((key, spec.column), []), "value")
            values[spec.column] = chosen["value"] if chosen else None
        return values

    table = Table("CLIENT (reference server: Node ws, another process)", [s.column for s in CLIENTS],
                  raw="raw TCP", peers=CLIENT_PEERS)  # fmt: skip
    table.add(Row("32 B round trips/s", figure("rtt32"), "/s", targets=[Target(RAW, 0.85)]))
    table.add(Row("64 B messages sent/s", figure("send64"), "/s", targets=[Target(PEER, 1.3)]))
    table.add(Row("64 B messages received/s", figure("recv64"), "/s", targets=[Target(PEER, 1.3)]))
    upload = figure("up1m")
    table.add(Row("1 MiB upload MB/s", upload, "MB/s", targets=[Target(RAW, 0.9)]))
    # No target (issue 28 dropped round 2's 0.5x): the standard library has
    # no vectorised XOR, so pure Python masks a byte at a time (RESULTS.md).
    table.add(Row("  └ without the C accelerator", upload, "MB/s", subject="blockws pure-Py",
                  show_values=False))  # fmt: skip
    table.add(Row("1 MiB download MB/s", figure("down1m"), "MB/s", targets=[Target(RAW, 0.95)]))
    if not accelerated:
        table.notes.append("WARNING: the C accelerator is not built: the blockws column is pure Python too")
    table.notes.append("best peer: the better of websockets (sync client) and websocket-client; MB = 10^6 bytes")
    return table


# -- server side -------------------------------------------------------------------------


@dataclass
class ServerSpec:
    column: str
    command: list[str]
    scheme: str  # "ws" or "tcp" (the raw echo server)

    def url(self, child: Child) -> str:
        port = child.info["ws"] if "ws" in child.info else child.info["port"]
        return f"ws://{HOST}:{port}/" if self.scheme == "ws" else f"tcp://{HOST}:{port}"


SERVERS = [
    ServerSpec("raw TCP", python("server_worker.py", "raw"), "tcp"),
    ServerSpec("blockws", python("server_worker.py", "blockws"), "ws"),
    ServerSpec("websockets sync", python("server_worker.py", "websockets-sync"), "ws"),
    ServerSpec("websockets asyncio", python("server_worker.py", "websockets-asyncio"), "ws"),
    ServerSpec("Node ws", node("echo_server.js", flags=("--expose-gc",)), "ws"),
]
SERVER_PEERS = ["websockets sync", "websockets asyncio"]


@dataclass
class Load:
    """One load.js run: a row (or three, for echo: rate, p50, p99) of the server table."""

    key: str
    mode: str
    conns: int
    size: int = 32


LOADS = [
    Load("handshake1", "handshake", 1),
    Load("handshake50", "handshake", 50),
    Load("echo1", "echo", 1),
    Load("echo10", "echo", 10),
    Load("echo100", "echo", 100),
    Load("echo1m", "echo", 1, MIB),
]


LOAD_SATURATED = 0.9  # fraction of a core above which load.js may be what limits a server


def run_load(load: Load, url: str, settings: Settings) -> dict[str, Any]:
    args = node("load.js", "--mode", load.mode, "--url", url, "--conns", str(load.conns), "--size", str(load.size),
                "--duration", str(settings.duration), "--warmup", str(settings.warmup))  # fmt: skip
    result = run_json(args, timeout=60 + 10 * settings.duration)
    if result.get("errors"):
        log(f"  ! {result['errors']} connection errors ({result.get('lastError')})")
    if (result.get("cpu") or 0) > LOAD_SATURATED:
        log(f"  ! the load generator used {result['cpu']:.0%} of a core: it may be the bottleneck")
    return result


Runs = dict[tuple[str, str], list[Optional[dict[str, Any]]]]  # (load key, column) -> one result per round


def measure_servers(settings: Settings) -> Runs:
    children: dict[str, Child] = {}
    runs: Runs = {}
    try:
        for spec in SERVERS:
            try:
                children[spec.column] = Child(spec.command)
            except ChildError as exc:
                FAILURES.record("server start", spec.column, exc)
        # Rounds outermost and servers innermost: a burst of noise hits every server alike.
        for round_no in range(1, settings.rounds + 1):
            for load in LOADS:
                for spec in SERVERS:
                    child = children.get(spec.column)
                    if child is None:
                        continue
                    log(f"server: {spec.column}: {load.mode} x{load.conns} {load.size} B (round {round_no})")
                    result = attempt(load.key, spec.column, run_load, load, spec.url(child), settings)
                    runs.setdefault((load.key, spec.column), []).append(result)
    finally:
        for child in children.values():
            child.stop()
    return runs


def server_row(runs: Runs, label: str, key: str, field: str = "rate", scale: float = 1.0, **options: Any) -> Row:
    """A row from the best-rate run of each server (its latencies too); * where load.js was near saturation."""
    values: dict[str, Value] = {}
    flagged: set[str] = set()
    for spec in SERVERS:
        chosen = best(runs.get((key, spec.column), []), "rate")
        value = chosen.get(field) if chosen else None
        values[spec.column] = value * scale if value is not None else None
        if chosen and (chosen.get("cpu") or 0) > LOAD_SATURATED:
            flagged.add(spec.column)
    return Row(label, values, options.pop("unit", "/s"), flagged=flagged, **options)


def server_section(settings: Settings) -> Table:
    runs = measure_servers(settings)
    table = Table("SERVER (load: Node ws client, another process; 32 B messages unless said)",
                  [s.column for s in SERVERS], raw="raw TCP", peers=SERVER_PEERS)  # fmt: skip
    handshake_target = [Target("websockets sync", 1.0)]
    table.add(server_row(runs, "handshakes/s, sequential", "handshake1", targets=handshake_target))
    table.add(server_row(runs, "handshakes/s, 50 concurrent", "handshake50", targets=handshake_target))
    for conns in (1, 10, 100):
        key = f"echo{conns}"
        targets = [Target("websockets sync", 1.5)] if conns == 100 else []
        table.add(server_row(runs, f"echo msg/s, {conns} conn{'s' if conns > 1 else ''}", key, targets=targets))
        table.add(server_row(runs, "  p50 latency µs", key, "p50_us", unit="µs", higher_is_better=False))
        table.add(server_row(runs, "  p99 latency µs", key, "p99_us", unit="µs", higher_is_better=False))
    table.add(server_row(runs, "1 MiB echo MB/s", "echo1m", scale=MIB / 1e6, unit="MB/s"))
    table.notes += [
        "handshake: open + closing handshake; raw TCP: connect + close. Latency ratios: peer / blockws.",
        "best peer: the better of the websockets servers; Node ws is there for reference.",
        f"*: the load generator used over {LOAD_SATURATED:.0%} of a core in that run: the server may be faster.",
    ]
    return table


# -- memory -------------------------------------------------------------------------------


def server_idle_rss(spec: ServerSpec, settings: Settings) -> dict[str, Any]:
    """RSS growth of the server process per idle connection held open by load.js."""
    with Child(spec.command) as server:
        url = spec.url(server)
        # Warm-up: a few connections come and go first, so that lazy imports don't count.
        run_json(node("load.js", "--mode", "echo", "--url", url, "--conns", "10", "--duration", "0.1",
                      "--warmup", "0"), timeout=60)  # fmt: skip
        collect = "--expose-gc" in spec.command
        before = settled_rss(server.pid, collect=collect)
        hold = Child(node("load.js", "--mode", "hold", "--url", url, "--conns", str(settings.idle_connections)),
                     ready_timeout=120)  # fmt: skip
        try:
            opened = int(hold.info["opened"])
            if opened < settings.idle_connections:
                raise ChildError(f"opened {opened}/{settings.idle_connections} connections: {hold.info}")
            after = settled_rss(server.pid, 1.0, collect=collect)
        finally:
            hold.stop()
    return {"idle_rss": (after - before) / opened}


def memory_section(settings: Settings) -> list[Table]:
    n = settings.idle_connections
    servers = Table(f"MEMORY: server RSS per idle connection ({n:,} connections)", [s.column for s in SERVERS],
                    raw="raw TCP", peers=SERVER_PEERS)  # fmt: skip
    values: dict[str, Value] = {}
    for spec in SERVERS:
        log(f"memory: server {spec.column}, {n} idle connections")
        result = attempt("idle server RSS", spec.column, server_idle_rss, spec, settings)
        values[spec.column] = result["idle_rss"] / 1024 if result else None
    servers.add(Row("KiB per idle connection", values, "KiB", higher_is_better=False))

    client_specs = [s for s in CLIENTS if not s.env]  # memory doesn't depend on the accelerator
    size = settings.peak_size
    clients = Table(f"MEMORY: client ({n:,} idle connections in one process; one {size // MIB} MiB message received)",
                    [s.column for s in client_specs], raw="raw TCP", peers=CLIENT_PEERS)  # fmt: skip
    idle: dict[str, Value] = {}
    peak_rss: dict[str, Value] = {}
    peak_traced: dict[str, Value] = {}
    with Child(node("echo_server.js")) as server:
        for client in client_specs:
            log(f"memory: client {client.column}, {n} idle connections; one {size // MIB} MiB message")
            command = client_worker(client, server, "--idle", str(n))
            result = attempt("idle client RSS", client.column, run_json, command, 300)
            idle[client.column] = result["idle_rss"] / 1024 if result else None
            command = client_worker(client, server, "--peak", str(size))
            result = attempt("peak memory", client.column, run_json, command, 300)
            peak_rss[client.column] = result["peak_rss"] if result else None
            peak_traced[client.column] = result["peak_traced"] if result else None
    clients.add(Row("KiB per idle connection", idle, "KiB", higher_is_better=False))
    clients.add(Row(f"peak RSS growth / message size, {size // MIB} MiB", peak_rss, "×", higher_is_better=False))
    clients.add(Row(f"peak traced memory / message size, {size // MIB} MiB", peak_traced, "×", higher_is_better=False))
    clients.notes.append("peak: must be O(message) — a small constant (≈1 to hold it, ≈2 if it is joined from pieces)")
    return [servers, clients]


# -- main ------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="≈0.2 s per measurement (for tests), one round")
    parser.add_argument("--only", choices=["client", "server", "memory"], help="run one section")
    args = parser.parse_args()
    settings = Settings.make(args.quick)
    raise_fd_limit()
    try:
        ensure_python_packages()
        ensure_node_packages()
    except (subprocess.CalledProcessError, OSError) as exc:
        log(f"setup failed: {exc}")
        return 2
    print("\n".join(versions()), end="\n\n", flush=True)

    started = time.monotonic()
    tables: list[Table] = []
    if args.only in (None, "client"):
        tables.append(client_section(settings))
        print(render(tables[-1]), end="\n\n", flush=True)
    if args.only in (None, "server"):
        tables.append(server_section(settings))
        print(render(tables[-1]), end="\n\n", flush=True)
    if args.only in (None, "memory"):
        for table in memory_section(settings):
            tables.append(table)
            print(render(table), end="\n\n", flush=True)
    summary = render_verdicts([v for t in tables for v in verdicts(t)])
    if summary:
        print(summary)
    mode = "quick" if args.quick else "full"
    print(f"\n{mode} run, {time.monotonic() - started:.0f} s; throughput figures: best of {settings.rounds} run(s)")
    if FAILURES.subject:
        log(f"blockws measurements failed: {', '.join(FAILURES.subject)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
