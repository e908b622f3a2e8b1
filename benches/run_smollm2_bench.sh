#!/usr/bin/env bash
# Real-weights benchmark: transformers (peers environment) then hooklens, same machine, same
# weights; hooklens's default build, and with OpenBLAS installed also the `blas` feature.
#   benches/run_smollm2_bench.sh [smollm2|gemma3] [VENV]
#   (default smollm2; default VENV: ~/.cache/hooklens-peers/venv)
set -euo pipefail
cd "$(dirname "$0")/.."
alias=${1:-smollm2}
venv=${2:-$HOME/.cache/hooklens-peers/venv}
gguf=$(bash "scripts/fetch_$alias.sh")
ref=$(mktemp --suffix .json)
"$venv/bin/python" benches/hf_smollm2_bench.py "$gguf" "$ref"
builds=("")
if ldconfig -p | grep -q libopenblas.so; then builds+=("--features blas"); fi
for features in "${builds[@]}"; do
  echo
  # shellcheck disable=SC2086 # $features is empty or two words
  cargo run -q $features --example bench_smollm2 -- --model "$alias" --reference "$ref"
done
