#!/usr/bin/env bash
# Circuits benchmark: TransformerLens (peers environment) then hooklens, same machine, same random
# GPT-2-small weights, printed side by side.
#   benches/run_circuits_bench.sh [VENV]   (default VENV: ~/.cache/hooklens-peers/venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-$HOME/.cache/hooklens-peers/venv}
model=${HOOKLENS_BENCH_MODEL:-$HOME/.cache/hooklens/bench-gpt2-small}
mkdir -p "$model"
ref=$(mktemp --suffix .json)
"$venv/bin/python" benches/tl_circuits_bench.py "$model" "$ref"
cargo run -q --example bench_circuits -- --model "$model" --reference "$ref"
