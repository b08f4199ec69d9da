"""Offline differential, token reward models: ``Qwen2ForRewardModel`` (Qwen2.5-Math-RM style: one raw score
per token, the last one is the reward) and ``InternLM2ForRewardModel``.

The Qwen2 RM's tokenizer is saved with ``truncation_side="left"`` in its ``tokenizer_config.json``: vLLM's
pooling runner loads every tokenizer with ``truncation_side="right"`` (``vllm/tokenizers/registry.py``), so
the tokenizer's own side never applies, here as there.

InternLM2ForRewardModel is compared only when vLLM's CPU build can load the checkpoint: its ``config.json``
has ``model_type: internlm2``, which transformers does not know, and vLLM reads it through the checkpoint's
remote code (``trust_remote_code=True`` and ``configuration_internlm2.py``), which the tiny checkpoint does
not ship (this project loads it natively). The test says so when it skips.
"""

from __future__ import annotations

import json

import pytest

from tests.compat.vllm_live.offline import LONG, PROMPTS, Pair, build, ours_engine, vllm_engine
from tests.compat.vllm_live.oracle import pooling_params

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["qwen2-rm", "internlm2-rm"])
def pair(request, compat, tmp_path_factory):
    if request.param == "qwen2-rm":
        path = build(tmp_path_factory, "Qwen2ForRewardModel", "qwen2rm")
        cfg_path = path / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg["truncation_side"] = "left"
        cfg_path.write_text(json.dumps(cfg, indent=2))
        vllm_kwargs = {}
    else:
        path = build(
            tmp_path_factory,
            "InternLM2ForRewardModel",
            "internlm2rm",
            **{"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1},
        )
        vllm_kwargs = {"trust_remote_code": True}
    ours = ours_engine(path)
    strict = ours_engine(path, strict_vllm_compat=True)
    try:
        engines = vllm_engine(path, **vllm_kwargs)
        vllm = next(engines)
    except RuntimeError as exc:
        pytest.skip(f"vLLM's CPU build cannot load the tiny {request.param}: {str(exc)[-600:]}")
    pair = Pair(compat, request.param, vllm, ours, strict)
    yield pair
    engines.close()


@pytest.mark.timeout(600)
def test_token_classify(pair):
    pair.check("encode token_classify (default activation)", "encode", PROMPTS, pooling_task="token_classify")
    pair.check(
        "encode token_classify use_activation=False",
        "encode",
        PROMPTS,
        pooling_params(use_activation=False),
        pooling_task="token_classify",
    )
    pair.check(
        "encode token_classify use_activation=True",
        "encode",
        PROMPTS,
        pooling_params(use_activation=True),
        pooling_task="token_classify",
    )
    pair.check("supported_tasks", "attr", "supported_tasks", deliberate="supported-tasks")
    pair.check("encode classify (not served)", "encode", PROMPTS, pooling_task="classify")
    pair.check("classify (not served)", "classify", PROMPTS)
    pair.check(
        "token_classify step_tag_id (refused: ALL pooling)",
        "encode",
        PROMPTS,
        pooling_params(step_tag_id=3),
        pooling_task="token_classify",
    )
    pair.check(
        "token_classify dimensions (refused)",
        "encode",
        PROMPTS,
        pooling_params(dimensions=4),
        pooling_task="token_classify",
    )


@pytest.mark.timeout(600)
def test_embeddings_not_served_by_vllm(pair):
    pair.check("encode embed", "encode", PROMPTS, pooling_task="embed", deliberate="embedding-api")
    pair.check(
        "encode token_embed", "encode", PROMPTS, pooling_task="token_embed", deliberate="embedding-api"
    )


@pytest.mark.timeout(600)
def test_tokenization_kwargs(pair):
    for case, kwargs in [
        ("truncate_prompt_tokens=5", {"truncate_prompt_tokens": 5}),
        ("truncate_prompt_tokens=5 left", {"truncate_prompt_tokens": 5, "truncation_side": "left"}),
        ("truncate_prompt_tokens=5 right", {"truncate_prompt_tokens": 5, "truncation_side": "right"}),
        ("truncate_prompt_tokens=-1", {"truncate_prompt_tokens": -1}),
        ("truncation=True max_length=7", {"truncation": True, "max_length": 7}),
        ("add_special_tokens=False", {"add_special_tokens": False}),
    ]:
        pair.check(
            f"tokenization_kwargs {case}",
            "encode",
            PROMPTS + [LONG],
            pooling_task="token_classify",
            tokenization_kwargs=kwargs,
        )
