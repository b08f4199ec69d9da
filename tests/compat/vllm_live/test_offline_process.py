"""Offline differential, process reward models (STEP pooling): ``Qwen2ForProcessRewardModel``
(Qwen2.5-Math-PRM style, two labels read at each ``<extra_0>``) with and without a configured
``step_tag_id``, and a math-shepherd-style ``LlamaForCausalLM`` read at its step tag through two LM-head rows.

vLLM 0.32 gives a Qwen2 PRM without a configured ``step_tag_id`` the id 151651 (``<extra_0>`` in Qwen2.5's
real vocabulary; ``Qwen2ForProcessRewardModelConfig``), whatever the tokenizer. The tiny tokenizer's
``<extra_0>`` is id 3, so vLLM finds no step there: this project looks the tag up in the model's own
tokenizer (same id on the real model), kept as ``prm-step-tag-from-tokenizer``; strict mode uses 151651.

Math-shepherd in vLLM 0.32: the recipe of older releases (``runner="pooling"`` with
``{"pooling_type": "STEP", "step_tag_id": ..., "returned_token_ids": [good, bad]}``) does not start. With
``runner="pooling"`` a ``LlamaForCausalLM`` becomes an embedding model (``convert="embed"``, no LM head), and
``StepPool`` (``model_executor/layers/pooler/tokwise/methods.py``) applies ``returned_token_ids`` to the
hidden states, before any head: the engine dies in its warm-up ("index 280 is out of bounds for dimension 0
with size 128"). What 0.32 runs is the LM-head conversion (``adapters.py``, ``SEQ_CLS_LOAD_METHODS``):
``convert="classify"`` with ``hf_overrides={"classifier_from_token": [good, bad], "method":
"no_post_processing"}`` makes ``score.weight = lm_head[[good, bad]]``, and ``tok_pooling_type: "STEP"`` with
``step_tag_id`` reads those two logits (softmaxed) at each step tag: math-shepherd's ``softmax(logits[:,
[good, bad]])``. The converted model's own task is ``classify`` there, so ``task: "token_classify"`` too (else
vLLM refuses the step scores: "Try switching the model's pooling_task"). Both engines get that configuration. ``returned_token_ids`` per request is not sent to it: vLLM
0.32 would index the 128 hidden dimensions before the 2-label head (a shape error that kills its engine).
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
#: " the", " is" (ids 280, 279): two single tokens standing for math-shepherd's "+" / "-" (classifier_from_token)
GOOD_TOKENS = ["Ġthe", "Ġis"]

ENGINES = {
    "qwen2-prm": ("Qwen2ForProcessRewardModel", {}),
    "qwen2-prm-step-tag": ("Qwen2ForProcessRewardModel", {"pooler_config": {"step_tag_id": STEP_TAG_ID}}),
    "llama-shepherd": (
        "LlamaForCausalLM",
        {
            "convert": "classify",
            "hf_overrides": {"classifier_from_token": GOOD_TOKENS, "method": "no_post_processing"},
            "pooler_config": {
                "task": "token_classify",
                "tok_pooling_type": "STEP",
                "step_tag_id": STEP_TAG_ID,
            },
        },
    ),
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {
        arch: build(tmp_path_factory, arch, arch.lower())
        for arch in ("Qwen2ForProcessRewardModel", "LlamaForCausalLM")
    }


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
    pair.check(
        "encode token_classify (STEP default)",
        "encode",
        PROMPTS,
        pooling_task="token_classify",
        deliberate=deliberate,
    )
    pair.check("supported_tasks", "attr", "supported_tasks", deliberate="supported-tasks")
    pair.check("pooling_task", "attr", "pooling_task")
    if pair.name.startswith("qwen2"):
        pair.check("encode classify (not served)", "encode", PROMPTS, pooling_task="classify")
    else:  # vLLM: the engine's task is token_classify; here the converted head's classify runs beside it
        pair.check(
            "encode classify (other task)",
            "encode",
            PROMPTS,
            pooling_task="classify",
            deliberate="task-not-served",
        )


@pytest.mark.timeout(600)
def test_step_params(pair):
    pair.check(
        "token_classify step_tag_id=3",
        "encode",
        PROMPTS,
        pooling_params(step_tag_id=STEP_TAG_ID),
        pooling_task="token_classify",
    )
    pair.check(
        "token_classify use_activation=False step_tag_id=3",
        "encode",
        PROMPTS,
        pooling_params(use_activation=False, step_tag_id=STEP_TAG_ID),
        pooling_task="token_classify",
    )
    pair.check(
        "token_classify step_tag_id=280",
        "encode",
        PROMPTS,
        pooling_params(step_tag_id=280),
        pooling_task="token_classify",
    )
    if pair.name.startswith("qwen2"):  # see the module docstring for the converted LM
        pair.check(
            "token_classify returned_token_ids=[1]",
            "encode",
            PROMPTS,
            pooling_params(step_tag_id=STEP_TAG_ID, returned_token_ids=[1]),
            pooling_task="token_classify",
        )
    pair.check(
        "token_classify dimensions (refused)",
        "encode",
        PROMPTS,
        pooling_params(dimensions=4),
        pooling_task="token_classify",
    )
    pair.check(
        "token_classify truncate_prompt_tokens=12",
        "encode",
        PROMPTS + [LONG],
        pooling_params(step_tag_id=STEP_TAG_ID),
        pooling_task="token_classify",
        tokenization_kwargs={"truncate_prompt_tokens": 12},
    )


@pytest.mark.timeout(600)
def test_embeddings(pair):
    deliberate = "embedding-api"
    pair.check("encode embed", "encode", PROMPTS, pooling_task="embed", deliberate=deliberate)
    pair.check("encode token_embed", "encode", PROMPTS, pooling_task="token_embed", deliberate=deliberate)
