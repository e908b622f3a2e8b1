#!/usr/bin/env bash
# Capture benchmark on SmolLM2, side by side in one run: TransformerLens run_with_cache in a
# loop saving to disk (peers environment), then hooklens's capture and a bare hooklens forward
# of the same depth, on the same contexts of the real corpus and the same four hooks.
#   benches/run_capture_bench.sh [TOKENS] [VENV]   (default 8192 tokens, ~/.cache/hooklens-peers/venv)
set -euo pipefail
cd "$(dirname "$0")/.."
tokens=${1:-8192}
venv=${2:-$HOME/.cache/hooklens-peers/venv}
gguf=$(scripts/fetch_smollm2.sh)
corpus=$(scripts/fetch_corpus.sh)
hooks=blocks.3.hook_resid_post,blocks.7.hook_resid_post,blocks.11.hook_resid_post,blocks.15.hook_resid_post
out=$(mktemp -d)
# The contexts, and the store layout both sides follow (batch size, depth).
cargo run -q --bin capture -- --model smollm2 --corpus "$corpus" --tokens "$tokens" \
  --hooks "$hooks" --max-memory 2G --outputs "$out" --run contexts >/dev/null
ref=$out/tl.json
"$venv/bin/python" benches/tl_capture_bench.py "$gguf" "$out/capture/contexts" "$ref"
builds=("")
if ldconfig -p | grep -q libopenblas.so; then builds+=("--features blas"); fi
for features in "${builds[@]}"; do
  echo
  echo "hooklens build: ${features:-default}"
  # shellcheck disable=SC2086 # $features is empty or two words
  cargo run -q $features --example bench_capture -- --store "$out/capture/contexts" --reference "$ref"
done
rm -rf "$out"
