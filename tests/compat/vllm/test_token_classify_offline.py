"""Port of vLLM's ``tests/entrypoints/pooling/token_classify/test_offline.py`` (GitHub commit
827428ed7e00577a2ed866b05c433739d824c21f), on a tiny 2-label classifier instead of
``jason9693/Qwen2.5-1.5B-apeach``.

Kept: the calls and assertions, including ``PoolerConfig(pooling_task="token_classify")`` (the stored test's
spelling; vLLM 0.33 names the field ``task``, and both work here). Changed: the model and its
``prompt_token_ids``; ``test_score_api`` expects vLLM 0.33's message for a model whose pooling task is
``token_classify`` ("This model does not support the Scoring API.", the stored test predates it);
``test_unsupported_tasks``: ``classify``, ``embed`` and ``token_embed`` are served here (deliberate
extension), only ``plugin`` is an error.
"""

from __future__ import annotations

import weakref

import pytest

from rlhf_rewards import LLM, PoolerConfig, PoolingRequestOutput

prompt = "The chef prepared a delicious meal."
num_labels = 2


@pytest.fixture(scope="module")
def llm(apeach_like):
    with pytest.warns(UserWarning, match="gpu_memory_utilization"):
        llm = LLM(
            model=str(apeach_like),
            pooler_config=PoolerConfig(pooling_task="token_classify"),
            max_num_batched_tokens=32768,
            tensor_parallel_size=1,
            gpu_memory_utilization=0.75,
            enforce_eager=True,
            seed=0,
        )
    yield weakref.proxy(llm)
    del llm


@pytest.fixture(scope="module")
def prompt_token_ids(llm):
    return llm.get_tokenizer()(prompt)["input_ids"]


def test_str_prompts(llm: LLM, prompt_token_ids):
    outputs = llm.encode(prompt, pooling_task="token_classify", use_tqdm=False)
    assert len(outputs) == 1
    assert isinstance(outputs[0], PoolingRequestOutput)
    assert outputs[0].prompt_token_ids == prompt_token_ids
    assert outputs[0].outputs.data.shape == (len(prompt_token_ids), num_labels)


def test_token_ids_prompts(llm: LLM, prompt_token_ids):
    outputs = llm.encode([prompt_token_ids], pooling_task="token_classify", use_tqdm=False)
    assert len(outputs) == 1
    assert isinstance(outputs[0], PoolingRequestOutput)
    assert outputs[0].prompt_token_ids == prompt_token_ids
    assert outputs[0].outputs.data.shape == (len(prompt_token_ids), num_labels)


def test_score_api(llm: LLM):
    assert llm.pooling_task == "token_classify"
    err_msg = "This model does not support the Scoring API."
    with pytest.raises(ValueError, match=err_msg):
        llm.score("ping", "pong", use_tqdm=False)


@pytest.mark.parametrize("task", ["classify", "embed", "token_embed", "plugin"])
def test_unsupported_tasks(llm: LLM, task: str):
    if task == "plugin":
        with pytest.raises(ValueError, match="plugin"):
            llm.encode(prompt, pooling_task=task, use_tqdm=False)
        return
    # Deviation (extension): vLLM raises "Try switching the model's pooling_task via ..." / "Embedding API is
    # not supported by this model"; here every task of the model stays available.
    (out,) = llm.encode(prompt, pooling_task=task, use_tqdm=False)
    assert out.outputs.data.shape[-1] == (num_labels if task == "classify" else 64)
