"""The wheel says what it holds: pure Python (py3-none-any) unless the C accelerator was built.

The wheels are built from a copy of the sources, without build isolation
and without an index, so these tests never download anything; they need
setuptools 70.1 or later (the ``[test]`` extra brings it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["setup.py", "setup.cfg", "pyproject.toml", "README.md", "LICENSE"]


def _setuptools_builds_wheels() -> bool:
    try:
        from setuptools.command import bdist_wheel  # noqa: F401  (in setuptools itself since 70.1)
    except ImportError:
        return False
    return True


pytestmark = [
    pytest.mark.slow,  # each test builds a wheel
    pytest.mark.skipif(
        not _setuptools_builds_wheels(),
        reason="needs setuptools>=70.1 here (pip install -e '.[test]'): building in isolation would download it",
    ),
]


def build_wheel(tmp_path: Path, **env: str) -> zipfile.ZipFile:
    src = tmp_path / "src"
    (src / "blockws").mkdir(parents=True)
    for name in SOURCES:
        shutil.copy(ROOT / name, src / name)
    # The sources only: no accelerator built for the tests, no build/ left
    # by an earlier build that setuptools would take as up to date.
    for path in (ROOT / "blockws").iterdir():
        if path.suffix in (".py", ".c", ".typed"):
            shutil.copy(path, src / "blockws" / path.name)
    environ = {k: v for k, v in os.environ.items() if k not in ("BLOCKWS_NO_EXTENSIONS", "CC")}
    command = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index"]
    out = subprocess.run(
        [*command, "-w", str(tmp_path / "dist")],
        env={**environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    return zipfile.ZipFile(wheel)


def tags(wheel: zipfile.ZipFile) -> list[str]:
    (path,) = [name for name in wheel.namelist() if name.endswith(".dist-info/WHEEL")]
    lines = wheel.read(path).decode().splitlines()
    return [line.split(": ", 1)[1] for line in lines if line.startswith("Tag: ")]


@pytest.mark.parametrize(
    "env",
    [{"BLOCKWS_NO_EXTENSIONS": "1"}, {"CC": "false"}],
    ids=["BLOCKWS_NO_EXTENSIONS", "failing-compiler"],
)
def test_wheel_without_the_accelerator_is_pure_python(tmp_path, env):
    with build_wheel(tmp_path, **env) as wheel:
        assert tags(wheel) == ["py3-none-any"]
        assert not [name for name in wheel.namelist() if name.endswith((".so", ".pyd"))]
        assert "blockws/server.py" in wheel.namelist()
        assert any(name.endswith(".dist-info/licenses/LICENSE") for name in wheel.namelist())


@pytest.mark.skipif(
    shutil.which((sysconfig.get_config_var("CC") or "cc").split()[0]) is None, reason="no C compiler here"
)
def test_wheel_with_the_accelerator_is_tagged_for_this_python(tmp_path):
    with build_wheel(tmp_path) as wheel:
        (tag,) = tags(wheel)
        assert not tag.startswith("py3-none"), tag
        assert [name for name in wheel.namelist() if name.startswith("blockws/_speedups.")]
