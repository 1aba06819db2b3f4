#!/usr/bin/env bash
# The peers venv ./.venv-peers: SAELens (and the TransformerLens 3.x it requires), which
# tests/test_saelens_compat.py drives through tests/saelens_peer.py to check saekit's SAE
# folders against it both ways. A venv of its own, without saekit, so that the numbers
# compared come from SAELens alone and its pins never move saekit's dependencies.
# torch==2.13.0 is installed first and pinned in every command: that is the CPU build on
# local disk; an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SAE_LENS=${SAE_LENS:-sae-lens==6.54.12}  # the release the round-trip tests were written against
PIP=(.venv-peers/bin/python -m pip install -q --disable-pip-version-check)
[ -x .venv-peers/bin/python ] || "$PYTHON" -m venv .venv-peers
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" "$SAE_LENS" "torch==2.13.0"
.venv-peers/bin/python -c "from importlib.metadata import version as v; import sae_lens, torch
print('sae-lens', v('sae-lens'), '| transformer-lens', v('transformer-lens'), '| torch', torch.__version__)"
