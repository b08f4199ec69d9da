#!/usr/bin/env bash
# Run where PyPI is reachable, before a GPU run: downloads into .whl/ (git-ignored) the wheels that
# scripts/gpu_check.sh installs on a CUDA machine without network: CPython 3.12, manylinux x86_64, each pinned
# to the version in .venv. Names: $GPU_WHEELS (space-separated), default below.
#
# The check's import path (rlhf_rewards.LLM, ColocatedWorker, benchmarks/) needs only torch, transformers,
# tokenizers, safetensors, accelerate, numpy and tqdm, which a GPU image has. TRL is not carried (its import
# pulls datasets, pyarrow and pandas, far over the size limit): without it the benchmark's "TRL built-in"
# row is benchmarks/baselines.py's replica of TRL's padded forward, and the report says so. The default set
# is insurance, 3 MiB: pydantic (a core dependency in pyproject.toml, imported today only by the server
# modules) with its dependencies, so a future import of it on the scoring path cannot stop a scarce GPU run.
set -euo pipefail
cd "$(dirname "$0")/.."
read -r -a packages <<< "${GPU_WHEELS:-pydantic pydantic_core annotated_types typing_inspection typing_extensions}"
VENV_PY=${VENV_PY:-.venv/bin/python}
[ -x "$VENV_PY" ] || bash scripts/setup.sh
PIP=(python3 -m pip)
python3 -m pip --version >/dev/null 2>&1 || PIP=("$VENV_PY" -m pip)
rm -rf .whl && mkdir -p .whl
for name in "${packages[@]}"; do
  version=$("$VENV_PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$name")
  "${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$name==$version"
done
ls -1 .whl
total=$(du -sm .whl | cut -f1)
echo "gpu_wheels.sh: ${#packages[@]} wheels, ${total} MiB in .whl/"
if [ "$total" -gt 40 ]; then
  echo "gpu_wheels.sh: over 40 MiB (the GPU tool carries at most 64 MiB with the working tree)" >&2
  exit 1
fi
