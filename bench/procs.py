"""Child processes for the benchmarks: servers that announce themselves, workers that report.

Every long-lived child prints one JSON line when it is ready and stops when
its standard input closes, so a crashed driver never leaves servers behind.
"""

from __future__ import annotations

import json
import os
import resource
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
NODE_DIR = BENCH_DIR / "node"
HOST = "127.0.0.1"
# Listen backlogs of every server under test: 50 concurrent handshakes and
# 1,000 idle connections must not overflow a small default (socketserver's is 5).
BACKLOG = 1024
# With two CPUs or more, round trips are measured with the reference server
# pinned to the first CPU and the client to the second: left to the
# scheduler, a round trip changed 4x from run to run (a light client that
# shares the server's CPU skips the cross-CPU wake-up), which made the raw
# TCP ceiling bimodal. Pinned, every client pays the same wake-up. Bulk
# transfers are measured unpinned: pinned, the server's single CPU is the
# bottleneck and the figure would no longer measure the client.
CPUS = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
SERVER_CPUS: set[int] | None = {CPUS[0]} if len(CPUS) >= 2 else None
CLIENT_CPUS: set[int] | None = {CPUS[1]} if len(CPUS) >= 2 else None


class ChildError(RuntimeError):
    """A child process failed, timed out or printed something that isn't JSON."""


class Child:
    """A server or worker process: started, read until its ready line, stopped by closing its stdin."""

    def __init__(
        self,
        args: list[str],
        env: dict[str, str] | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        self.args = args
        self.popen = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=BENCH_DIR)
        self._pending = b""  # stdout read past the last line returned
        try:
            self.info: dict[str, Any] = self.read_json(ready_timeout)
        except BaseException:
            self.stop()
            raise

    def pin(self, cpus: set[int] | None) -> None:
        """Run the child's main thread on ``cpus`` only (None: on every CPU)."""
        if CPUS:
            os.sched_setaffinity(self.pid, cpus if cpus is not None else set(CPUS))

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def name(self) -> str:
        return " ".join(self.args)

    def ask(self, command: str, timeout: float) -> dict[str, Any]:
        """Send one command line and read the JSON line that answers it."""
        assert self.popen.stdin is not None
        try:
            self.popen.stdin.write(command.encode() + b"\n")
            self.popen.stdin.flush()
        except OSError as exc:
            raise ChildError(f"{self.name} is gone: {exc}") from None
        return self.read_json(timeout)

    def read_json(self, timeout: float) -> dict[str, Any]:
        """The next stdout line, parsed; ChildError on timeout, exit or garbage."""
        line = self._read_line(timeout)
        try:
            result: dict[str, Any] = json.loads(line)
        except ValueError:
            raise ChildError(f"{self.name} printed {line[:200]!r}, not JSON") from None
        return result

    def _read_line(self, timeout: float) -> bytes:
        # Reads the pipe's descriptor directly: a buffered reader could hold a
        # second line that select() then never reports.
        assert self.popen.stdout is not None
        fd = self.popen.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise ChildError(f"{self.name}: no answer within {timeout:.0f} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise ChildError(f"{self.name} exited with status {self.popen.wait()}")
            self._pending += chunk
        line, _, self._pending = self._pending.partition(b"\n")
        return line

    def stop(self) -> None:
        if self.popen.poll() is None:
            try:
                assert self.popen.stdin is not None
                self.popen.stdin.close()
                self.popen.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.popen.kill()
                self.popen.wait()
        if self.popen.stdout is not None:
            self.popen.stdout.close()

    def __enter__(self) -> Child:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def run_json(args: list[str], timeout: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run a worker to completion and return the JSON object on its last stdout line."""
    try:
        done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env, cwd=BENCH_DIR)
    except subprocess.TimeoutExpired:
        raise ChildError(f"{' '.join(args)}: timed out after {timeout:.0f} s") from None
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        raise ChildError(f"{' '.join(args)} exited with status {done.returncode}: {' | '.join(tail)}")
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise ChildError(f"{' '.join(args)} printed nothing")
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except ValueError:
        raise ChildError(f"not JSON: {lines[-1]!r}") from None
    return result


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of a process (default: this one), from /proc."""
    with open(f"/proc/{pid or 'self'}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise ChildError(f"no VmRSS for process {pid}")


def settled_rss(pid: int, settle: float = 0.5, collect: bool = False) -> int:
    """RSS after letting the process finish what the last connections started.

    ``collect``: the process is a Node server started with --expose-gc, which
    collects garbage on SIGUSR2 (V8 frees lazily; Python frees on the spot).
    """
    if collect:
        os.kill(pid, signal.SIGUSR2)
    time.sleep(settle)
    return rss_bytes(pid)


def raise_fd_limit() -> None:
    """1,000 connections need more descriptors than a 1024 soft limit leaves (children inherit this)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def python(script: str, *args: str) -> list[str]:
    """Command line running a script of this directory with this interpreter."""
    return [sys.executable, str(BENCH_DIR / script), *args]


def node(script: str, *args: str, flags: tuple[str, ...] = ()) -> list[str]:
    """Command line running a script of bench/node (``flags`` go to node itself)."""
    return ["node", *flags, str(NODE_DIR / script), *args]


def env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
