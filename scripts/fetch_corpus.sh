#!/usr/bin/env bash
# Fetches the English corpus for activation captures: the Linux kernel's documentation, as
# Debian's linux-doc-6.1 package ships its reStructuredText sources (GPL-2.0; about 6 M
# SmolLM2 tokens of English technical prose, code and tables). The .deb is checked by sha256,
# translations are left out, and each document becomes one line of a JSON Lines file
# {"text", "source"} sorted by path, itself checked by sha256. A second run costs nothing.
# Prints the cached path:
#   HOOKLENS_CACHE (default ~/.cache/hooklens) / corpora / linux-doc-6.1.jsonl
set -euo pipefail
version=6.1.192-3
deb=linux-doc-6.1_${version}_all.deb
deb_sha=f18dfe28dcab7bdbf9185be16b9521f5841277a6a96c374a6683a648d5d5fa4f
jsonl_sha=443239418e7239e1f5a6578552b30b1e96f3b9ed808f8a4659aa8607c8d56698
cache=${HOOKLENS_CACHE:-$HOME/.cache/hooklens}/corpora
file=$cache/linux-doc-6.1.jsonl
if [ -f "$file" ] && echo "$jsonl_sha  $file" | sha256sum -c --status; then
  echo "$file"; exit 0
fi
mkdir -p "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Debian's security archive, then its permanent snapshot archive once a newer version replaces it.
for url in "http://deb.debian.org/debian-security/pool/updates/main/l/linux/$deb" \
           "https://snapshot.debian.org/archive/debian-security/20251201T000000Z/pool/updates/main/l/linux/$deb"; do
  if python3 - "$url" "$tmp/$deb" <<'PY' 2>/dev/null; then break; fi
import sys, urllib.request, shutil
with urllib.request.urlopen(sys.argv[1], timeout=120) as r, open(sys.argv[2], "wb") as f:
    shutil.copyfileobj(r, f)
PY
done
if ! echo "$deb_sha  $tmp/$deb" | sha256sum -c --status; then
  echo "could not fetch $deb with sha256 $deb_sha (tried Debian's security archive and snapshot.debian.org)" >&2; exit 1
fi
mkdir "$tmp/x"
dpkg-deb -x "$tmp/$deb" "$tmp/x"
python3 - "$tmp/x/usr/share/doc/linux-doc-6.1/html/_sources" "$tmp/corpus.jsonl" <<'PY'
import json, pathlib, sys
root = pathlib.Path(sys.argv[1])
with open(sys.argv[2], "w", encoding="utf-8") as out:
    for path in sorted(root.rglob("*.rst.txt")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith("translations/"):
            continue
        text = path.read_text(encoding="utf-8").strip()
        if text:
            out.write(json.dumps({"text": text, "source": rel[: -len(".txt")]}, ensure_ascii=False) + "\n")
PY
if ! echo "$jsonl_sha  $tmp/corpus.jsonl" | sha256sum -c --status; then
  echo "the corpus built from $deb does not have sha256 $jsonl_sha" >&2; exit 1
fi
mv "$tmp/corpus.jsonl" "$file"
echo "$file"
