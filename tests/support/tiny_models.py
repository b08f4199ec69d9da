"""Tiny local models and prompts for running the recipes without a hub or a GPU (CI, smoke tests).

Every recipe takes ``--build_tiny_models DIR``: it builds (once, on the main process) a tiny policy and tiny
reward models into ``DIR`` with :mod:`tests.support.checkpoints` and trains on a handful of built-in
prompts, so the whole recipe runs in seconds on a CPU. The same models can be built by hand::

    python -m tests.support.tiny_models /tmp/tiny   # prints the paths as JSON

The weights are random: the rewards mean nothing, but every code path (loading, chat templates, scoring,
DeepSpeed/accelerate plumbing, logging) is the real one.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tests.support.checkpoints import STEP_TAG, build_checkpoint, build_tokenizer

#: Prompts for the tiny runs (standard, non-conversational format).
TINY_PROMPTS = [
    "What is 12 + 7?",
    "Hello, my name is",
    "Solve 3 * 4 = 12. Then",
    "The quick brown fox",
    "Reward models score",
    "def add(a, b):",
    "Questions and answers,",
    "A policy is trained with",
]

#: Built by :func:`build_tiny_models`: name -> (architecture, extra builder arguments).
TINY_MODELS = {
    "policy": ("Qwen3ForCausalLM", {}),
    "reward_model": ("Qwen3ForSequenceClassification", {"seed": 1}),
    # math-shepherd style PRM: a causal LM read at the step tag, good/bad = the "+"/"-" logits.
    "process_reward_model": ("LlamaForCausalLM", {"seed": 2}),
}


def build_tiny_models(root: str | os.PathLike[str]) -> dict[str, Path]:
    """Build the tiny policy and reward models under ``root`` (skipped when already there); returns their paths.

    All models share one tokenizer, as a policy and its reward model usually do in practice. Safe to call
    again: a folder that already holds a ``config.json`` is reused.
    """
    root = Path(root)
    tokenizer_dir = root / "tokenizer"
    if not (tokenizer_dir / "tokenizer.json").exists():
        build_tokenizer(tokenizer_dir)
    paths: dict[str, Path] = {}
    for name, (architecture, kw) in TINY_MODELS.items():
        path = root / name
        if not (path / "config.json").exists():
            build_checkpoint(architecture, path, tokenizer_dir=str(tokenizer_dir), **kw)
        paths[name] = path
    return paths


def process_reward_pooler_config(model_path: str | os.PathLike[str]) -> dict[str, object]:
    """STEP pooling for the tiny math-shepherd-style PRM: read ``+``/``-`` logits at each step tag."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_path))
    good, bad = (tok.convert_tokens_to_ids(tok.tokenize(t))[0] for t in ("+", "-"))
    return {
        "pooling_type": "STEP",
        "step_tag_id": tok.convert_tokens_to_ids(STEP_TAG),
        "returned_token_ids": [good, bad],
    }


def tiny_dataset(n: int | None = None):
    """A ``datasets.Dataset`` with a ``prompt`` column made of :data:`TINY_PROMPTS` (the first ``n``)."""
    from datasets import Dataset

    prompts = TINY_PROMPTS if n is None else TINY_PROMPTS[:n]
    return Dataset.from_dict({"prompt": list(prompts)})


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.support.tiny_models DIR")
    print(json.dumps({k: str(v) for k, v in build_tiny_models(sys.argv[1]).items()}, indent=2))
