#!/usr/bin/env bash
# Runs the test suite after setting up everything it needs. Extra arguments go to pytest
# (e.g. `bash scripts/test.sh -m slow` for the end-to-end runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The RL frameworks' own released code for tests/compat (openrlhf, verl; no heavy dependencies).
bash scripts/peers_env.sh
. .venv/bin/activate
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
exec python -m pytest "$@"
