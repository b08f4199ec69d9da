#!/usr/bin/env bash
# Serve a reward model over HTTP for rloo_remote_reward.py (and for any client of vLLM's /pooling API,
# verl's /classify or OpenRLHF's /get_reward).
#
# Usage:
#   bash recipes/serve_reward_model.sh [MODEL] [rlhf-rewards serve options...]
#
# Examples:
#   # One GPU, bf16, on every interface of this machine, with an API key:
#   HOST=0.0.0.0 PORT=8000 bash recipes/serve_reward_model.sh Skywork/Skywork-Reward-V2-Qwen3-0.6B \
#       --dtype bfloat16 --device cuda:0 --api-key "$RLHF_REWARDS_API_KEY"
#   # A math-shepherd-style PRM (a causal LM read at its step tag): give its STEP pooler config:
#   bash recipes/serve_reward_model.sh peiyi9979/math-shepherd-mistral-7b-prm --dtype bfloat16 \
#       --pooler-config '{"pooling_type": "STEP", "step_tag_id": 12902, "returned_token_ids": [648, 387]}'
#   # The outcome reward model shipped with rlhf-rewards (arith-outcome-rm), on a CPU (what CI runs):
#   SHIPPED_MODEL=1 PORT=8000 bash recipes/serve_reward_model.sh --device cpu
#
# Then train against it:
#   accelerate launch --config_file recipes/accelerate_configs/single_gpu.yaml recipes/rloo_remote_reward.py \
#       --reward_url http://127.0.0.1:8000 ...
#
# Environment: HOST (default 127.0.0.1), PORT (default 8000), SHIPPED_MODEL (set: serve the outcome reward
# model shipped with rlhf-rewards, what `rlhf-rewards serve` serves when given no model; MODEL must then be
# left out). The server runs in the foreground (exec), so Ctrl-C or SIGTERM stops it cleanly after the
# requests in flight.
set -euo pipefail

HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"

if [[ -n "${SHIPPED_MODEL:-}" ]]; then
    if [[ $# -gt 0 && "$1" != -* ]]; then
        echo "serve_reward_model.sh: give either SHIPPED_MODEL or MODEL, not both" >&2
        exit 2
    fi
    MODEL=()  # no model argument: the CLI serves the shipped one
elif [[ $# -gt 0 && "$1" != -* ]]; then
    MODEL=("$1")
    shift
else
    MODEL=("Skywork/Skywork-Reward-V2-Qwen3-0.6B")
fi

export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-false}"
if command -v rlhf-rewards > /dev/null 2>&1; then
    exec rlhf-rewards serve "${MODEL[@]}" --host "$HOST" --port "$PORT" "$@"
fi
exec python -m rlhf_rewards.cli.main serve "${MODEL[@]}" --host "$HOST" --port "$PORT" "$@"
