"""Offline differential, process reward models (STEP pooling): ``Qwen2ForProcessRewardModel``
(Qwen2.5-Math-PRM style, two labels read at each ``<extra_0>``) with and without a configured
``step_tag_id``, and a math-shepherd-style ``LlamaForCausalLM`` read at its step tag through the LM head's
``returned_token_ids`` columns.

vLLM 0.32 gives a Qwen2 PRM without a configured ``step_tag_id`` the id 151651 (``<extra_0>`` in Qwen2.5's
real vocabulary; ``Qwen2ForProcessRewardModelConfig``), whatever the tokenizer. The tiny tokenizer's
``<extra_0>`` is id 3, so vLLM finds no step there: this project looks the tag up in the model's own
tokenizer (same id on the real model), kept as ``prm-step-tag-from-tokenizer``; strict mode uses 151651.

The math-shepherd engine does not start in vLLM 0.32's CPU build: with ``runner="pooling"`` a
``LlamaForCausalLM`` is converted to an embedding model, and ``returned_token_ids`` then index the hidden
states instead of the LM head's vocabulary (the engine dies in its warm-up: "index 280 is out of bounds for
dimension 0 with size 128"). Those cases are skipped with vLLM's error until the oracle can run them.
"""

from __future__ import annotations

import pytest

from tests.compat.vllm_live.offline import LONG, Pair, build, ours_engine, vllm_engine
from tests.compat.vllm_live.oracle import pooling_params

pytestmark = pytest.mark.slow

STEP = "<extra_0>"
PROMPTS = [
    f"What is 12 + 7? Step one: add the units. {STEP} Step two: carry the tens. {STEP}",
    f"Solve 3 * 4 = 12. {STEP} Then 12 - 5 = 7. {STEP} So the result is 7. {STEP}",
    "No step tag in this one.",
]
STEP_TAG_ID = 3  # "<extra_0>" in the tiny tokenizer
GOOD_BAD = [280, 279]  # " the", " is": two single tokens standing for math-shepherd's "+" / "-"

ENGINES = {
    "qwen2-prm": ("Qwen2ForProcessRewardModel", {}),
    "qwen2-prm-step-tag": ("Qwen2ForProcessRewardModel", {"pooler_config": {"step_tag_id": STEP_TAG_ID}}),
    "llama-shepherd": ("LlamaForCausalLM", {"runner": "pooling", "pooler_config": {
        "tok_pooling_type": "STEP", "step_tag_id": STEP_TAG_ID, "returned_token_ids": GOOD_BAD}}),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {arch: build(tmp_path_factory, arch, arch.lower())
            for arch in ("Qwen2ForProcessRewardModel", "LlamaForCausalLM")}


@pytest.fixture(scope="module", params=list(ENGINES))
def pair(request, compat, checkpoints):
    arch, kwargs = ENGINES[request.param]
    path = checkpoints[arch]
    ours_kwargs = {k: v for k, v in kwargs.items() if k != "runner"}
    ours = ours_engine(path, **ours_kwargs)
    strict = ours_engine(path, strict_vllm_compat=True, **ours_kwargs)
    engines = vllm_engine(path, **kwargs)
    try:
        vllm = next(engines)
    except RuntimeError as exc:
        pytest.skip(f"vLLM 0.32's CPU build cannot start {request.param}: {str(exc)[-300:]}")
    pair = Pair(compat, f"{arch} ({request.param})", vllm, ours, strict)
    pair.name = request.param
    yield pair
    engines.close()


@pytest.mark.timeout(600)
def test_step_default(pair):
    deliberate = "prm-step-tag-from-tokenizer" if pair.name == "qwen2-prm" else None
    pair.check("encode token_classify (STEP default)", "encode", PROMPTS, pooling_task="token_classify",
               deliberate=deliberate)
    pair.check("supported_tasks", "attr", "supported_tasks",
               deliberate="supported-tasks" if pair.name.startswith("qwen2") else None)
    pair.check("pooling_task", "attr", "pooling_task")
    pair.check("encode classify (not served)", "encode", PROMPTS, pooling_task="classify")


@pytest.mark.timeout(600)
def test_step_params(pair):
    pair.check("token_classify step_tag_id=3", "encode", PROMPTS, pooling_params(step_tag_id=STEP_TAG_ID),
               pooling_task="token_classify")
    pair.check("token_classify use_activation=False step_tag_id=3", "encode", PROMPTS,
               pooling_params(use_activation=False, step_tag_id=STEP_TAG_ID), pooling_task="token_classify")
    pair.check("token_classify step_tag_id=280", "encode", PROMPTS, pooling_params(step_tag_id=280),
               pooling_task="token_classify")
    columns = [1] if pair.name.startswith("qwen2") else GOOD_BAD[::-1]
    pair.check(f"token_classify returned_token_ids={columns}", "encode", PROMPTS,
               pooling_params(step_tag_id=STEP_TAG_ID, returned_token_ids=columns), pooling_task="token_classify")
    pair.check("token_classify dimensions (refused)", "encode", PROMPTS, pooling_params(dimensions=4),
               pooling_task="token_classify")
    pair.check("token_classify truncate_prompt_tokens=12", "encode", PROMPTS + [LONG],
               pooling_params(step_tag_id=STEP_TAG_ID), pooling_task="token_classify",
               tokenization_kwargs={"truncate_prompt_tokens": 12})


@pytest.mark.timeout(600)
def test_embeddings(pair):
    deliberate = "embedding-api" if pair.name.startswith("qwen2") else None
    pair.check("encode embed", "encode", PROMPTS, pooling_task="embed", deliberate=deliberate)
    pair.check("encode token_embed", "encode", PROMPTS, pooling_task="token_embed", deliberate=deliberate)
