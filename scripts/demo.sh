#!/usr/bin/env bash
# The quick start: installs what is needed, starts `shoal up` (nats-server + coordinator +
# 2 workers), runs the demo batch, writes its images to ./out, and stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

export SHOAL_GRPC_PORT="${SHOAL_GRPC_PORT:-50051}"
export SHOAL_ADDR="127.0.0.1:${SHOAL_GRPC_PORT}"
log=".shoal/up.log"
mkdir -p .shoal
node bin/shoal.js up --workers "${SHOAL_WORKERS:-2}" --log-format json >"$log.out" 2>"$log" &
up_pid=$!
cleanup() {
  if kill -0 "$up_pid" 2>/dev/null; then
    kill -TERM "$up_pid" 2>/dev/null || true
    wait "$up_pid" 2>/dev/null || true
  fi
}
trap cleanup EXIT INT TERM

echo "demo: waiting for shoal up (logs in $log)" >&2
for _ in $(seq 1 240); do
  if grep -q "Shoal is up" "$log.out" 2>/dev/null; then break; fi
  if ! kill -0 "$up_pid" 2>/dev/null; then echo "demo: shoal up exited; see $log" >&2; tail -20 "$log" >&2; exit 1; fi
  sleep 0.5
done
cat "$log.out"
node bin/shoal.js workers
batch_id=$(node bin/shoal.js submit examples/demo-batch.json)
node bin/shoal.js watch "$batch_id" >/dev/null || true
node bin/shoal.js get "$batch_id"
node bin/shoal.js results "$batch_id" --out ./out
echo "demo: images are in ./out" >&2
