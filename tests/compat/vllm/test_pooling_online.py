"""Port of vLLM's ``tests/entrypoints/pooling/pooling/test_online.py`` (GitHub commit
1704cfce2d7ab65105b9a8af035064f330b16652, the newest stored version: it has ``bytes_only``; vLLM 0.33 renamed
its ``EMBED_DTYPE_TO_TORCH_DTYPE`` to ``EMBED_DTYPES``, whose keys are the same dtypes plus fp8), on a tiny
``InternLM2ForRewardModel`` served as ``internlm/internlm2-1_8b-reward`` by ``rlhf-rewards serve``.

Kept: ``--max-model-len 512 --chat-template DUMMY_CHAT_TEMPLATE`` (``--dtype bfloat16`` becomes float32 on this
CPU), every request body and assertion. Changed (real-model numbers): ``input_tokens`` is the tiny tokenizer's
encoding of ``input_text``.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests
import torch
from transformers import AutoTokenizer

from rlhf_rewards.server.pooling.protocol import PoolingResponse
from tests.compat.vllm.online import (
    DUMMY_CHAT_TEMPLATE,
    EMBED_DTYPES,
    ENDIANNESS,
    MetadataItem,
    RemoteOpenAIServer,
    binary2tensor,
    build_metadata_items,
    check_embeddings_close,
    decode_pooling_output,
)

MODEL_NAME = "internlm/internlm2-1_8b-reward"
input_text = "The chef prepared a delicious meal."
MESSAGES = [
    {"role": "user", "content": "The cat sat on the mat."},
    {"role": "assistant", "content": "A feline was resting on a rug."},
    {"role": "user", "content": "Stars twinkle brightly in the night sky."},
]


@pytest.fixture(scope="module")
def server(internlm2_reward_like):
    args = ["--max-model-len", "512", "--chat-template", DUMMY_CHAT_TEMPLATE]
    with RemoteOpenAIServer(internlm2_reward_like, args, MODEL_NAME) as remote_server:
        yield remote_server


@pytest.fixture(scope="module")
def tokenizer(internlm2_reward_like):
    return AutoTokenizer.from_pretrained(str(internlm2_reward_like))


@pytest.fixture(scope="module")
def input_tokens(tokenizer):
    return tokenizer(input_text)["input_ids"]


def _poolings(server, body) -> PoolingResponse:
    response = requests.post(server.url_for("pooling"), json=body)
    response.raise_for_status()
    return PoolingResponse.model_validate(response.json())


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_basic(server: RemoteOpenAIServer, model_name: str, input_tokens):
    response = requests.get(server.url_for("/v1/models"))
    served_model = response.json()["data"][0]["id"]
    assert served_model == MODEL_NAME

    response = requests.post(server.url_for("/tokenize"), json={"model": model_name, "prompt": input_text})
    assert response.json()["tokens"] == input_tokens


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_completion_request(server: RemoteOpenAIServer, model_name: str, input_tokens):
    for value in (input_text, input_tokens):  # input: str, then input: list[int]
        poolings = _poolings(server, {"model": model_name, "input": value, "encoding_format": "float"})
        assert poolings.id is not None
        assert len(poolings.data) == 1
        assert len(poolings.data[0].data) == len(input_tokens)
        assert poolings.usage.completion_tokens == 0
        assert poolings.usage.prompt_tokens == len(input_tokens)
        assert poolings.usage.total_tokens == len(input_tokens)


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_completion_request_batched(server: RemoteOpenAIServer, model_name: str, input_tokens):
    N = 10
    for value in ([input_text] * N, [input_tokens] * N):  # list[str], then list[list[int]]
        poolings = _poolings(server, {"model": model_name, "input": value, "encoding_format": "float"})
        assert poolings.id is not None
        assert len(poolings.data) == N
        assert len(poolings.data[0].data) == len(input_tokens)
        assert poolings.usage.completion_tokens == 0
        assert poolings.usage.prompt_tokens == len(input_tokens) * N
        assert poolings.usage.total_tokens == len(input_tokens) * N


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_conversation_pooling(server: RemoteOpenAIServer, model_name: str, tokenizer):
    chat_poolings = _poolings(server, {"model": model_name, "messages": MESSAGES, "encoding_format": "float"})
    prompt = tokenizer.apply_chat_template(
        MESSAGES,
        chat_template=DUMMY_CHAT_TEMPLATE,
        add_generation_prompt=True,
        continue_final_message=False,
        tokenize=False,
    )
    completion_poolings = _poolings(
        server,
        {"model": model_name, "input": prompt, "encoding_format": "float", "add_special_tokens": False},
    )  # To be consistent with chat

    assert chat_poolings.id is not None
    assert completion_poolings.id is not None
    assert chat_poolings.created <= completion_poolings.created
    assert chat_poolings.model_dump(exclude={"id", "created"}) == (
        completion_poolings.model_dump(exclude={"id", "created"})
    )


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_batch_base64_pooling(server: RemoteOpenAIServer, model_name: str):
    input_texts = ["Hello my name is", "The best thing about vLLM is that it supports many different models"]
    responses_float = _poolings(
        server, {"input": input_texts, "model": model_name, "encoding_format": "float"}
    )
    float_data = [np.array(d.data).squeeze(-1).tolist() for d in responses_float.data]

    responses_base64 = _poolings(
        server, {"input": input_texts, "model": model_name, "encoding_format": "base64"}
    )
    decoded = [
        np.frombuffer(base64.b64decode(d.data), dtype="float32").tolist() for d in responses_base64.data
    ]
    check_embeddings_close(
        embeddings_0_lst=float_data, embeddings_1_lst=decoded, name_0="float32", name_1="base64"
    )

    # Default response is float32 decoded from base64 by OpenAI Client
    responses_default = _poolings(server, {"input": input_texts, "model": model_name})
    default_data = [np.array(d.data).squeeze(-1).tolist() for d in responses_default.data]
    check_embeddings_close(
        embeddings_0_lst=float_data, embeddings_1_lst=default_data, name_0="float32", name_1="default"
    )


@pytest.mark.parametrize("model_name", [MODEL_NAME])
@pytest.mark.parametrize("encoding_format", ["base64", "bytes", "bytes_only"])
def test_embed_dtype_and_endianness(server: RemoteOpenAIServer, model_name: str, encoding_format: str):
    """vLLM's ``test_base64_embed_dtype_and_endianness``, ``test_bytes_embed_dtype_and_endianness`` and
    ``test_bytes_only_embed_dtype_and_endianness`` (the same loop over dtypes and byte orders)."""
    input_texts = [input_text] * 3
    url = server.url_for("pooling")
    responses_float = _poolings(
        server, {"model": model_name, "input": input_texts, "encoding_format": "float"}
    )
    float_data = [np.array(d.data).squeeze(-1).tolist() for d in responses_float.data]
    n_tokens = responses_float.usage.prompt_tokens // len(input_texts)

    for embed_dtype in EMBED_DTYPES:
        for endianness in ENDIANNESS:
            response = requests.post(
                url,
                json={
                    "model": model_name,
                    "input": input_texts,
                    "encoding_format": encoding_format,
                    "embed_dtype": embed_dtype,
                    "endianness": endianness,
                },
            )
            if encoding_format == "base64":
                got = [
                    binary2tensor(base64.b64decode(d["data"]), (-1,), embed_dtype, endianness)
                    .to(torch.float32)
                    .tolist()
                    for d in response.json()["data"]
                ]
            else:
                if encoding_format == "bytes":
                    items = [MetadataItem(**x) for x in json.loads(response.headers["metadata"])["data"]]
                else:
                    assert "metadata" not in response.headers
                    items = build_metadata_items(
                        embed_dtype=embed_dtype,
                        endianness=endianness,
                        shape=(n_tokens, 1),
                        n_request=len(input_texts),
                    )
                got = [
                    x.to(torch.float32).view(-1).tolist()
                    for x in decode_pooling_output(items=items, body=response.content)
                ]
            check_embeddings_close(
                embeddings_0_lst=float_data,
                embeddings_1_lst=got,
                name_0="float_data",
                name_1=f"{encoding_format}_data",
                tol=1e-2,
            )


@pytest.mark.parametrize("model_name", [MODEL_NAME])
@pytest.mark.parametrize("param_name", ["encoding_format", "embed_dtype", "endianness"])
def test_params_not_supported(server: RemoteOpenAIServer, model_name: str, param_name: str):
    responses_base64 = requests.post(
        server.url_for("pooling"),
        json={
            "model": model_name,
            "input": input_text,
            "encoding_format": "base64",
            param_name: f"bad_{param_name}",
        },
    )
    assert responses_base64.status_code == 400
    assert "literal_error" in responses_base64.json()["error"]["message"]
    assert f"bad_{param_name}" in responses_base64.json()["error"]["message"]


@pytest.mark.parametrize(
    "request_args",
    [
        {"model": MODEL_NAME, "input": input_text, "encoding_format": "float"},
        {"model": MODEL_NAME, "messages": MESSAGES, "encoding_format": "float"},
    ],
    ids=["test_invocations", "test_invocations_conversation"],
)
def test_invocations(server: RemoteOpenAIServer, request_args):
    pooling_response = requests.post(server.url_for("pooling"), json=request_args)
    pooling_response.raise_for_status()
    invocation_response = requests.post(server.url_for("invocations"), json=request_args)
    invocation_response.raise_for_status()

    pooling_output = pooling_response.json()
    invocation_output = invocation_response.json()
    assert pooling_output.keys() == invocation_output.keys()
    for pooling_data, invocation_data in zip(pooling_output["data"], invocation_output["data"], strict=True):
        assert pooling_data.keys() == invocation_data.keys()
        check_embeddings_close(
            embeddings_0_lst=pooling_data["data"],
            embeddings_1_lst=invocation_data["data"],
            name_0="completion",
            name_1="invocation",
        )
