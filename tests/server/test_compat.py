"""Drop-in routes, called exactly as verl's and OpenRLHF's clients call them; ``/tokenize`` and ``/v1/models``."""

from __future__ import annotations

import asyncio

import pytest
import requests
import torch

from rlhf_rewards import LLM, PoolingParams

aiohttp = pytest.importorskip("aiohttp")


async def _verl_post_request(address: str, payload: dict, endpoint: str) -> dict:
    # verl/experimental/reward_loop/reward_loop.py, RewardLoopWorker._post_request (one attempt).
    url = f"http://{address}/{endpoint}"
    timeout = aiohttp.ClientTimeout(total=None)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async with session.post(url, json=payload) as resp:
            resp.raise_for_status()
            return await resp.json()


def test_verl_reward_loop_classify(server, llm, qwen3_rm):
    tok = llm.get_tokenizer()
    chat = [{"role": "user", "content": "What is 12 + 7?"}, {"role": "assistant", "content": "19"}]
    # verl renders the chat with the RM's template as text and strips a leading BOS.
    disrm_prompt = tok.apply_chat_template(chat, add_generation_prompt=False, tokenize=False)
    address = server.url.removeprefix("http://")
    # verl sends the RM's model path as `model`; the served name works too.
    for model_name in (str(qwen3_rm), "tiny-rm"):
        payloads = {"model": model_name, "input": disrm_prompt, "use_activation": False}
        output = asyncio.run(_verl_post_request(address, payloads, "classify"))
        rm_score = output["data"][-1]["probs"][-1]
        (want,) = llm.encode(
            disrm_prompt, PoolingParams(use_activation=False), pooling_task="classify", use_tqdm=False
        )
        assert abs(rm_score - float(want.outputs.data[-1])) < 1e-5
        assert output["object"] == "list" and output["id"].startswith("classify-")
        item = output["data"][-1]
        assert item["num_classes"] == 1 and item["label"] == "LABEL_0" and item["index"] == 0
        assert output["usage"]["prompt_tokens"] == len(want.prompt_token_ids)


def test_classify_probabilities_and_batches(server, llm):
    texts = ["Hello, my name is", "ok"]
    body = requests.post(
        server.url + "/classify", json={"model": "tiny-rm", "input": texts}, timeout=60
    ).json()
    want = llm.classify(texts, use_tqdm=False)
    for item, w in zip(body["data"], want, strict=True):
        torch.testing.assert_close(
            torch.tensor(item["probs"]), torch.tensor(w.outputs.probs), atol=1e-5, rtol=0
        )


def _openrlhf_request_api_wrapper(url, data, score_key="rewards", try_max_times=5):
    # openrlhf/utils/remote_rm_utils.py, request_api_wrapper (without its sleep-and-retry on failure).
    headers = {"Content-Type": "application/json"}
    response = requests.post(url=url, json=data, headers=headers, timeout=180)
    response.raise_for_status()
    response = response.json()
    assert score_key in response, f"{score_key} not in {response}"
    return response.get(score_key)


def test_openrlhf_remote_reward(server, llm):
    prompts = ["<|im_start|>user\nWhat is 12 + 7?<|im_end|>\n", "<|im_start|>user\nSay hi<|im_end|>\n"]
    responses = ["<|im_start|>assistant\n19<|im_end|>", "<|im_start|>assistant\nhi<|im_end|>"]
    queries = [p + r for p, r in zip(prompts, responses, strict=True)]
    padded = [queries[0] + "<pad><pad>", "<pad>" + queries[1]]  # OpenRLHF decodes its padded sequences
    labels = ["19", ""]
    want = [
        float(o.outputs.data[-1])
        for o in llm.encode(
            queries, PoolingParams(use_activation=False), pooling_task="classify", use_tqdm=False
        )
    ]
    for sent in (queries, padded):
        rewards = _openrlhf_request_api_wrapper(
            f"{server.url}/get_reward", {"query": sent, "prompts": prompts, "labels": labels}
        )
        torch.testing.assert_close(torch.tensor(rewards), torch.tensor(want), atol=1e-5, rtol=0)
    full = requests.post(f"{server.url}/get_reward", json={"query": queries}, timeout=60).json()
    assert full["scores"] == full["rewards"] and full["extra_logs"] == {} and "errors" not in full


def test_tokenize_as_vllm(server, llm):
    tok = llm.get_tokenizer()
    body = requests.post(
        server.url + "/tokenize",
        json={"model": "tiny-rm", "prompt": "Hello there", "return_token_strs": True},
        timeout=30,
    ).json()
    ids = tok("Hello there")["input_ids"]
    assert body == {
        "count": len(ids),
        "max_model_len": llm.max_model_len,
        "tokens": ids,
        "token_strs": tok.convert_ids_to_tokens(ids),
    }
    chat = [{"role": "user", "content": "hi"}]
    body = requests.post(
        server.url + "/tokenize", json={"messages": chat, "add_generation_prompt": False}, timeout=30
    ).json()
    assert body["tokens"] == llm.render_chat([chat])[0]


def test_models_and_model_info(server, llm):
    models = requests.get(server.url + "/v1/models", timeout=10).json()
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["tiny-rm"]
    assert models["data"][0]["max_model_len"] == llm.max_model_len
    info = requests.get(server.url + "/v1/model_info", timeout=10).json()
    limits = info.pop("server_limits")
    assert limits["max_client_batch_size"] == 32
    assert info == llm.model_info("tiny-rm").to_dict()


def test_verl_reward_loop_sglang_embeddings(server, llm, qwen3_rm, checkpoint_factory):
    # verl's compute_score_disrm with rollout.name == "sglang": it posts {"model", "input"} to v1/embeddings and
    # reads data[-1]["embedding"][-1] as the reward, as SGLang's reward servers answer (the raw score vector).
    from tests.support.server import InProcessServer

    tok = llm.get_tokenizer()
    chat = [{"role": "user", "content": "What is 12 + 7?"}, {"role": "assistant", "content": "19"}]
    disrm_prompt = tok.apply_chat_template(chat, add_generation_prompt=False, tokenize=False)
    output = asyncio.run(
        _verl_post_request(
            server.url.removeprefix("http://"),
            {"model": str(qwen3_rm), "input": disrm_prompt},
            "v1/embeddings",
        )
    )
    (want,) = llm.encode(
        disrm_prompt, PoolingParams(use_activation=False), pooling_task="classify", use_tqdm=False
    )
    assert abs(output["data"][-1]["embedding"][-1] - float(want.outputs.data[-1])) < 1e-5
    assert output["object"] == "list" and output["data"][-1]["object"] == "embedding"

    token_rm = checkpoint_factory(
        "Qwen2ForRewardModel", seed=154
    )  # token reward model: the last token's score
    token_llm = LLM(str(token_rm), device="cpu")
    with InProcessServer(token_rm) as proc:
        output = asyncio.run(
            _verl_post_request(
                proc.url.removeprefix("http://"),
                {"model": str(token_rm), "input": disrm_prompt},
                "v1/embeddings",
            )
        )
    (want,) = token_llm.encode(
        disrm_prompt, PoolingParams(use_activation=False), pooling_task="token_classify", use_tqdm=False
    )
    assert abs(output["data"][-1]["embedding"][-1] - float(want.outputs.data[-1, -1])) < 1e-5
