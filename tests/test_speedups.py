"""The C accelerator and the pure-Python masking agree (CI runs both paths)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockws import frames

speedups = pytest.importorskip("blockws._speedups", reason="the C accelerator is not built")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000), st.binary(min_size=4, max_size=4))
def test_c_mask_equals_python_mask(data: bytes, key: bytes) -> None:
    assert speedups.mask(data, key) == frames._mask_python(data, key)
    assert speedups.mask(bytearray(data), key) == frames._mask_python(data, key)
    assert speedups.mask(memoryview(data)[1:], key) == frames._mask_python(data[1:], key)


@pytest.mark.parametrize(
    "size",
    sorted(
        {0, 1, 7, 125, 126, (1 << 20) + 1, (4 << 20) + 3}
        | {edge + d for edge in (frames._TRANSLATE_MIN, frames._CHUNKED_MIN, 3 * frames._CHUNK) for d in (-1, 0, 1, 2)}
    ),
)
def test_c_mask_equals_every_python_strategy(size: int) -> None:
    data, key = os.urandom(size), os.urandom(4)
    for offset in range(4):
        rotated = key[offset:] + key[:offset]  # as apply_mask rotates it
        expected = speedups.mask(data, rotated)
        for masker in (frames._mask_python, frames._mask_int, frames._mask_translate, frames._mask_chunked):
            for buffer in (data, bytearray(data), memoryview(data)):
                assert masker(buffer, rotated) == expected, (masker.__name__, type(buffer), offset)


def test_c_mask_rejects_bad_keys() -> None:
    with pytest.raises(ValueError):
        speedups.mask(b"abc", b"12345")


def test_environment_variable_forces_pure_python() -> None:
    code = "import blockws.frames as f; print(f.ACCELERATED)"
    env = {**os.environ, "BLOCKWS_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    env.pop("BLOCKWS_NO_EXTENSIONS")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
