#!/usr/bin/env bash
# Creates .venv and installs rlhf-rewards with every extra. Safe to run again; it is a no-op when up to date.
# torch is pinned to the CPU build here (not in pyproject), because an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.rlhf-rewards-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/setup.sh ]; then
  exit 0
fi
python -m pip install -q --upgrade pip wheel setuptools
python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
python -m pip install -q -e ".[server,ray,trl,dev]"
# DeepSpeed builds its ops just in time; skip the CUDA op builds on CPU machines.
DS_BUILD_OPS=0 python -m pip install -q -e ".[deepspeed]"
touch "$stamp"
