#!/usr/bin/env bash
# Simulator validation (issue 6): a live `fleetserve serve` run against `fleetserve sim --validate` of the
# same arrivals, with a profiled step-time model.
#   benchmarks/sim_validation.sh REPLICAS LABEL SYNTHETIC_SPEC PROFILE_JSON [extra serve args...]
# e.g. benchmarks/sim_validation.sh 1 validate_live_cpu1 rate=0.36,n=48,prompt=uniform:64:512,output=uniform:32:256,seed=3 \
#          benchmarks/results/profile_cpu.json
# Run it alone on the machine (flock /tmp/fleetserve-cpu.lock ...): the live side is timed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPLICAS=$1 LABEL=$2 SPEC=$3 PROFILE=$4
shift 4
OUT=${OUT:-benchmarks/results}
PORT=${PORT:-8199}
wait_for() { for _ in $(seq 600); do curl -sf "$1" >/dev/null && return 0; sleep 0.5; done; return 1; }

.venv/bin/fleetserve serve --port "$PORT" --replicas "$REPLICAS" --no-access-log --log-level warning "$@" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
wait_for "http://127.0.0.1:$PORT/health"
.venv/bin/fleetserve bench serve --url "http://127.0.0.1:$PORT" --label "$LABEL" --synthetic "$SPEC" --no-progress \
    --json "$OUT/$LABEL.json" --requests-out "$OUT/$LABEL.jsonl"
kill -TERM $SERVER; wait $SERVER || true
trap - EXIT
.venv/bin/fleetserve sim --validate "$OUT/$LABEL.json" --fleet "cpu:$REPLICAS" --perf "$PROFILE" \
    --json "$OUT/${LABEL/live/sim}.json"
