"""Ports of vLLM's ``tests/entrypoints/pooling/reward/test_token_reward_offline.py`` (GitHub commit
0675f35ef58b60090dd51c81a3390405bc2b67ce) and ``tests/entrypoints/pooling/reward/test_offline.py`` (commit
193e0494ada6fc1bd075379731252e4cbd8c8ccc), on tiny ``InternLM2ForRewardModel`` and ``Qwen2ForRewardModel``
checkpoints instead of ``internlm/internlm2-1_8b-reward``.

Kept: the LLM arguments (``tensor_parallel_size``, ``gpu_memory_utilization``, ``trust_remote_code``...:
accepted, the ignored ones with one warning each) and ``test_pooling_params``' assertions ("Default should use
activation."). Changed: the models (the Qwen2 RM is an added parametrization, whose default is the raw score as in vLLM); ``test_config`` reads
``llm.llm_engine.vllm_config`` (vLLM's engine internals, absent here): it checks the equivalent facts instead
(the prefix cache is on by default, no chunked prefill to configure); the older file's ``llm.reward(...)`` was
removed in vLLM 0.33 and raises here with the replacement named, so it is ported as ``encode(...,
pooling_task="token_classify")`` plus a check of that error.
"""

from __future__ import annotations

import warnings
import weakref

import pytest
import torch

from rlhf_rewards import LLM, PoolingParams
from rlhf_rewards.entrypoints.engine_args import IgnoredEngineArgWarning
from tests.compat.vllm.conftest import softmax

prompts = ["The chef prepared a delicious meal."]


@pytest.fixture(scope="module", params=["internlm2", "qwen2"])
def llm(request, internlm2_reward_like, qwen2_reward_like):
    path = internlm2_reward_like if request.param == "internlm2" else qwen2_reward_like
    with pytest.warns(IgnoredEngineArgWarning, match="gpu_memory_utilization"):
        llm = LLM(
            model=str(path),
            max_num_batched_tokens=32768,
            tensor_parallel_size=1,
            gpu_memory_utilization=0.75,
            enforce_eager=True,
            trust_remote_code=True,
            seed=0,
        )
    yield weakref.proxy(llm)
    del llm


def test_config(llm: LLM):
    # vLLM: cache_config.enable_prefix_caching and scheduler_config.enable_chunked_prefill are on. Here the
    # cross-call prefix cache (engine/kv_cache.py) is on by default and enable_prefix_caching is honoured (no
    # warning); there is no chunked prefill to configure, so asking for it warns that nothing changes.
    assert llm.runner.prefix_cache is not None
    with warnings.catch_warnings():
        warnings.simplefilter("error", IgnoredEngineArgWarning)
        on = LLM(model=llm.model_name, enable_prefix_caching=True, device="cpu")
    assert on.runner.prefix_cache is not None
    with pytest.warns(IgnoredEngineArgWarning, match="enable_chunked_prefill"):
        LLM(model=llm.model_name, enable_chunked_prefill=True, device="cpu")


def test_pooling_params(llm: LLM):
    def get_outputs(use_activation):
        outputs = llm.encode(
            prompts,
            pooling_params=PoolingParams(use_activation=use_activation),
            pooling_task="token_classify",
            use_tqdm=False,
        )
        return torch.cat([x.outputs.data for x in outputs])

    default = get_outputs(use_activation=None)
    w_activation = get_outputs(use_activation=True)
    wo_activation = get_outputs(use_activation=False)

    if llm.spec.architecture == "Qwen2ForRewardModel":
        # The added Qwen2 RM parametrization: vLLM 0.32's Qwen2ForRewardModelConfig sets use_activation=False
        # when the pooler config leaves it unset, so this model's default is its raw score (checked against the
        # running vLLM in tests/compat/vllm_live/test_offline_token.py).
        assert torch.allclose(default, wo_activation, atol=1e-2), (
            "Qwen2ForRewardModel's default is the raw score."
        )
    else:
        assert torch.allclose(default, w_activation, atol=1e-2), "Default should use activation."
    assert not torch.allclose(w_activation, wo_activation, atol=1e-2), (
        "wo_activation should not use activation."
    )
    assert torch.allclose(softmax(wo_activation), w_activation, atol=1e-2), (
        "w_activation should be close to activation(wo_activation)."
    )


def test_reward_method_was_removed(llm: LLM):
    with pytest.raises(AttributeError, match="pooling_task='token_classify'"):
        llm.reward(prompts, use_tqdm=False)
