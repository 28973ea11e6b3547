#!/usr/bin/env bash
# The engine on a machine it shares: each workload idle, then beside one busy process (a plain Python busy loop,
# which stands in for another tenant or a load generator's spinning pacer), with --threads auto, 2 and 1.
#   offline: `fleetserve bench offline` (N requests, prompts 64-512, outputs 64-256)
#   replay:  `fleetserve serve` driven by `fleetserve bench serve` on the same machine, streaming chat requests
#            of 200-240 prompt and 64 output tokens, 8 in flight
# Run it alone on the machine (flock /tmp/fleetserve-cpu.lock ...). WHAT=offline|replay|both, N=64 by default.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/shared_machine_threads}
WHAT=${WHAT:-both}
N=${N:-64}
THREADS=${THREADS:-auto 2 1}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"

wait_for() { for _ in $(seq 600); do curl -sf "$1" >/dev/null && return 0; sleep 0.5; done; return 1; }

offline() {  # label threads
    $PY -m fleetserve.cli bench offline --num-requests "$N" --threads "$2" --json "$OUT/offline_$1_t$2.json" \
        | sed "s/^/offline $1 --threads $2: /"
}

replay() {  # label threads
    $PY -m fleetserve.cli serve --port 8100 --threads "$2" --no-access-log --log-level warning &
    local server=$!
    wait_for http://127.0.0.1:8100/health
    $PY -m fleetserve.cli bench serve --url http://127.0.0.1:8100 --endpoint chat --max-concurrency 8 \
        --synthetic 'rate=inf,n=48,prompt=uniform:200:240,output=fixed:64,seed=1' --no-progress \
        --label "$1 t$2" --json "$OUT/replay_$1_t$2.json" >/dev/null
    kill $server; wait $server || true
    $PY -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"replay $1 --threads $2: \
{s['output_token_throughput']:.1f} output tok/s, ITL p90 {s['itl_ms']['p90']:.0f} ms, {s['completed']} completed\")" \
        "$OUT/replay_$1_t$2.json"
}

run_all() {  # label
    for threads in $THREADS; do
        if [ "$WHAT" != replay ]; then offline "$1" "$threads"; fi
        if [ "$WHAT" != offline ]; then replay "$1" "$threads"; fi
    done
}

run_all idle
python3 -c 'while True: pass' &
BUSY=$!
trap 'kill $BUSY 2>/dev/null || true' EXIT
run_all busy
