#!/usr/bin/env bash
# SAELens 6 for the SAE reference values, in its own venv: it pins TransformerLens < 4, while the
# peers environment (../shared/peers/setup.sh) has TransformerLens 4.3. The peers' CPU torch and
# transformers are reused through a .pth line placed after this venv's own site-packages, so
# SAELens's TransformerLens 3 shadows the peers' 4.3 here and nothing is downloaded twice.
#   tests/reference/setup_saelens.sh [PEERS_VENV] [VENV]
set -euo pipefail
peers=${1:-$HOME/.cache/hooklens-peers/venv}
venv=${2:-$HOME/.cache/hooklens-peers/saelens}
python3 -m venv "$venv"
site=$(echo "$venv"/lib/python3*/site-packages)
echo "$(echo "$peers"/lib/python3*/site-packages)" > "$site/zz_peers.pth"
"$venv/bin/pip" install -q sae-lens==6.54.12
"$venv/bin/python" -c 'import importlib.metadata as m, torch; print("sae_lens", m.version("sae-lens"), "transformer_lens", m.version("transformer-lens"), "torch", torch.__version__)'
