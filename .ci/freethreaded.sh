#!/usr/bin/env bash
# A free-threaded CPython 3.13 (PEP 703, "python3.13t", built with
# --disable-gil) for CI, and the tests on it with the GIL off.
#
#     bash .ci/freethreaded.sh build   # prints the interpreter's path
#     bash .ci/freethreaded.sh test    # build (or reuse), then the fast
#                                      # tests and the threading stress test
#
# Python.org and Debian ship no free-threaded 3.13 for Debian 12, so it is
# built from Debian's source package of python3.13 (sid's or trixie's),
# fetched through a private apt configuration (APT_CONFIG): the system's
# sources, lists and cache are left as they are. The build (about 5 minutes
# on 2 cores) goes to a cache outside the clone, reused by later runs:
#     ${BLOCKWS_FT_PREFIX:-$HOME/.cache/blockws/python3.13t}
#
# Where it can't be built (no deb-src reachable, no compiler, no root to
# install the build dependencies), it says so loudly on stderr and exits 0
# (SKIPPED, as .ci/pythons.sh does for a missing version): CI machines
# differ. The tests failing on it do fail (exit 1).
set -euo pipefail
cd "$(dirname "$0")/.."

prefix=${BLOCKWS_FT_PREFIX:-$HOME/.cache/blockws/python3.13t}
python=$prefix/bin/python3.13t
work=

skipped() {
  printf '\n==== FREE-THREADED CPYTHON SKIPPED: %s ====\n\n' "$*" >&2
  exit 0
}

usable() {  # the interpreter in $prefix works, is free-threaded, has ssl, zlib, ctypes
  [ -x "$python" ] && "$python" -c '
import sys, sysconfig
import ssl, zlib, ctypes  # pip needs ssl and zlib
sys.exit(0 if sysconfig.get_config_var("Py_GIL_DISABLED") else 1)' 2>/dev/null
}

build() {
  if usable; then
    echo "free-threaded CPython: reusing $python" >&2
    return 0
  fi
  # .ci/run builds it in the background first, then tests: not twice.
  [ -z "${BLOCKWS_FT_NO_BUILD:-}" ] || skipped "no free-threaded CPython in $prefix (the build's log above says why)"
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    # What ssl, zlib, ctypes, bz2, lzma, sqlite3, readline, uuid, dbm and
    # curses need; a compiler and make.
    local deps=(build-essential pkg-config libssl-dev zlib1g-dev libffi-dev libbz2-dev
      liblzma-dev libsqlite3-dev libreadline-dev uuid-dev libgdbm-dev libncurses-dev xz-utils)
    local missing=() dep
    for dep in "${deps[@]}"; do
      dpkg-query -W -f='${Status}' "$dep" 2>/dev/null | grep -q 'ok installed' || missing+=("$dep")
    done
    if [ ${#missing[@]} -gt 0 ]; then
      local install=(env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}")
      "${install[@]}" >&2 || { apt-get update -q >&2 && "${install[@]}" >&2; } ||
        skipped "could not install the build dependencies (${missing[*]})"
    fi
  fi
  command -v cc >/dev/null && command -v make >/dev/null || skipped "no C compiler or make (and not root to install them)"
  command -v apt-get >/dev/null || skipped "no apt-get to fetch Debian's python3.13 source"

  work=$(mktemp -d "${TMPDIR:-/tmp}/blockws-ft.XXXXXX")
  # Removed whatever happens: the build tree is ~500 MB.
  trap 'rm -rf "$work"' EXIT

  # A private apt: its own sources (deb-src only), lists and cache.
  mkdir -p "$work/apt/lists/partial" "$work/apt/cache/archives/partial" "$work/apt/sources.list.d"
  local keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  cat >"$work/apt/sources.list" <<EOF
deb-src [signed-by=$keyring] http://deb.debian.org/debian sid main
deb-src [signed-by=$keyring] http://deb.debian.org/debian trixie main
EOF
  cat >"$work/apt/apt.conf" <<EOF
Dir::Etc::sourcelist "$work/apt/sources.list";
Dir::Etc::sourceparts "$work/apt/sources.list.d";
Dir::State::lists "$work/apt/lists";
Dir::Cache "$work/apt/cache";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Sandbox::User "$(id -un)";
Debug::NoLocking "true";
EOF
  export APT_CONFIG=$work/apt/apt.conf
  apt-get update -q >&2 || skipped "apt-get update failed on Debian's deb-src (sid, trixie)"

  # Newest first; a version just replaced on the mirror may answer 404, so
  # the next one is tried.
  local versions version fetched=
  versions=$(apt-cache showsrc python3.13 2>/dev/null | sed -n 's/^Version: //p' | sort -ruV)
  [ -n "$versions" ] || skipped "Debian's deb-src lists no python3.13"
  mkdir "$work/src"
  for version in $versions; do
    echo "free-threaded CPython: fetching Debian's python3.13 $version" >&2
    if (cd "$work/src" && apt-get source -q --download-only "python3.13=$version" >&2); then
      fetched=$version
      break
    fi
    rm -f "$work/src"/*
  done
  [ -n "$fetched" ] || skipped "no version of python3.13's source could be downloaded ($versions)"
  unset APT_CONFIG

  # The upstream tarball as it is (Debian's patches are for its own layout).
  local tarball
  tarball=$(ls "$work/src"/python3.13_*.orig.tar.*)
  mkdir "$work/build"
  tar -xf "$tarball" -C "$work/build" --strip-components=1
  echo "free-threaded CPython: building $fetched into $prefix (about 5 minutes on 2 cores)" >&2
  local started=$SECONDS
  rm -rf "$prefix"
  (
    cd "$work/build"
    ./configure --disable-gil --prefix="$prefix" &&
      make -j"$(nproc 2>/dev/null || echo 2)" &&
      make install
  ) >"$work/build.log" 2>&1 || {
    tail -30 "$work/build.log" >&2
    skipped "the build failed (above: the end of its log)"
  }
  usable || {
    grep -iE "failed to build|modules? .*missing|not built" "$work/build.log" >&2 || true
    skipped "the interpreter built in $prefix lacks ssl, zlib or ctypes, or has the GIL"
  }
  echo "free-threaded CPython: built in $((SECONDS - started)) s" >&2
}

case "${1:-test}" in
  build)
    build
    echo "$python"
    ;;
  test)
    build
    echo "-- free-threaded CPython: $("$python" -VV)"
    venv=.ci/venv-3.13t
    start=$SECONDS
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    # Not the [test] extra: a pinned list of what installs on 3.13t (see
    # the file for what is left out, and why).
    "$venv/bin/python" -m pip install --quiet -r .ci/requirements-ft.txt
    "$venv/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
    # PYTHON_GIL unset: a module that turns the GIL back on warns, and the
    # warning is an error for pytest (filterwarnings = error) and here.
    unset PYTHON_GIL
    "$venv/bin/python" -W error -c '
import sys
import blockws, blockws.frames as f
assert f.ACCELERATED, "the C accelerator did not load"
assert not sys._is_gil_enabled(), "the GIL is on"
print("C accelerator: True; GIL enabled:", sys._is_gil_enabled())'
    echo "-- free-threaded CPython: installed in $((SECONDS - start)) s"
    start=$SECONDS
    "$venv/bin/python" -m pytest -x -rs -p no:cacheprovider -m "not slow"
    echo "-- free-threaded CPython: fast tests passed in $((SECONDS - start)) s"
    start=$SECONDS
    BLOCKWS_THREADING_ROUNDS=${BLOCKWS_THREADING_ROUNDS:-100} \
      "$venv/bin/python" -m pytest -rsx -p no:cacheprovider -o timeout=600 tests/test_threading_contract.py
    echo "-- free-threaded CPython: threading stress test passed in $((SECONDS - start)) s"
    ;;
  *)
    echo "usage: $0 [build|test]" >&2
    exit 2
    ;;
esac
