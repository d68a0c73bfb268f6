"""Sphinx configuration: the guide and the API reference built from docstrings."""

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "blockws"
author = "the blockws developers"
extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.intersphinx"]
intersphinx_mapping = {}  # no network in CI: references to the stdlib stay plain text
autodoc_member_order = "bysource"
autodoc_typehints = "description"
napoleon_google_docstring = True
html_theme = "alabaster"
exclude_patterns = ["_build"]
nitpicky = False
