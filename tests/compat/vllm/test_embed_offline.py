"""Port of vLLM's ``tests/entrypoints/pooling/embed/test_offline.py`` (GitHub commit
081d0a9f41589dffd80cf841d9262d10f0eb7afb), on a tiny base ``Qwen3Model`` instead of
``intfloat/multilingual-e5-small`` (BERT-style encoders are not served by this engine).

Kept: the calls and assertions, ``PoolingParams(use_activation=...)`` as the normalization switch (vLLM 0.33).
Changed: the model, ``prompt_token_ids`` and ``embedding_size`` (the tiny model's; ``llm.model_config`` is
vLLM's engine object, so the size is checked against the checkpoint's ``hidden_size``); in
``test_unsupported_tasks`` ``token_embed`` is served here (deliberate extension), while ``classify`` and
``token_classify`` raise vLLM's "Classification API is not supported by this model".
"""

from __future__ import annotations

import json
import weakref

import pytest
import torch
import torch.nn.functional as F

from rlhf_rewards import LLM, EmbeddingRequestOutput, PoolingParams

prompt = "The chef prepared a delicious meal."


@pytest.fixture(scope="module")
def embedding_size(e5_like):
    return json.loads((e5_like / "config.json").read_text())["hidden_size"]


@pytest.fixture(scope="module")
def llm(e5_like, embedding_size):
    with pytest.warns(UserWarning, match="gpu_memory_utilization"):
        llm = LLM(
            model=str(e5_like),
            max_num_batched_tokens=32768,
            tensor_parallel_size=1,
            gpu_memory_utilization=0.75,
            enforce_eager=True,
            seed=0,
            attention_config=None,
        )
    yield weakref.proxy(llm)
    del llm


@pytest.fixture(scope="module")
def prompt_token_ids(llm):
    return llm.get_tokenizer()(prompt)["input_ids"]


def test_str_prompts(llm: LLM, prompt_token_ids, embedding_size):
    outputs = llm.embed(prompt, use_tqdm=False)
    assert len(outputs) == 1
    assert isinstance(outputs[0], EmbeddingRequestOutput)
    assert outputs[0].prompt_token_ids == prompt_token_ids
    assert len(outputs[0].outputs.embedding) == embedding_size


def test_token_ids_prompts(llm: LLM, prompt_token_ids, embedding_size):
    outputs = llm.embed([prompt_token_ids], use_tqdm=False)
    assert len(outputs) == 1
    assert isinstance(outputs[0], EmbeddingRequestOutput)
    assert outputs[0].prompt_token_ids == prompt_token_ids
    assert len(outputs[0].outputs.embedding) == embedding_size


def test_list_prompts(llm: LLM, prompt_token_ids, embedding_size):
    outputs = llm.embed([prompt, prompt_token_ids], use_tqdm=False)
    assert len(outputs) == 2
    for i in range(len(outputs)):
        assert isinstance(outputs[i], EmbeddingRequestOutput)
        assert outputs[i].prompt_token_ids == prompt_token_ids
        assert len(outputs[i].outputs.embedding) == embedding_size


def test_pooling_params(llm: LLM):
    def get_outputs(normalize):
        outputs = llm.embed(
            [prompt],
            pooling_params=PoolingParams(use_activation=normalize),
            use_tqdm=False,
        )
        return torch.tensor([x.outputs.embedding for x in outputs])

    default = get_outputs(normalize=None)
    w_normal = get_outputs(normalize=True)
    wo_normal = get_outputs(normalize=False)

    assert torch.allclose(default, w_normal, atol=1e-2), "Default should use normal."
    assert not torch.allclose(w_normal, wo_normal, atol=1e-2), "wo_normal should not use normal."
    assert torch.allclose(w_normal, F.normalize(wo_normal, p=2, dim=-1), atol=1e-2), (
        "w_normal should be close to normal(wo_normal)."
    )


@pytest.mark.parametrize("task", ["token_embed", "classify", "token_classify"])
def test_unsupported_tasks(llm: LLM, task: str, prompt_token_ids, embedding_size):
    if task == "token_embed":
        # Deviation (extension): vLLM says "Try switching the model's pooling_task via ..."; served here.
        (out,) = llm.encode(prompt, pooling_task=task, use_tqdm=False)
        assert tuple(out.outputs.data.shape) == (len(prompt_token_ids), embedding_size)
        return
    err_msg = "Classification API is not supported by this model.+"
    with pytest.raises(ValueError, match=err_msg):
        llm.encode(prompt, pooling_task=task, use_tqdm=False)
