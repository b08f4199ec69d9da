"""Reward models shipped with the package (trained by ``recipes/train_default_models.py``).

- ``arith-outcome-rm``: a ``Qwen3ForSequenceClassification`` outcome reward model (1 label) that prefers the
  correct answer to ``What is A + B?`` / ``What is A - B?`` (A, B in 0..99) over near misses.
- ``arith-prm``: a ``Qwen2ForProcessRewardModel`` process reward model that scores each ``x + y = z`` /
  ``x - y = z`` step (numbers in 0..99) at its ``<extra_0>`` tag: ``softmax(logits)[1]`` is P(step is right).

Both are a few MB of safetensors with a small BPE tokenizer (digits are single tokens, ChatML template),
so ``LLM(default_model_path())`` works offline. The task and held-out split are in
:mod:`rlhf_rewards.assets.arithmetic`; held-out accuracy is in each folder's ``training_report.json``.
"""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).resolve().parent

#: ``kind`` -> folder name under ``rlhf_rewards/assets``.
DEFAULT_MODELS = {
    "outcome": "arith-outcome-rm",
    "process": "arith-prm",
}


def default_model_path(kind: str = "outcome") -> str:
    """Local folder of the shipped reward model of ``kind`` (``"outcome"`` or ``"process"``).

    Raises ``ValueError`` for another kind and ``FileNotFoundError`` if the folder is missing from this install
    (rebuild it with ``python -m recipes.train_default_models``).
    """
    if kind not in DEFAULT_MODELS:
        raise ValueError(f"kind={kind!r}; the shipped reward models are {sorted(DEFAULT_MODELS)}.")
    path = ASSETS_DIR / DEFAULT_MODELS[kind]
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"The shipped {kind} reward model is missing from {path}; rebuild it with "
            "`python -m recipes.train_default_models`."
        )
    return str(path)


__all__ = ["ASSETS_DIR", "DEFAULT_MODELS", "default_model_path"]
