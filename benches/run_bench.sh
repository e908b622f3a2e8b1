#!/usr/bin/env bash
# Runs the forward benchmark: TransformerLens (peers environment) then hooklens, same machine,
# same random GPT-2-small weights and tokens, and prints both side by side.
#   benches/run_bench.sh [VENV]   (default VENV: ~/.cache/hooklens-peers/venv, from ../shared/peers/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-$HOME/.cache/hooklens-peers/venv}
model=${HOOKLENS_BENCH_MODEL:-$HOME/.cache/hooklens/bench-gpt2-small}
mkdir -p "$model"
ref=$(mktemp --suffix .json)
"$venv/bin/python" benches/tl_reference_bench.py "$model" "$ref"
cargo run -q --example bench_forward -- --model "$model" --reference "$ref"
