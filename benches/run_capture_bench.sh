#!/usr/bin/env bash
# Capture benchmark on SmolLM2, interleaved (benches/interleave.py): TransformerLens's
# run_with_cache loop saving to disk (peers environment, benches/tl_capture_bench.py) and
# hooklens's capture (examples/bench_capture.rs) in alternating rounds, on the same contexts of
# the real corpus and the same four hooks; each side also times a bare forward of the same depth,
# and both sides' matmul rates. Medians, spreads and per-round ratios; writes
# outputs/bench/capture-<time>.json. HOOKLENS_BENCH_ROUNDS (default 5) rounds, default build
# then `blas` when OpenBLAS is installed.
#   benches/run_capture_bench.sh [TOKENS] [VENV]   (default 8192 tokens, ~/.cache/hooklens-peers/venv)
set -euo pipefail
cd "$(dirname "$0")/.."
tokens=${1:-8192}
venv=${2:-$HOME/.cache/hooklens-peers/venv}
gguf=$(scripts/fetch_smollm2.sh)
corpus=$(scripts/fetch_corpus.sh)
hooks=blocks.3.hook_resid_post,blocks.7.hook_resid_post,blocks.11.hook_resid_post,blocks.15.hook_resid_post
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
mkdir -p outputs/bench
# The contexts, and the store layout both sides follow (batch size, depth).
cargo run -q --bin capture -- --model smollm2 --corpus "$corpus" --tokens "$tokens" \
  --hooks "$hooks" --max-memory 2G --outputs "$out" --run contexts >/dev/null
store=$out/capture/contexts
builds=("")
if ldconfig -p | grep -q libopenblas.so; then builds+=("--features blas"); fi
for features in "${builds[@]}"; do
  # shellcheck disable=SC2086 # $features is empty or two words
  cargo build -q --release $features --example bench_capture
  echo; echo "hooklens build: ${features:-default}"
  "$venv/bin/python" benches/interleave.py --reference-name TransformerLens \
    --reference "$(printf '%q ' "$venv/bin/python" benches/tl_capture_bench.py "$gguf" "$store")" \
    --hooklens "$(printf '%q ' target/release/examples/bench_capture --store "$store" --serve)" \
    --ask capture --ask forward --ask matmul --rounds "${HOOKLENS_BENCH_ROUNDS:-5}" \
    --out "outputs/bench/capture-$(date -u +%Y%m%dT%H%M%S)${features:+-blas}.json"
done
