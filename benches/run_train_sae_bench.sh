#!/usr/bin/env bash
# SAE training benchmark, side by side in one run on the same activations: SAELens 6 (its own
# venv, tests/reference/setup_saelens.sh) trains a TopK SAE on a store's rows, then hooklens's
# trainer on the same rows, same batch, steps, k, d_sae and learning rate; each reports
# training tokens/s and the held-out MSE and explained variance.
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
ref=$(mktemp)
"$venv/bin/python" benches/saelens_train_bench.py "$store" "$hook" 4096 "$steps" 32 "$d_sae" 2e-4 "$ref"
builds=("")
if ldconfig -p | grep -q libopenblas.so; then builds+=("--features blas"); fi
for features in "${builds[@]}"; do
  # shellcheck disable=SC2086 # $features is empty or two words
  cargo run -q --release $features --example bench_train_sae -- --store "$store" --hook "$hook" \
    --steps "$steps" --d-sae "$d_sae" --reference "$ref"
done
rm -f "$ref"
