#!/usr/bin/env bash
# Fixed-seed `fleetserve sim` runs whose results must not move when the code is reshaped.
#
#   benchmarks/sim_golden.sh CODE_ROOT OUT_DIR
#
# Runs the simulator from the checkout at CODE_ROOT (for example a `git worktree` of an older commit) with
# this checkout's virtual environment, and writes each run's JSON (without wall and CPU timings, which no
# two runs share) and per-request log into OUT_DIR. Two checkouts agree when `diff -r OUT_A OUT_B` prints
# nothing. The runs cover prefix- and load-aware routing on the Mooncake trace, mixed hardware and a small
# token budget on the Azure trace, and preemption with and without decode skipping on a synthetic load.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
ROOT=$(cd "$1" && pwd); mkdir -p "$2"; OUT=$(cd "$2" && pwd)
PY="$HERE/.venv/bin/python"
TRACES=$(cd "${FLEETSERVE_TRACES:-$HERE/../shared/traces}" && pwd)
LLAMA="$HERE/benchmarks/models/llama-3-8b.json"
run() {
  local name=$1; shift
  # -P: the code under test comes from PYTHONPATH alone, never from the current directory.
  PYTHONPATH="$ROOT" "$PY" -P -c "import sys; from fleetserve.cli import main; sys.exit(main())" sim "$@" \
    --json "$OUT/$name.raw.json" --requests-out "$OUT/$name.requests.jsonl" > /dev/null
  "$PY" - "$OUT/$name.raw.json" "$OUT/$name.json" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))
for key in ("wall_s", "cpu_s", "requests_per_cpu_s"):
    result.get("sim", {}).pop(key, None)
json.dump(result, open(sys.argv[2], "w"), indent=1, sort_keys=True)
PY
  rm "$OUT/$name.raw.json"
}
run mooncake_prefix --trace "$TRACES/mooncake_synthetic.jsonl" --num-requests 400 --fleet h100:4 --policy prefix \
  --speedup 4 --model-config "$LLAMA"
run mooncake_two --trace "$TRACES/mooncake_synthetic.jsonl" --num-requests 400 --fleet h100:4 --policy two_choice \
  --speedup 4 --model-config "$LLAMA"
run azure_least --trace "$TRACES/azure_llm_2023_conv.csv" --num-requests 1500 --fleet h100:2,a100:2 \
  --policy least_loaded --speedup 2 --model-config "$LLAMA"
run azure_rr_small --trace "$TRACES/azure_llm_2023_conv.csv" --num-requests 600 --fleet l4:2 --policy round_robin \
  --max-num-batched-tokens 256 --max-num-seqs 16 --model-config "$LLAMA"
run synth_preempt --synthetic 'rate=40,n=300,prompt=uniform:64:1024,output=uniform:32:512,seed=5' --fleet cpu:2 \
  --policy least_loaded
run synth_noskip --synthetic 'rate=40,n=300,prompt=uniform:64:1024,output=uniform:32:512,seed=5' --fleet cpu:2 \
  --policy least_loaded --no-skip
PYTHONPATH="$ROOT" "$PY" -P -c "import fleetserve; print('wrote $OUT with', fleetserve.__file__)"
