#!/usr/bin/env bash
# Runs the Autobahn|Testsuite against blockws in both modes, strictly
# (NON-STRICT counts as a failure): our echo server (fuzzingclient) and our
# client driver (fuzzingserver). Needs root (the suite lives in a chroot).
#   compliance/run.sh [CASES]        default: every case but 12.* and 13.* (deflate)
# Env: AUTOBAHN_EXCLUDE (default '12.*,13.*'; empty: every case), OUTDIR
#   (default compliance/reports). The defaults live in autobahn/run.sh.
#   AUTOBAHN_PARALLEL=1: both modes at once, their outputs shown one after
#   the other (about twice as fast with two cores or more).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cases=${1:-*}
export AUTOBAHN_STRICT=1
python=${PYTHON:-python3}

bash "$here/autobahn/install.sh"

port=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$python" "$here/server.py" "$port" &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  "$python" -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$port" 2>/dev/null && break
  sleep 0.2
done
cport=$("$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
server_mode() { bash "$here/autobahn/run.sh" server "ws://127.0.0.1:$port" "$cases" ""; }
client_mode() {
  bash "$here/autobahn/run.sh" client "$cport" "$cases" "" "$python" "$here/client.py" "ws://127.0.0.1:$cport"
}
rc=0
if [ -n "${AUTOBAHN_PARALLEL:-}" ]; then
  # Each mode is one single-threaded wstest (Python 2) taking turns with
  # blockws: about one core busy, so two modes fit two cores.
  logs=$(mktemp -d)
  server_mode >"$logs/server" 2>&1 &
  spid=$!
  client_mode >"$logs/client" 2>&1 &
  cpid=$!
  wait $spid || rc=1
  wait $cpid || rc=1
  cat "$logs/server" "$logs/client"
  rm -rf "$logs"
else
  server_mode || rc=1
  client_mode || rc=1
fi
exit $rc
