"""The public API is exported once from rlhf_rewards/__init__.py and documented."""

from __future__ import annotations

import inspect

import rlhf_rewards


def test_public_names_exist_and_have_docstrings():
    for name in ("LLM", "PoolingParams", "PoolerConfig", "LoRARequest", "PoolingRequestOutput"):
        obj = getattr(rlhf_rewards, name)
        assert name in rlhf_rewards.__all__
        assert inspect.getdoc(obj), name
    for name in rlhf_rewards.__all__:
        obj = getattr(rlhf_rewards, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert inspect.getdoc(obj), f"{name} has no docstring"


def test_llm_signature_matches_vllm_offline_api():
    params = inspect.signature(rlhf_rewards.LLM.__init__).parameters
    for name in (
        "model",
        "runner",
        "tokenizer",
        "pooler_config",
        "dtype",
        "device",
        "trust_remote_code",
        "max_model_len",
        "max_num_batched_tokens",
        "enable_lora",
        "max_loras",
        "max_lora_rank",
        "seed",
    ):
        assert name in params
    assert params["trust_remote_code"].default is False
    encode = inspect.signature(rlhf_rewards.LLM.encode).parameters
    for name in (
        "prompts",
        "pooling_params",
        "pooling_task",
        "lora_request",
        "truncate_prompt_tokens",
        "use_tqdm",
    ):
        assert name in encode
