#!/usr/bin/env bash
# Inter-token latency under load with and without a step-time bound (`fleetserve serve --max-step-ms`).
#
#   benchmarks/itl_step_bound.sh [BOUND_MS ...]        (default: none 200 150; "none" runs without a bound)
#
# Replays 60 s of the Azure conversation trace at its own pace (about 3 requests/s; SPEEDUP=0.25 sends at a
# quarter of it), lengths x0.25, prompts capped at 512 tokens and outputs at 64, /v1/completions, against a
# fresh `fleetserve serve` for each bound, holding /tmp/fleetserve-cpu.lock for the whole run. Results go to
# $OUT/<bound>.json and .jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/itl_step_bound}
TRACE=${TRACE:-../shared/traces/azure_llm_2023_conv.csv}
PORT=${PORT:-8310}
PY=${PY:-.venv/bin/python}
BOUNDS=("$@"); [ ${#BOUNDS[@]} -gt 0 ] || BOUNDS=(none 200 150)
mkdir -p "$OUT"
ARGS=(--trace "$TRACE" --speedup "${SPEEDUP:-1}" --duration 60 --scale-lengths 0.25 --max-prompt-tokens 512 --max-output-tokens 64
      --endpoint completions --slo ttft=2000,tpot=200 --no-progress)

wait_for() { for _ in $(seq 600); do curl -sf "$1" >/dev/null && return 0; sleep 0.5; done; return 1; }

exec 9>/tmp/fleetserve-cpu.lock
flock 9
for bound in "${BOUNDS[@]}"; do
  flags=(); [ "$bound" = none ] || flags=(--max-step-ms "$bound")
  $PY -m fleetserve.cli serve --port "$PORT" --no-access-log --log-level warning "${flags[@]}" 9>&- &
  server=$!
  wait_for "http://127.0.0.1:$PORT/health"
  $PY -m fleetserve.cli bench serve --url "http://127.0.0.1:$PORT" "${ARGS[@]}" --label "max-step-ms $bound" \
      --json "$OUT/$bound.json" --requests-out "$OUT/$bound.jsonl"
  kill "$server"; wait "$server" || true
done
