#!/usr/bin/env bash
# SAE training benchmark, interleaved (benches/interleave.py) on the same activations: SAELens 6
# (its own venv, tests/reference/setup_saelens.sh; benches/saelens_train_bench.py) and hooklens's
# trainer (examples/bench_train_sae.rs) train a TopK SAE on a store's rows in alternating rounds,
# same batch, steps, k, d_sae and learning rate; each run reports training tokens/s and the
# held-out MSE and explained variance, and both sides their matmul rates. Medians, spreads and
# per-round ratios; writes outputs/bench/train-sae-<time>.json. HOOKLENS_BENCH_ROUNDS (default 5)
# rounds, default build then `blas` when OpenBLAS is installed.
#   benches/run_train_sae_bench.sh STORE [STEPS] [VENV]
# STORE: a capture run, e.g. of SmolLM2's blocks.15.hook_resid_post (docs/saes.md); default
# 40 steps of 4096 tokens, k 32, d_sae 8 x d_in.
set -euo pipefail
cd "$(dirname "$0")/.."
store=${1:?a capture run folder, e.g. outputs/capture/r15}
steps=${2:-40}
venv=${3:-$HOME/.cache/hooklens-peers/saelens}
hook=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['hooks'][0]['name'])" "$store/store.json")
width=$(python3 -c "import json,sys,math; print(math.prod(json.load(open(sys.argv[1]))['hooks'][0]['shape']))" "$store/store.json")
d_sae=$((8 * width))
mkdir -p outputs/bench
builds=("")
if ldconfig -p | grep -q libopenblas.so; then builds+=("--features blas"); fi
for features in "${builds[@]}"; do
  # shellcheck disable=SC2086 # $features is empty or two words
  cargo build -q --release $features --example bench_train_sae
  echo; echo "hooklens build: ${features:-default}"
  "$venv/bin/python" benches/interleave.py --reference-name SAELens \
    --reference "$(printf '%q ' "$venv/bin/python" benches/saelens_train_bench.py "$store" "$hook" 4096 "$steps" 32 "$d_sae" 2e-4)" \
    --hooklens "$(printf '%q ' target/release/examples/bench_train_sae --store "$store" --hook "$hook" \
      --steps "$steps" --d-sae "$d_sae" --serve)" \
    --ask train --ask matmul --rounds "${HOOKLENS_BENCH_ROUNDS:-5}" \
    --out "outputs/bench/train-sae-$(date -u +%Y%m%dT%H%M%S)${features:+-blas}.json"
done
