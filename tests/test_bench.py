"""The benchmark suite stays runnable: quick runs (client side, fan-out) exit 0 and print their tables.

Opt-in (``pytest --bench``): bench/run.py installs the peers it compares
against (pip, npm) and times them. .ci/run runs it in its own step.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.bench, pytest.mark.slow]

BENCH = Path(__file__).resolve().parent.parent / "bench"
RUN = BENCH / "run.py"


def test_quick_client_benchmark() -> None:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: the reference servers are Node scripts")
    done = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--only", "client"],
        capture_output=True,
        text=True,
        timeout=50,  # well inside pytest's 60 s: a hang fails here, with the output
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    table = done.stdout
    assert "blockws" in table
    assert "32 B round trips/s" in table
    assert "PASS" in table or "MISS" in table
    assert "—" not in table.split("CLIENT", 1)[1].split("best peer:", 1)[0], f"a figure is missing:\n{table}"


def test_memory_per_connection_runs() -> None:
    """bench/memory_per_connection.py at a small scale: every row and the breakdown come out."""
    script = RUN.parent / "memory_per_connection.py"
    done = subprocess.run(
        [sys.executable, str(script), "--connections", "30", "--breakdown", "30"],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    for row in ("tcp ", "blockws ", "deflate ", "lean ", "zlib deflate state", "protocol.py", "total"):
        assert row in done.stdout, done.stdout


def test_quick_broadcast_benchmark() -> None:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed: one of the fan-out servers is a Node script")
    done = subprocess.run(
        [sys.executable, str(BENCH / "broadcast.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=50,  # well inside pytest's 60 s (a quick run takes about 10 s)
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    table = done.stdout
    assert "FAN-OUT: deliveries/s" in table
    assert "WITH ONE STALLED CLIENT" in table
    assert "targets met" in table
    rates = table.split("FAN-OUT: deliveries/s", 1)[1].split("STALLED CLIENT: what", 1)[0]
    assert "—" not in rates, f"a figure is missing:\n{table}\nstderr:\n{done.stderr}"
