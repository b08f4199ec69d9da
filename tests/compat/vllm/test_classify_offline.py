"""Port of vLLM's ``tests/entrypoints/pooling/classify/test_offline.py`` (vLLM 0.33 line, GitHub commit
0a7dfab9f0e56280fa2fd8becb151fa37849b18b), on a tiny 2-label classifier instead of
``jason9693/Qwen2.5-1.5B-apeach``.

Kept: every call and assertion. Changed: the model, ``prompt_token_ids`` (the tiny tokenizer's ids instead of
Qwen2.5's hard-coded ones) and ``test_unsupported_tasks``: vLLM serves only the model's one pooling task,
while this engine also serves ``embed``, ``token_embed`` and ``token_classify`` on a classifier (a
deliberate extension, README compatibility table), so those cases check the outputs instead of an error;
``plugin`` is an error in both.
"""

from __future__ import annotations

import weakref

import pytest
import torch

from rlhf_rewards import LLM, ClassificationRequestOutput, PoolingParams
from rlhf_rewards.contract import PromptType
from tests.compat.vllm.conftest import softmax

prompt = "The chef prepared a delicious meal."
num_labels = 2


@pytest.fixture(scope="module")
def llm(apeach_like):
    with pytest.warns(UserWarning, match="gpu_memory_utilization"):
        llm = LLM(
            model=str(apeach_like),
            max_model_len=None,
            max_num_batched_tokens=32768,
            tensor_parallel_size=1,
            gpu_memory_utilization=0.75,
            enforce_eager=True,
            seed=0,
            enable_chunked_prefill=None,
        )
    yield weakref.proxy(llm)
    del llm


@pytest.fixture(scope="module")
def prompt_token_ids(llm):
    return llm.get_tokenizer()(prompt)["input_ids"]


def test_str_prompts(llm: LLM, prompt_token_ids):
    outputs = llm.classify(prompt, use_tqdm=False)
    assert len(outputs) == 1
    assert isinstance(outputs[0], ClassificationRequestOutput)
    assert outputs[0].prompt_token_ids == prompt_token_ids
    assert len(outputs[0].outputs.probs) == num_labels


def test_token_ids_prompts(llm: LLM, prompt_token_ids):
    outputs = llm.classify([prompt_token_ids], use_tqdm=False)
    assert len(outputs) == 1
    assert isinstance(outputs[0], ClassificationRequestOutput)
    assert outputs[0].prompt_token_ids == prompt_token_ids
    assert len(outputs[0].outputs.probs) == num_labels


def test_list_prompts(llm: LLM, prompt_token_ids):
    prompts: list[PromptType] = [prompt, prompt_token_ids]
    outputs = llm.classify(prompts, use_tqdm=False)
    assert len(outputs) == 2
    for i in range(len(outputs)):
        assert isinstance(outputs[i], ClassificationRequestOutput)
        assert outputs[i].prompt_token_ids == prompt_token_ids
        assert len(outputs[i].outputs.probs) == num_labels


def test_pooling_params(llm: LLM):
    def get_outputs(use_activation):
        outputs = llm.classify(
            prompt,
            pooling_params=PoolingParams(use_activation=use_activation),
            use_tqdm=False,
        )
        return torch.tensor([x.outputs.probs for x in outputs])

    default = get_outputs(use_activation=None)
    w_activation = get_outputs(use_activation=True)
    wo_activation = get_outputs(use_activation=False)

    assert torch.allclose(default, w_activation, atol=1e-2), "Default should use activation."
    assert not torch.allclose(w_activation, wo_activation, atol=1e-2), (
        "wo_activation should not use activation."
    )
    assert torch.allclose(softmax(wo_activation), w_activation, atol=1e-2), (
        "w_activation should be close to activation(wo_activation)."
    )


def test_score_api(llm: LLM):
    err_msg = "Scoring API is only enabled for num_labels == 1."
    with pytest.raises(ValueError, match=err_msg):
        llm.score("ping", "pong", use_tqdm=False)


@pytest.mark.parametrize("task", ["embed", "token_embed", "token_classify", "plugin"])
def test_unsupported_tasks(llm: LLM, task: str, prompt_token_ids):
    if task == "plugin":
        err_msg = "No IOProcessor plugin installed."
        with pytest.raises(ValueError, match=err_msg):
            llm.encode(prompt, pooling_task=task, use_tqdm=False)
        return
    # Deviation (extension): vLLM raises "Embedding API is not supported by this model" / "Try switching the
    # model's pooling_task"; this engine serves every task on the classifier's backbone and head.
    (out,) = llm.encode(prompt, pooling_task=task, use_tqdm=False)
    n = len(prompt_token_ids)
    expected = {"embed": (64,), "token_embed": (n, 64), "token_classify": (n, num_labels)}[task]
    assert tuple(out.outputs.data.shape) == expected
