"""Offline differential, converted and embedding models: a generative ``Qwen3ForCausalLM`` served with
``convert="classify"`` (``hf_overrides``: ``classifier_from_token`` with ``method: from_2_way_softmax``, as
vLLM's docs convert an LLM-as-reranker, and with ``classifier_from_token`` alone), ``convert="embed"``, and
a base ``Qwen3Model`` as an embedding model (``embed``/``token_embed`` defaults, ``use_activation``,
``dimensions``, ``seq_pooling_type``, ``score`` by cosine).
"""

from __future__ import annotations

import pytest

from tests.compat.vllm_live.offline import PROMPTS, Pair, build, ours_engine, vllm_engine
from tests.compat.vllm_live.oracle import pooling_params

pytestmark = pytest.mark.slow

TOKENS = ["Ġthe", "Ġis"]  # two single tokens of the tiny vocabulary ("no"/"yes" of a real reranker)
ENGINES = {
    "lm-classify-2way": (
        "Qwen3ForCausalLM",
        {
            "convert": "classify",
            "hf_overrides": {
                "architectures": ["Qwen3ForSequenceClassification"],
                "classifier_from_token": TOKENS,
                "method": "from_2_way_softmax",
            },
        },
    ),
    "lm-classify-reranker": (
        "Qwen3ForCausalLM",
        {
            "hf_overrides": {
                "architectures": ["Qwen3ForSequenceClassification"],
                "classifier_from_token": TOKENS,
                "is_original_qwen3_reranker": True,
            }
        },
    ),
    "lm-embed": ("Qwen3ForCausalLM", {"convert": "embed"}),
    "model-embed": ("Qwen3Model", {}),
    "model-embed-mean": ("Qwen3Model", {"pooler_config": {"seq_pooling_type": "MEAN"}}),
}
EMBED = ("lm-embed", "model-embed", "model-embed-mean")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {arch: build(tmp_path_factory, arch, arch.lower()) for arch in ("Qwen3ForCausalLM", "Qwen3Model")}


@pytest.fixture(scope="module", params=list(ENGINES))
def pair(request, compat, checkpoints):
    arch, kwargs = ENGINES[request.param]
    path = checkpoints[arch]
    ours = ours_engine(path, **kwargs)
    strict = ours_engine(path, strict_vllm_compat=True, **kwargs)
    for vllm in vllm_engine(path, runner="pooling", **kwargs):
        pair = Pair(compat, f"{arch} ({request.param})", vllm, ours, strict)
        pair.name = request.param
        yield pair


@pytest.mark.timeout(600)
def test_classify(pair):
    if pair.name in EMBED:
        pytest.skip("embedding engine")
    pair.check("supported_tasks", "attr", "supported_tasks", deliberate="supported-tasks")
    pair.check("encode classify", "encode", PROMPTS, pooling_task="classify")
    pair.check(
        "classify use_activation=False",
        "classify",
        PROMPTS,
        pooling_params=pooling_params(use_activation=False),
    )
    pair.check("score 1->N", "score", PROMPTS[0], PROMPTS[1:])
    pair.check("encode embed", "encode", PROMPTS, pooling_task="embed", deliberate="embedding-api")


@pytest.mark.timeout(600)
def test_embed(pair):
    if pair.name not in EMBED:
        pytest.skip("classifier engine")
    pair.check("supported_tasks", "attr", "supported_tasks")
    pair.check("embed", "embed", PROMPTS)
    pair.check("encode embed", "encode", PROMPTS, pooling_task="embed")
    pair.check(
        "embed use_activation=False", "embed", PROMPTS, pooling_params=pooling_params(use_activation=False)
    )
    # vLLM serves one task per engine: an embedding model's pooling_task is embed, token_embed is refused.
    pair.check(
        "encode token_embed (default)",
        "encode",
        PROMPTS[:2],
        pooling_task="token_embed",
        deliberate="task-not-served",
    )
    pair.check(
        "encode token_embed use_activation=False",
        "encode",
        PROMPTS[:2],
        pooling_params(use_activation=False),
        pooling_task="token_embed",
        deliberate="task-not-served",
    )
    pair.check(
        "embed dimensions=16",
        "embed",
        PROMPTS,
        pooling_params=pooling_params(dimensions=16),
        deliberate="dimensions-any-model",
    )
    pair.check(
        "encode token_embed dimensions=16",
        "encode",
        PROMPTS[:1],
        pooling_params(dimensions=16),
        pooling_task="token_embed",
        deliberate="task-not-served",
    )
    pair.check("embed dimensions=0 (refused)", "embed", PROMPTS, pooling_params=pooling_params(dimensions=0))
    pair.check("encode classify (not served)", "encode", PROMPTS, pooling_task="classify")
    pair.check("encode token_classify (not served)", "encode", PROMPTS, pooling_task="token_classify")
    pair.check("score (cosine) 1->N", "score", PROMPTS[0], PROMPTS[1:])
    pair.check(
        "embed truncate_prompt_tokens=4", "embed", PROMPTS, tokenization_kwargs={"truncate_prompt_tokens": 4}
    )
