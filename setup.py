"""Build script: metadata is in setup.cfg; this adds the optional C accelerator.

The accelerator (masking) is built when a compiler is available and skipped
silently otherwise: blockws works the same without it, only slower.
Set BLOCKWS_NO_EXTENSIONS=1 to skip building it.
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    def run(self):
        try:
            super().run()
        except Exception as exc:  # no compiler, no headers
            print(f"blockws: not building the C accelerator ({exc})")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            print(f"blockws: not building {ext.name} ({exc})")


extensions = [Extension("blockws._speedups", ["blockws/_speedups.c"])]
if os.environ.get("BLOCKWS_NO_EXTENSIONS"):
    extensions = []

setup(ext_modules=extensions, cmdclass={"build_ext": OptionalBuildExt})
