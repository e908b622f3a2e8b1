#!/usr/bin/env bash
# Executes every notebook in notebooks/ against the runs under $1 (default: outputs), in a
# virtual environment with notebooks/requirements.txt (created once in ~/.cache/hooklens, and again
# when the requirements change).
#   scripts/run_notebooks.sh [OUTPUTS]
set -euo pipefail
cd "$(dirname "$0")/.."
outputs=$(realpath "${1:-outputs}")
venv=${HOOKLENS_NB_VENV:-$HOME/.cache/hooklens/nb-venv}
if ! cmp -s notebooks/requirements.txt "$venv/requirements.txt"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r notebooks/requirements.txt
  cp notebooks/requirements.txt "$venv/requirements.txt"
fi
cd notebooks
for nb in *.ipynb; do
  HOOKLENS_OUTPUTS="$outputs" MPLBACKEND=Agg "$venv/bin/python" - "$nb" <<'PY'
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=300, kernel_name="python3").execute()
print(f"{sys.argv[1]}: executed, {len(nb.cells)} cells")
PY
done
