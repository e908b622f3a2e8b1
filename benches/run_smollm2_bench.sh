#!/usr/bin/env bash
# Real-weights benchmark against transformers (peers environment), same machine, same weights:
#   1. forward at 128 and 512 tokens in interleaved rounds (transformers, hooklens, ...;
#      benches/interleave_forward.py --reference hf), medians and spread; writes
#      outputs/bench/<alias>-forward-<time>.json;
#   2. greedy generation with and without the KV cache, one pass each side (transformers, then
#      hooklens), with the forward again for the one-pass table.
# hooklens's default build, and with OpenBLAS installed also the `blas` feature.
#   benches/run_smollm2_bench.sh [smollm2|gemma3] [VENV]
#   (default smollm2; default VENV: ~/.cache/hooklens-peers/venv; HOOKLENS_BENCH_ROUNDS, default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
alias=${1:-smollm2}
venv=${2:-$HOME/.cache/hooklens-peers/venv}
gguf=$(bash "scripts/fetch_$alias.sh")
mkdir -p outputs/bench
builds=("")
if ldconfig -p | grep -q libopenblas.so; then builds+=("--features blas"); fi
for features in "${builds[@]}"; do
  # shellcheck disable=SC2086 # $features is empty or two words
  cargo build -q --release $features --example bench_forward
  echo; echo "hooklens build: ${features:-default}"
  "$venv/bin/python" benches/interleave_forward.py "$gguf" target/release/examples/bench_forward \
    --reference hf --lengths 128,512 --rounds "${HOOKLENS_BENCH_ROUNDS:-5}" \
    --out "outputs/bench/$alias-forward-$(date -u +%Y%m%dT%H%M%S)${features:+-blas}.json"
done
ref=$(mktemp --suffix .json)
"$venv/bin/python" benches/hf_smollm2_bench.py "$gguf" "$ref"
for features in "${builds[@]}"; do
  echo
  # shellcheck disable=SC2086 # $features is empty or two words
  cargo run -q --release $features --example bench_smollm2 -- --model "$alias" --reference "$ref"
done
