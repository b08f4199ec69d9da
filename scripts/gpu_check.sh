#!/usr/bin/env bash
# Proves the CUDA paths on one GPU: `python -m benchmarks.gpu_check` (README "GPU check"). Extra arguments go to it.
#
# On a CUDA machine it uses that machine's own python3 and torch (never scripts/setup.sh, which installs CPU
# torch) with this checkout on PYTHONPATH; wheels in .whl/ (made beforehand by scripts/gpu_wheels.sh where PyPI
# is reachable) are installed, without network or dependencies, into /tmp/site first on the path.
# Without CUDA it sets up .venv (scripts/setup.sh) and runs the same checks on the CPU.
set -uo pipefail
cd "$(dirname "$0")/.."
export TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
start=$(date +%s)
if python3 -c 'import torch; assert torch.cuda.is_available()' >/dev/null 2>&1; then
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  if compgen -G ".whl/*.whl" >/dev/null; then
    if python3 -m pip install -q --no-index --no-deps --upgrade --target /tmp/site .whl/*.whl; then
      export PYTHONPATH="/tmp/site:$PYTHONPATH"
    else
      echo "gpu_check.sh: installing .whl/*.whl failed; running with this machine's packages only" >&2
    fi
  fi
  python3 -c 'import sys, torch, transformers; print(f"gpu_check.sh: python {sys.version.split()[0]}, torch \
{torch.__version__} (CUDA {torch.version.cuda}), transformers {transformers.__version__}, \
{torch.cuda.get_device_name()}")' >&2
  python3 -m benchmarks.gpu_check --device cuda "$@"
  rc=$?
else
  echo "gpu_check.sh: no CUDA device for python3; setting up .venv and checking on the CPU" >&2
  bash scripts/setup.sh || exit 1
  . .venv/bin/activate
  python -m benchmarks.gpu_check --device cpu "$@"
  rc=$?
fi
echo "gpu_check.sh: exit $rc after $(( $(date +%s) - start ))s" >&2
exit $rc
