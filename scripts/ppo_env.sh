#!/usr/bin/env bash
# Creates .venv-ppo: a separate environment with the last TRL release that ships PPOTrainer (trl 1.12.0,
# `trl.experimental.ppo.PPOTrainer`; TRL 1.13 removed it), so the slow PPO test can run the real trainer
# against `rlhf_rewards.as_trl_reward_model`. The main .venv keeps the current TRL for GRPO/RLOO.
# Safe to run again: a no-op when up to date. torch is the same CPU build as scripts/setup.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TRL_PPO_VERSION=${TRL_PPO_VERSION:-1.12.0}
if [ ! -x .venv-ppo/bin/python ]; then
  "$PY" -m venv .venv-ppo
fi
stamp=.venv-ppo/.ppo-env-installed
if [ -f "$stamp" ] && [ "$stamp" -nt pyproject.toml ] && [ "$stamp" -nt scripts/ppo_env.sh ]; then
  exit 0
fi
.venv-ppo/bin/python -m pip install -q --upgrade pip wheel setuptools
.venv-ppo/bin/python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
# trl 1.12.0 needs transformers>=4.56.2; rlhf-rewards needs transformers 5.x: the 5.x line satisfies both.
.venv-ppo/bin/python -m pip install -q "trl==${TRL_PPO_VERSION}" "transformers>=5.0,<6" "datasets>=4.7" -e .
touch "$stamp"
