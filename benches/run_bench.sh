#!/usr/bin/env bash
# Runs a benchmark: TransformerLens (peers environment) then hooklens, same machine, same random
# GPT-2-small weights, and prints both side by side: hooklens's default build, and with
# OpenBLAS installed (apt install libopenblas-dev) also the `blas` feature.
#   benches/run_bench.sh [forward|circuits|sweeps] [VENV]
#     forward:  forward at 128/512/1024 tokens in interleaved rounds, medians and spread (the
#               default); writes outputs/bench/forward-<time>.json
#     circuits: composition scores, a full-circuit SVD and copying scores
#     sweeps:   144-head ablation (loss, logit difference) and the resid_pre patching grid
#   VENV defaults to ~/.cache/hooklens-peers/venv, from ../shared/peers/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-forward}
venv=${2:-$HOME/.cache/hooklens-peers/venv}
case "$which" in
  forward) script=benches/tl_reference_bench.py ;;
  circuits) script=benches/tl_circuits_bench.py ;;
  sweeps) script=benches/tl_sweep_bench.py ;;
  *) echo "unknown benchmark '$which': use forward, circuits or sweeps" >&2; exit 2 ;;
esac
model=${HOOKLENS_BENCH_MODEL:-$HOME/.cache/hooklens/bench-gpt2-small}
mkdir -p "$model" outputs/bench
if [ "$which" = forward ]; then
  # Interleaved rounds (TL, hooklens, TL, ...): the default build, then `blas` when OpenBLAS is
  # installed. HOOKLENS_BENCH_ROUNDS (default 5) rounds each.
  builds=("")
  if ldconfig -p | grep -q libopenblas.so; then builds+=("--features blas"); fi
  for features in "${builds[@]}"; do
    # shellcheck disable=SC2086 # $features is empty or two words
    cargo build -q --release $features --example bench_forward
    echo; echo "hooklens build: ${features:-default}"
    "$venv/bin/python" benches/interleave_forward.py "$model" target/release/examples/bench_forward \
      --rounds "${HOOKLENS_BENCH_ROUNDS:-5}" \
      --out "outputs/bench/forward-$(date -u +%Y%m%dT%H%M%S)${features:+-blas}.json"
  done
  exit 0
fi
ref=$(mktemp --suffix .json)
"$venv/bin/python" "$script" "$model" "$ref"
# hooklens twice when OpenBLAS is installed: the default build, then the blas feature.
builds=("")
if ldconfig -p | grep -q libopenblas.so; then builds+=("--features blas"); fi
for features in "${builds[@]}"; do
  echo
  # shellcheck disable=SC2086 # $features is empty or two words
  cargo run -q $features --example "bench_$which" -- --model "$model" --reference "$ref"
done
