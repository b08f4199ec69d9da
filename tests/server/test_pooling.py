"""``/pooling`` on a real server, called as vLLM's documentation shows, against the in-process ``LLM.encode``."""

from __future__ import annotations

import base64
import concurrent.futures
import re

import numpy as np
import pytest
import requests
import torch

from rlhf_rewards import PoolingParams
from tests.conftest import MIXED_TEXTS

ATOL = 1e-5


def _post(server, route: str, body: dict) -> dict:
    response = requests.post(f"{server.url}{route}", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _ref(llm, prompts, task, params=None):
    return [o.outputs.data for o in llm.encode(prompts, params, pooling_task=task, use_tqdm=False)]


def _close(got, want) -> None:
    torch.testing.assert_close(torch.tensor(got, dtype=torch.float32), want, atol=ATOL, rtol=0)


def test_completion_form_as_in_vllm_docs(server, llm):
    # vLLM's openai_pooling_client.py: {"model": model_name, "input": "vLLM is great!"}
    body = _post(server, "/pooling", {"model": "tiny-rm", "input": "vLLM is great!"})
    assert body["object"] == "list" and body["id"].startswith("pooling-") and isinstance(body["created"], int)
    assert body["model"] == "tiny-rm"
    (item,) = body["data"]
    assert item["index"] == 0 and item["object"] == "pooling"
    # The default task of an outcome reward model is classify (sigmoid of the reward).
    _close(item["data"], _ref(llm, "vLLM is great!", "classify")[0])
    n_tokens = len(llm.get_tokenizer()("vLLM is great!")["input_ids"])
    assert body["usage"] == {
        "prompt_tokens": n_tokens,
        "total_tokens": n_tokens,
        "completion_tokens": 0,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }  # vLLM's UsageInfo


@pytest.mark.parametrize("task", ["classify", "token_classify", "embed", "token_embed"])
def test_every_task_and_input_form_matches_the_engine(server, llm, task):
    tok = llm.get_tokenizer()
    ids = [tok(t)["input_ids"] for t in MIXED_TEXTS]
    for inp, prompts in (
        (MIXED_TEXTS, MIXED_TEXTS),
        (ids, [{"prompt_token_ids": i} for i in ids]),
        (ids[1], [{"prompt_token_ids": ids[1]}]),
    ):
        body = _post(server, "/pooling", {"model": "tiny-rm", "input": inp, "task": task})
        want = _ref(llm, prompts, task)
        assert [d["index"] for d in body["data"]] == list(range(len(want)))
        for item, w in zip(body["data"], want, strict=True):
            _close(item["data"], w)


def test_request_parameters_match_pooling_params(server, llm):
    text = MIXED_TEXTS[1]
    cases = [
        ({"task": "classify", "use_activation": False}, "classify", PoolingParams(use_activation=False)),
        (
            {"task": "token_classify", "truncate_prompt_tokens": 5},
            "token_classify",
            PoolingParams(truncate_prompt_tokens=5),
        ),
        (
            {"task": "embed", "dimensions": 8, "normalize": False},
            "embed",
            PoolingParams(dimensions=8, normalize=False),
        ),
        (
            {"task": "token_embed", "truncate_prompt_tokens": -1},
            "token_embed",
            PoolingParams(truncate_prompt_tokens=-1),
        ),
    ]
    for fields, task, params in cases:
        body = _post(server, "/pooling", {"input": [text], "return_details": True, **fields})
        (want,) = llm.encode([text], params, pooling_task=task, use_tqdm=False)
        (item,) = body["data"]
        _close(item["data"], want.outputs.data)
        assert item["shape"] == list(want.outputs.data.shape)
        assert item["prompt_token_ids"] == want.prompt_token_ids


def test_chat_form_as_in_vllm_docs(server, llm):
    # vLLM's example sends text content parts; they render like plain string content.
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "What is 12 + 7?"}]},
        {"role": "assistant", "content": "The answer is 19."},
    ]
    body = _post(server, "/pooling", {"model": "tiny-rm", "messages": messages, "return_details": True})
    plain = [
        {"role": "user", "content": "What is 12 + 7?"},
        {"role": "assistant", "content": "The answer is 19."},
    ]
    (ids,) = llm.render_chat([plain])
    (item,) = body["data"]
    assert item["prompt_token_ids"] == ids
    _close(item["data"], _ref(llm, {"prompt_token_ids": ids}, "classify")[0])
    with_prompt = _post(
        server, "/pooling", {"messages": plain[:1], "add_generation_prompt": True, "return_details": True}
    )
    assert (
        with_prompt["data"][0]["prompt_token_ids"]
        == llm.render_chat([plain[:1]], add_generation_prompt=True)[0]
    )


@pytest.mark.parametrize(
    "dtype,endianness",
    [("float32", "native"), ("float32", "big"), ("float16", "little"), ("bfloat16", "native")],
)
def test_base64_encoding(server, llm, dtype, endianness):
    body = _post(
        server,
        "/pooling",
        {
            "input": MIXED_TEXTS[:2],
            "task": "token_classify",
            "encoding_format": "base64",
            "embed_dtype": dtype,
            "endianness": endianness,
            "return_details": True,
        },
    )
    want = _ref(llm, MIXED_TEXTS[:2], "token_classify")
    for item, w in zip(body["data"], want, strict=True):
        raw = base64.b64decode(item["data"])
        order = {"native": "=", "big": ">", "little": "<"}[endianness]
        if dtype == "bfloat16":
            bits = np.frombuffer(raw, dtype=np.dtype("int16").newbyteorder(order)).astype(np.int16)
            got = torch.from_numpy(bits.copy()).view(torch.bfloat16).float()
            tol = 1e-2
        else:
            got = torch.from_numpy(
                np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder(order)).astype(np.float32)
            )
            tol = 1e-3 if dtype == "float16" else ATOL
        torch.testing.assert_close(got.reshape(item["shape"]), w, atol=tol, rtol=0)


def _metric(server, name: str) -> float:
    text = requests.get(server.url + "/metrics", timeout=10).text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_concurrent_requests_are_batched_together_and_stay_correct(server, llm):
    texts = [f"{MIXED_TEXTS[i % len(MIXED_TEXTS)]} #{i}" for i in range(48)]
    want = _ref(llm, texts, "classify")
    calls_before = _metric(server, "rlhf_rewards_batch_size_requests_count")
    requests_before = _metric(server, "rlhf_rewards_batch_size_requests_sum")
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        bodies = list(pool.map(lambda t: _post(server, "/pooling", {"input": t}), texts))
    for body, w in zip(bodies, want, strict=True):
        _close(body["data"][0]["data"], w)
    engine_calls = _metric(server, "rlhf_rewards_batch_size_requests_count") - calls_before
    merged = _metric(server, "rlhf_rewards_batch_size_requests_sum") - requests_before
    assert merged == len(texts)
    assert engine_calls < len(texts)  # several requests shared an engine call


def test_truncation_is_the_offline_calls(checkpoint_factory, tmp_path):
    """``/pooling`` truncates as ``LLM.encode`` does (both checked against vLLM in tests/compat/vllm_live): with
    no ``truncation_side`` the tokenizer cuts the text and keeps its BOS/EOS; with a side the ids are sliced."""
    import shutil

    from rlhf_rewards import LLM
    from tests.compat.vllm_live.offline import add_bos_eos
    from tests.support.server import InProcessServer

    path = add_bos_eos(
        shutil.copytree(
            checkpoint_factory("Qwen3ForSequenceClassification", num_labels=3, seed=3), tmp_path / "rm"
        )
    )
    text = "The quick brown fox jumps over the lazy dog. " * 3
    llm = LLM(str(path), device="cpu", max_model_len=32)
    with InProcessServer(path, "--max-model-len", "32") as server:
        for side in (None, "left", "right"):
            kwargs = {"truncate_prompt_tokens": 5, **({"truncation_side": side} if side else {})}
            (expected,) = llm.encode(text, pooling_task="token_classify", tokenization_kwargs=kwargs)
            body = {"input": text, "task": "token_classify", "return_details": True, **kwargs}
            r = requests.post(server.url + "/pooling", json=body, timeout=60)
            assert r.status_code == 200, r.text
            item = r.json()["data"][0]
            assert item["prompt_token_ids"] == expected.prompt_token_ids, side
            assert torch.allclose(torch.tensor(item["data"]), expected.outputs.data, atol=1e-5)
    ids = llm.get_tokenizer()(text)["input_ids"]
    (none,) = llm.encode(text, pooling_task="classify", tokenization_kwargs={"truncate_prompt_tokens": 5})
    assert none.prompt_token_ids == ids[:4] + ids[-1:]  # the EOS is kept: the tokenizer made the cut
