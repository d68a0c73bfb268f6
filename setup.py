"""Build script: everything is in setup.cfg except the optional C accelerator."""

from setuptools import setup

setup()
