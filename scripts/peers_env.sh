#!/usr/bin/env bash
# Prepares .peers/: the RL frameworks' own released code for the compat tests (tests/compat/), installed
# WITHOUT their heavy dependencies (torch, vllm, deepspeed, flash-attn, ray stay as .venv has them):
#   openrlhf==0.11.2 and verl==0.9.1, plus the few small packages their imported modules need that .venv
#   lacks (found by importing openrlhf.utils.agent, openrlhf.cli.serve_rm, openrlhf.utils.deepspeed (its
#   checkpoint saving) and verl.experimental.reward_loop.reward_loop). The tests append .peers to sys.path (after .venv), so these
#   never shadow the project's own packages. Safe to run again: a no-op when up to date.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
TARGET=.peers
stamp=$TARGET/.peers-installed
if [ -f "$stamp" ] && [ "$stamp" -nt scripts/peers_env.sh ]; then
  exit 0
fi
rm -rf "$TARGET"
# The frameworks, exactly as released (no dependency resolution: their pins would pull torch/vllm/ray).
PEERS=("openrlhf==0.11.2" "verl==0.9.1")
# What their modules import at top level and .venv lacks: pure-Python packages (torchdata 0.11 is pure
# Python), plus orjson (a small compiled wheel without dependencies, imported by verl.utils.tracking). omegaconf 2.x needs antlr4 4.9.
SMALL=("pylatexenc==2.11" "tensordict==0.15.3" "pyvers==0.2.3" "omegaconf==2.4.0" "antlr4-python3-runtime==4.9.3"
       "cloudpickle==3.1.3" "codetiming==1.4.0" "orjson==3.13.0" "torchdata==0.11.0")
FIND_LINKS=()
if [ -n "${PEERS_WHEELS:-}" ] && [ -d "$PEERS_WHEELS" ]; then
  FIND_LINKS=(--find-links "$PEERS_WHEELS")  # a folder of already-downloaded wheels, if you have one
fi
"$PY" -m pip install -q --no-deps --target "$TARGET" "${FIND_LINKS[@]}" "${PEERS[@]}" "${SMALL[@]}"
# Both wheels also install top-level `tests` and `scripts` packages; drop them so nothing can shadow ours.
rm -rf "$TARGET/tests" "$TARGET/scripts" "$TARGET/bin"
touch "$stamp"
