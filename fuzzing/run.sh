#!/usr/bin/env bash
# Runs every atheris harness in fuzzing/ for SECONDS each (default 600), with
# a corpus per harness under fuzzing/corpus/ (git-ignored). Crashes are saved
# as crash-* files in fuzzing/artifacts/ and make the script fail.
# Needs atheris, installed beforehand (pip install atheris; .ci/run does).
#   fuzzing/run.sh [SECONDS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
seconds=${1:-600}
python=${PYTHON:-python3}
if ! "$python" -c 'import atheris' 2>/dev/null; then
  echo "fuzzing/run.sh: atheris is not installed for $python: $python -m pip install atheris" >&2
  exit 2
fi
mkdir -p "$here/artifacts"
rc=0
for harness in "$here"/fuzz_*.py; do
  name=$(basename "$harness" .py)
  mkdir -p "$here/corpus/$name"
  echo "== $name for ${seconds}s"
  "$python" "$harness" -max_total_time="$seconds" -print_final_stats=1 \
    -artifact_prefix="$here/artifacts/$name-" "$here/corpus/$name" 2>&1 \
    | grep -E "stat::number_of_executed_units|stat::peak_rss|ERROR|Exception|crash-|DONE" || rc=1
done
exit $rc
