#!/usr/bin/env bash
# Replay a time-scaled slice of the Azure conversation trace against `fleetserve serve` and against
# llama-cpp-python's OpenAI server on the same GGUF, then show the two summaries side by side.
# Scaling: the first 60 requests, time stretched 5x (--speedup 0.2, about 1.1 requests/s), prompt and
# output lengths x0.25, prompts capped at 512 tokens and outputs at 64; chat endpoint for both servers.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/azure_replay}
TRACE=${TRACE:-../shared/traces/azure_llm_2023_conv.csv}
[ -f "$TRACE" ] || TRACE=tests/data/azure_llm_2023_conv_head300.csv
PY=.venv/bin/python
mkdir -p "$OUT"
ARGS=(--trace "$TRACE" --num-requests 60 --speedup 0.2 --scale-lengths 0.25 --max-prompt-tokens 512
      --max-output-tokens 64 --endpoint chat --slo ttft=2000,tpot=200 --no-progress)

wait_for() { for _ in $(seq 600); do curl -sf "$1" >/dev/null && return 0; sleep 0.5; done; return 1; }

$PY -m fleetserve.cli serve --port 8100 --no-access-log --log-level warning &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
wait_for http://127.0.0.1:8100/health
.venv/bin/fleetserve bench serve --url http://127.0.0.1:8100 "${ARGS[@]}" --label fleetserve \
    --json "$OUT/fleetserve.json" --requests-out "$OUT/fleetserve.jsonl" --plot "$OUT/fleetserve"
kill $SERVER; wait $SERVER || true

GGUF=$($PY -c "from fleetserve.model.loader import default_gguf_path; print(default_gguf_path())")
$PY -m llama_cpp.server --model "$GGUF" --n_ctx 4096 --n_threads "$(nproc)" --port 8101 --interrupt_requests False >/dev/null 2>&1 &
SERVER=$!
wait_for http://127.0.0.1:8101/v1/models
.venv/bin/fleetserve bench serve --url http://127.0.0.1:8101 "${ARGS[@]}" --label llama-cpp-python \
    --json "$OUT/llamacpp.json" --requests-out "$OUT/llamacpp.jsonl" --plot "$OUT/llamacpp"
kill $SERVER; wait $SERVER || true

.venv/bin/fleetserve bench compare "$OUT/fleetserve.json" "$OUT/llamacpp.json"
