#!/usr/bin/env bash
# Run the fast tests (-m "not slow") on every CPython that setup.cfg claims
# (3.9-3.13) and that this machine has, each in its own virtual environment
# (.ci/venv-3.X, where the C accelerator is built for that version).
# Called by .ci/run after its main test step; run alone to check one version:
#     bash .ci/pythons.sh 3.9
# Versions not installed are reported as SKIPPED, not failed: CI machines
# differ. Exits non-zero if the tests fail on any version that is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

versions=("$@")
if [ ${#versions[@]} = 0 ]; then
  versions=(3.9 3.10 3.11 3.12 3.13)
fi
# The main step already ran everything on this one.
skip=${SKIP_VERSION:-}

# The slow tests (timeouts that must expire, subprocesses, wheel builds, long
# hypothesis runs) run in the main step only: they would take most of CI's
# 40 minutes here, and what differs between versions, the interpreter and
# the standard library, the fast tests exercise in every module.
tests=(-x -rs -p no:cacheprovider -m "not slow")

find_python() {  # prints the path of a working python$1, or fails
  local version=$1 candidate
  for candidate in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$version".*/bin/python"$version" \
    "$(command -v "python$version" || true)"; do
    # A pyenv shim exists for versions that aren't selected, and then fails:
    # ask the interpreter itself.
    if [ -n "$candidate" ] && [ -x "$candidate" ] &&
      [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$version" ]; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

failed=()
for version in "${versions[@]}"; do
  if [ "$version" = "$skip" ]; then
    continue
  fi
  if ! interpreter=$(find_python "$version"); then
    echo "SKIPPED: Python $version not installed"
    continue
  fi
  echo "-- Python $version ($interpreter)"
  start=$SECONDS
  venv=.ci/venv-$version
  "$interpreter" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  # Editable, as in the main step: the accelerator is built in place as
  # blockws/_speedups.cpython-3X-*.so, beside the other versions' builds.
  "$venv/bin/python" -m pip install --quiet -e '.[test]'
  "$venv/bin/python" -c 'import blockws.frames as f; print("C accelerator:", f.ACCELERATED)'
  echo "-- Python $version: installed in $((SECONDS - start)) s"
  start=$SECONDS
  if "$venv/bin/python" -m pytest "${tests[@]}"; then
    echo "-- Python $version: passed in $((SECONDS - start)) s"
  else
    echo "-- Python $version: FAILED" >&2
    failed+=("$version")
  fi
done
if [ ${#failed[@]} != 0 ]; then
  echo "tests failed on Python ${failed[*]}" >&2
  exit 1
fi
