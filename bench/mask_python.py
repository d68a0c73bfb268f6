"""Pure-Python masking strategies against each other, per payload size.

    python bench/mask_python.py [--rounds N] [--sizes 0,1,...] [--memory]

Prints MB/s (ns per call for the empty payload) for each strategy of
:mod:`blockws.frames` (``int``: the payload XOR the key as one big integer;
``translate``: four strided ``bytes.translate`` passes; ``chunked``:
big-integer XOR in 32 KiB pieces), for ``_mask_python`` (which picks one by
size) and for the C accelerator when built. ``--memory`` adds the peak of
Python allocations (tracemalloc) while masking 16 MiB, as a multiple of the
payload.

Timed with the thread's CPU time, best of ``--rounds`` interleaved runs:
this machine is shared, and wall-clock figures moved by 30 % from run to run
while CPU-time figures moved by 2 %.

Measured on CPython 3.11, 2 shared cores (MB/s; the crossovers set
``_TRANSLATE_MIN`` and ``_CHUNKED_MIN``)::

    size      int  translate  chunked
    1 KiB     359        310        -
    2 KiB     415        416        -
    4 KiB     454        518        -
    64 KiB      -        663      577
    128 KiB     -        548      636
    1 MiB       -        373      615
"""

from __future__ import annotations

import argparse
import functools
import os
import time
import timeit
import tracemalloc
from collections.abc import Callable

from blockws import frames

Masker = Callable[[bytes, bytes], bytes]

SIZES = [0, 1, 2, 7, 16, 125, 126, 1024, 2048, 4096, 16384, 65536, 131072, 1 << 20, 16 << 20]
KEY = b"\x12\x34\x56\x78"


def strategies() -> dict[str, Masker]:
    found: dict[str, Masker] = {
        "int": frames._mask_int,
        "translate": frames._mask_translate,
        "chunked": frames._mask_chunked,
        "_mask_python": frames._mask_python,
    }
    try:
        from blockws import _speedups  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        pass
    else:
        found["C"] = _speedups.mask
    return found


def measure(maskers: dict[str, Masker], size: int, rounds: int) -> dict[str, float]:
    """Seconds per call, best of ``rounds``, the maskers interleaved within each round."""
    data = os.urandom(size)
    number = max(1, min(20_000, (1 << 20) // max(size, 1)))
    best = dict.fromkeys(maskers, float("inf"))
    for _ in range(rounds):
        for name, masker in maskers.items():
            timer = timeit.Timer(functools.partial(masker, data, KEY), timer=time.thread_time)
            best[name] = min(best[name], timer.timeit(number) / number)
    return best


def peak_ratio(masker: Masker, size: int) -> float:
    """Peak traced allocations while masking ``size`` bytes, as a multiple of ``size`` (the input excluded)."""
    data = os.urandom(size)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        masker(data, KEY)
        return tracemalloc.get_traced_memory()[1] / size
    finally:
        tracemalloc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--sizes", help="comma-separated payload sizes in bytes")
    parser.add_argument("--memory", action="store_true", help="also the tracemalloc peak for 16 MiB")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else SIZES
    maskers = strategies()
    print("size".rjust(9), *(name.rjust(13) for name in maskers))
    for size in sizes:
        best = measure(maskers, size, args.rounds)
        cells = [f"{t * 1e9:.0f} ns" if not size else f"{size / t / 1e6:,.0f}" for t in best.values()]
        print(str(size).rjust(9), *(cell.rjust(13) for cell in cells), flush=True)
    if args.memory:
        print("\npeak traced memory / payload, 16 MiB:")
        for name, masker in maskers.items():
            print(f"  {name:13} {peak_ratio(masker, 16 << 20):.2f}")


if __name__ == "__main__":
    main()
