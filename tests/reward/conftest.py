"""Tiny reward models shared by the reward-function tests (built and loaded once per test session)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from rlhf_rewards import LLM
from tests.support.checkpoints import SPECIAL_TOKENS, STEP_TAG

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

# Token ids of the special tokens in the tiny tokenizer (trained with SPECIAL_TOKENS first, in order).
TOKEN_ID = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
STEP_TAG_ID = TOKEN_ID[STEP_TAG]
# A math-shepherd-style PRM reads the LM-head logits of a "good" and a "bad" token at each step tag.
GOOD_ID, BAD_ID = TOKEN_ID["<|im_start|>"], TOKEN_ID["<|im_end|>"]
PRM_POOLER = {"pooling_type": "STEP", "step_tag_id": STEP_TAG_ID, "returned_token_ids": [GOOD_ID, BAD_ID]}

PROMPTS = ["What is 12 + 7?", "Hello, my name is", "Solve 3 * 4 = 12."]
COMPLETIONS = [
    " Step one: add the units.\n\nStep two: carry the tens.\n\nThe answer is 19.",
    " Ada and I like mathematics",
    "",
]


def conversational(prompts: list[str], completions: list[str]) -> tuple[list, list]:
    """The same examples in TRL's conversational format."""
    return (
        [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": p}] for p in prompts],
        [[{"role": "assistant", "content": c}] for c in completions],
    )


@pytest.fixture(scope="session")
def rm_path(checkpoint_factory) -> Path:
    """An outcome RM: Qwen3ForSequenceClassification, one label."""
    return checkpoint_factory("Qwen3ForSequenceClassification", seed=11)


@pytest.fixture(scope="session")
def prm_path(checkpoint_factory) -> Path:
    """A math-shepherd-style PRM: LlamaForCausalLM, loaded with STEP pooling (PRM_POOLER)."""
    return checkpoint_factory("LlamaForCausalLM", seed=12)


@pytest.fixture(scope="session")
def policy_path(checkpoint_factory, rm_path) -> Path:
    """A tiny causal LM policy sharing the reward models' tokenizer."""
    return checkpoint_factory("Qwen3ForCausalLM", seed=13, tokenizer_dir=str(rm_path))


@pytest.fixture(scope="session")
def no_template_rm_path(tmp_path_factory, rm_path) -> Path:
    """The outcome RM with its chat template removed."""
    path = tmp_path_factory.mktemp("no-template") / "rm"
    shutil.copytree(rm_path, path)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    config = path / "tokenizer_config.json"
    data = json.loads(config.read_text())
    data.pop("chat_template", None)
    config.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="session")
def rm_llm(rm_path) -> LLM:
    return LLM(str(rm_path), device="cpu")


@pytest.fixture(scope="session")
def prm_llm(prm_path) -> LLM:
    return LLM(str(prm_path), device="cpu", pooler_config=PRM_POOLER)


def builder_available(architecture: str) -> bool:
    from tests.support.checkpoints import BUILDERS

    return architecture in BUILDERS
