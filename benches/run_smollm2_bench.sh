#!/usr/bin/env bash
# SmolLM2 benchmark: transformers (peers environment) then hooklens, same machine, same weights;
# hooklens's default build, and with OpenBLAS installed also the `blas` feature.
#   benches/run_smollm2_bench.sh [VENV]   (default VENV: ~/.cache/hooklens-peers/venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-$HOME/.cache/hooklens-peers/venv}
gguf=$(scripts/fetch_smollm2.sh)
ref=$(mktemp --suffix .json)
"$venv/bin/python" benches/hf_smollm2_bench.py "$gguf" "$ref"
builds=("")
if ldconfig -p | grep -q libopenblas.so; then builds+=("--features blas"); fi
for features in "${builds[@]}"; do
  echo
  # shellcheck disable=SC2086 # $features is empty or two words
  cargo run -q $features --example bench_smollm2 -- --reference "$ref"
done
