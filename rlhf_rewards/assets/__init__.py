"""Reward models shipped with the package (trained by ``python -m scripts.build_assets`` in a checkout).

- ``models/arith-outcome-rm``: a ``LlamaForSequenceClassification`` outcome reward model (1 label) that prefers
  the correct answer to ``What is A + B?`` / ``What is A - B?`` (A, B in 0..9) over wrong ones, and any
  number over chatter.
- ``models/arith-prm``: a ``Qwen2ForProcessRewardModel`` process reward model that scores each ``x op y = z``
  step (x, y in 0..9) at its ``<extra_0>`` tag: ``softmax(logits)[1]`` is P(step is right).
- ``models/arith-policy``: the tiny causal LM the GRPO demo (``recipes/demo.py``) starts from.

Each is a few MB of safetensors with a small BPE tokenizer (digits are single tokens, ChatML template), so
``LLM(default_reward_model_path())`` works offline. The task and held-out split are in
:mod:`rlhf_rewards.assets.arithmetic`; held-out accuracy is in each folder's ``training_report.json`` and
``README.md`` and is recomputed by :mod:`rlhf_rewards.assets.evaluation`.
"""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent
MODELS_DIR = ASSETS_DIR / "models"

#: ``kind`` -> folder name under ``rlhf_rewards/assets/models``.
DEFAULT_MODELS = {
    "outcome": "arith-outcome-rm",
    "process": "arith-prm",
    "policy": "arith-policy",
}


def default_model_path(kind: str = "outcome") -> str:
    """Local folder of the shipped model of ``kind`` (``"outcome"``, ``"process"`` or ``"policy"``).

    Raises ``ValueError`` for another kind and ``FileNotFoundError`` if the folder is missing from this install
    (rebuild it with ``python -m scripts.build_assets`` from a checkout).
    """
    if kind not in DEFAULT_MODELS:
        raise ValueError(f"kind={kind!r}; the shipped models are {sorted(DEFAULT_MODELS)}.")
    path = MODELS_DIR / DEFAULT_MODELS[kind]
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"The shipped {kind} model is missing from {path}; rebuild it with "
            "`python -m scripts.build_assets` (from a source checkout)."
        )
    return str(path)


def default_reward_model_path() -> str:
    """Folder of the shipped outcome reward model (``arith-outcome-rm``): what ``rlhf-rewards serve`` and
    ``rlhf-rewards score`` use when no model is given."""
    return default_model_path("outcome")


def default_prm_path() -> str:
    """Folder of the shipped process reward model (``arith-prm``, Qwen2.5-Math-PRM layout)."""
    return default_model_path("process")


def default_policy_path() -> str:
    """Folder of the tiny policy the GRPO demo starts from (``arith-policy``)."""
    return default_model_path("policy")


__all__ = [
    "ASSETS_DIR",
    "DEFAULT_MODELS",
    "MODELS_DIR",
    "default_model_path",
    "default_policy_path",
    "default_prm_path",
    "default_reward_model_path",
]
