#!/usr/bin/env bash
# The main job: sets everything up, then runs the demo (see README "Main job").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
exec python -m recipes.demo "$@"
