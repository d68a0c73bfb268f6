#!/usr/bin/env bash
# Builds the docs (guide + API reference from docstrings) into docs/_build/html.
# Warnings are errors: a broken reference or docstring fails the build.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
"$python" -c 'import sphinx' 2>/dev/null || "$python" -m pip install --quiet sphinx
"$python" -m sphinx -W --keep-going -q -b html "$here" "$here/_build/html"
echo "docs: $here/_build/html/index.html"
