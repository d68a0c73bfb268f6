"""Build script: metadata is in setup.cfg; this adds the optional C accelerator.

The accelerator (masking) is built when a compiler is available and skipped
otherwise: blockws works the same without it, only slower. A wheel without
it is a pure-Python one (``py3-none-any``), not one tagged for a platform
it has no code for. Set BLOCKWS_NO_EXTENSIONS=1 to skip building it.
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

try:
    from setuptools.command.bdist_wheel import bdist_wheel  # setuptools >= 70.1
except ImportError:
    try:
        from wheel.bdist_wheel import bdist_wheel
    except ImportError:  # no wheel support at all: nothing to tag
        bdist_wheel = None


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


commands = {"build_ext": OptionalBuildExt}

if bdist_wheel is not None:

    class TagAsBuilt(bdist_wheel):
        """Tag the wheel by what the build made, not by what setup() listed.

        bdist_wheel decides "pure or not" in finalize_options(), from
        ext_modules alone, before anything is compiled; here the build runs
        first and the decision follows its outcome.
        """

        def run(self):
            if not self.skip_build:
                # As bdist_wheel.run() would, before its own build.
                build_scripts = self.reinitialize_command("build_scripts")
                build_scripts.executable = "python"
                build_scripts.force = True
                self.reinitialize_command("build_ext").inplace = False
                self.run_command("build")
                self.skip_build = True  # so install doesn't build (and fail) again
            built = self.get_finalized_command("build_ext").get_outputs()
            if not any(os.path.exists(path) for path in built):
                # Pure: tagged py3-none-any, and install puts the modules at
                # the wheel's root (purelib), not under .data/platlib.
                self.distribution.ext_modules = []
                self.root_is_pure = True
            super().run()

    commands["bdist_wheel"] = TagAsBuilt

extensions = [Extension("blockws._speedups", ["blockws/_speedups.c"])]
if os.environ.get("BLOCKWS_NO_EXTENSIONS"):
    extensions = []

setup(ext_modules=extensions, cmdclass=commands)
