"""Port of vLLM's ``tests/entrypoints/pooling/embed/test_online.py`` (GitHub commit
c78eee7548bc93875df5d8f3d5de326e70503370): ``/v1/embeddings``, ``/pooling`` and ``/invocations`` on an embedding
model, here a tiny ``Qwen3Model`` served as ``intfloat/multilingual-e5-small`` with ``--max-model-len 512
--chat-template DUMMY_CHAT_TEMPLATE``.

Kept: request bodies and assertions. The ``openai`` client is not installed here: ``embeddings.create`` is
:func:`embeddings_create`, which posts what the client posts (without ``encoding_format`` the client asks for
``base64`` and decodes float32, as vLLM's comment says). Changed (real-model numbers): the embedding size (384
-> the tiny model's 64), prompt token counts (computed with the tiny tokenizer), token ids outside the tiny
vocabulary (499 -> 99; the real model's 21 ids of the truncation test -> the tiny tokenizer's ids of that
text); ``run_embedding_correctness_test`` (sentence-transformers) compares with the in-process engine
(``LLM.encode(..., pooling_task="embed")``); the server runs with ``--no-enable-prefix-caching``, as vLLM
serves the real (encoder) model. ``normalize`` is this library's extension (vLLM 0.33 removed it;
this stored test still uses it). Deliberate deviations: ``test_pooling_not_supported`` — ``classify`` and
``token_classify`` are 400 ``BadRequestError`` here too, with this server's message ("... not supported ...",
vLLM: "Task classify is not supported"); ``plugin`` starts with vLLM 0.33's "No IOProcessor plugin installed.".
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import requests
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from rlhf_rewards import LLM
from rlhf_rewards.server.embed.protocol import EmbeddingResponse
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

MODEL_NAME = "intfloat/multilingual-e5-small"
HIDDEN = 64  # 384 for the real model
MESSAGES = [
    {"role": "user", "content": "The cat sat on the mat."},
    {"role": "assistant", "content": "A feline was resting on a rug."},
    {"role": "user", "content": "Stars twinkle brightly in the night sky."},
]


@pytest.fixture(scope="module")
def server(e5_like):
    # The real e5 is an encoder: vLLM keeps no prefix cache for it. The causal stand-in would reuse the chat
    # request's cached keys/values for the same prompt sent as text (test_conversation_embedding), which the
    # engine documents as exact only up to float rounding (~1e-7) outside --deterministic; this test wants ==.
    args = ["--max-model-len", "512", "--chat-template", DUMMY_CHAT_TEMPLATE, "--no-enable-prefix-caching"]
    with RemoteOpenAIServer(e5_like, args, MODEL_NAME) as remote_server:
        yield remote_server


@pytest.fixture(scope="module")
def hf_model(e5_like):
    return LLM(str(e5_like), device="cpu")


@pytest.fixture(scope="module")
def tokenizer(e5_like):
    return AutoTokenizer.from_pretrained(str(e5_like))


def n_tokens(tokenizer, texts) -> int:
    return sum(len(tokenizer(t)["input_ids"]) for t in texts)


def embeddings_create(server, *, extra_body=None, **kw) -> EmbeddingResponse:
    """``openai.AsyncOpenAI.embeddings.create``: without ``encoding_format`` it requests base64 and decodes it."""
    decode = "encoding_format" not in kw
    body = {**kw, **(extra_body or {}), **({"encoding_format": "base64"} if decode else {})}
    response = requests.post(server.url_for("v1/embeddings"), json=body)
    if response.status_code == 400:
        raise BadRequestError(response.json()["error"]["message"])
    response.raise_for_status()
    out = response.json()
    if decode:
        for d in out["data"]:
            d["embedding"] = np.frombuffer(base64.b64decode(d["embedding"]), dtype="float32").tolist()
    return EmbeddingResponse.model_validate(out)


class BadRequestError(Exception):
    """``openai.BadRequestError``."""


def run_embedding_correctness_test(hf_model: LLM, inputs, vllm_outputs) -> None:
    """vLLM's helper (``tests/models/language/pooling/embed_utils.py``) against the in-process engine."""
    want = [o.outputs.data.tolist() for o in hf_model.encode(inputs, pooling_task="embed", use_tqdm=False)]
    check_embeddings_close(
        embeddings_0_lst=want, embeddings_1_lst=vllm_outputs, name_0="hf", name_1="vllm", tol=1e-2
    )


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_single_embedding(hf_model, server, model_name: str, tokenizer):
    input_texts = ["The chef prepared a delicious meal."]

    embeddings = embeddings_create(server, model=model_name, input=input_texts, encoding_format="float")
    assert embeddings.id is not None
    assert len(embeddings.data) == 1
    assert len(embeddings.data[0].embedding) == HIDDEN
    assert embeddings.usage.completion_tokens == 0
    assert embeddings.usage.prompt_tokens == n_tokens(tokenizer, input_texts)  # 11
    assert embeddings.usage.total_tokens == n_tokens(tokenizer, input_texts)

    vllm_outputs = [d.embedding for d in embeddings.data]
    run_embedding_correctness_test(hf_model, input_texts, vllm_outputs)

    # test using token IDs
    input_tokens = [1, 1, 1, 1, 1]
    embeddings = embeddings_create(server, model=model_name, input=input_tokens, encoding_format="float")
    assert embeddings.id is not None
    assert len(embeddings.data) == 1
    assert len(embeddings.data[0].embedding) == HIDDEN
    assert embeddings.usage.completion_tokens == 0
    assert embeddings.usage.prompt_tokens == 5
    assert embeddings.usage.total_tokens == 5


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_batch_embedding(hf_model, server, model_name: str, tokenizer):
    input_texts = [
        "The cat sat on the mat.",
        "A feline was resting on a rug.",
        "Stars twinkle brightly in the night sky.",
    ]
    embeddings = embeddings_create(server, model=model_name, input=input_texts, encoding_format="float")
    assert embeddings.id is not None
    assert len(embeddings.data) == 3
    assert len(embeddings.data[0].embedding) == HIDDEN
    assert embeddings.usage.completion_tokens == 0
    assert embeddings.usage.prompt_tokens == n_tokens(tokenizer, input_texts)  # 33
    assert embeddings.usage.total_tokens == n_tokens(tokenizer, input_texts)

    vllm_outputs = [d.embedding for d in embeddings.data]
    run_embedding_correctness_test(hf_model, input_texts, vllm_outputs)

    # test list[list[int]]
    input_tokens = [[4, 5, 7, 9, 20], [15, 29, 99], [24, 24, 24, 24, 24], [25, 32, 64, 77]]
    embeddings = embeddings_create(server, model=model_name, input=input_tokens, encoding_format="float")
    assert embeddings.id is not None
    assert len(embeddings.data) == 4
    assert len(embeddings.data[0].embedding) == HIDDEN
    assert embeddings.usage.completion_tokens == 0
    assert embeddings.usage.prompt_tokens == 17
    assert embeddings.usage.total_tokens == 17


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_conversation_embedding(server, model_name: str, tokenizer):
    chat_response = requests.post(
        server.url_for("v1/embeddings"),
        json={"model": model_name, "messages": MESSAGES, "encoding_format": "float"},
    )
    chat_response.raise_for_status()
    chat_embeddings = EmbeddingResponse.model_validate(chat_response.json())

    prompt = tokenizer.apply_chat_template(
        MESSAGES,
        chat_template=DUMMY_CHAT_TEMPLATE,
        add_generation_prompt=True,
        continue_final_message=False,
        tokenize=False,
    )
    completion_embeddings = embeddings_create(
        server,
        model=model_name,
        input=prompt,
        encoding_format="float",
        extra_body={"add_special_tokens": False},
    )  # To be consistent with chat

    assert chat_embeddings.id is not None
    assert completion_embeddings.id is not None
    assert chat_embeddings.created <= completion_embeddings.created
    assert chat_embeddings.model_dump(exclude={"id", "created"}) == (
        completion_embeddings.model_dump(exclude={"id", "created"})
    )


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_batch_base64_embedding(hf_model, server, model_name: str):
    input_texts = ["Hello my name is", "The best thing about vLLM is that it supports many different models"]

    responses_float = embeddings_create(server, input=input_texts, model=model_name, encoding_format="float")
    float_data = [d.embedding for d in responses_float.data]
    run_embedding_correctness_test(hf_model, input_texts, float_data)

    responses_base64 = embeddings_create(
        server, input=input_texts, model=model_name, encoding_format="base64"
    )
    base64_data = [
        np.frombuffer(base64.b64decode(d.embedding), dtype="float32").tolist() for d in responses_base64.data
    ]
    run_embedding_correctness_test(hf_model, input_texts, base64_data)

    # Default response is float32 decoded from base64 by OpenAI Client
    responses_default = embeddings_create(server, input=input_texts, model=model_name)
    default_data = [d.embedding for d in responses_default.data]
    run_embedding_correctness_test(hf_model, input_texts, default_data)


@pytest.mark.parametrize("model_name", [MODEL_NAME])
@pytest.mark.parametrize("encoding_format", ["base64", "bytes", "bytes_only"])
def test_embed_dtype_and_endianness(server, model_name: str, encoding_format: str):
    """vLLM's ``test_base64_embed_dtype_and_endianness``, ``test_bytes_embed_dtype_and_endianness`` and
    ``test_bytes_only_embed_dtype_and_endianness`` (the same loop; bytes_only sends the text twice)."""
    input_texts = ["The best thing about vLLM is that it supports many different models"]
    if encoding_format == "bytes_only":
        input_texts = input_texts * 2
    responses_float = embeddings_create(server, input=input_texts, model=model_name, encoding_format="float")
    float_data = [d.embedding for d in responses_float.data]
    embedding_size = len(float_data[0])

    for embed_dtype in EMBED_DTYPES:
        for endianness in ENDIANNESS:
            response = requests.post(
                server.url_for("/v1/embeddings"),
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
                    binary2tensor(base64.b64decode(d["embedding"]), (-1,), embed_dtype, endianness)
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
                        shape=(embedding_size,),
                        n_request=len(input_texts),
                    )
                got = [
                    x.to(torch.float32).tolist()
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
def test_params_not_supported(server, model_name: str, param_name: str):
    input_texts = ["The best thing about vLLM is that it supports many different models"]
    responses_base64 = requests.post(
        server.url_for("/v1/embeddings"),
        json={
            "model": model_name,
            "input": input_texts,
            "encoding_format": "base64",
            param_name: f"bad_{param_name}",
        },
    )
    assert responses_base64.status_code == 400
    assert "literal_error" in responses_base64.json()["error"]["message"]
    assert f"bad_{param_name}" in responses_base64.json()["error"]["message"]


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_single_embedding_truncation(server, model_name: str, tokenizer):
    input_texts = ["Como o Brasil pode fomentar o desenvolvimento de modelos de IA?"]
    for value in (input_texts, tokenizer(input_texts[0])["input_ids"]):  # text, then its token ids
        embeddings = embeddings_create(
            server, model=model_name, input=value, extra_body={"truncate_prompt_tokens": 10}
        )
        assert embeddings.id is not None
        assert len(embeddings.data) == 1
        assert len(embeddings.data[0].embedding) == HIDDEN
        assert embeddings.usage.completion_tokens == 0
        assert embeddings.usage.prompt_tokens == 10
        assert embeddings.usage.total_tokens == 10


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_single_embedding_truncation_invalid(server, model_name: str):
    input_texts = ["Como o Brasil pode fomentar o desenvolvimento de modelos de IA?"]
    with pytest.raises(BadRequestError, match="truncate_prompt_tokens"):
        embeddings_create(
            server, model=model_name, input=input_texts, extra_body={"truncate_prompt_tokens": 8193}
        )


@pytest.mark.parametrize(
    "request_args",
    [
        {"model": MODEL_NAME, "input": ["The chef prepared a delicious meal."], "encoding_format": "float"},
        {"model": MODEL_NAME, "messages": MESSAGES, "encoding_format": "float"},
    ],
    ids=["test_invocations", "test_invocations_conversation"],
)
def test_invocations(server, request_args):
    completion_response = requests.post(server.url_for("v1/embeddings"), json=request_args)
    completion_response.raise_for_status()
    invocation_response = requests.post(server.url_for("invocations"), json=request_args)
    invocation_response.raise_for_status()

    completion_output = completion_response.json()
    invocation_output = invocation_response.json()
    assert completion_output.keys() == invocation_output.keys()
    for completion_data, invocation_data in zip(
        completion_output["data"], invocation_output["data"], strict=True
    ):
        assert completion_data.keys() == invocation_data.keys()
        check_embeddings_close(
            embeddings_0_lst=[completion_data["embedding"]],
            embeddings_1_lst=[invocation_data["embedding"]],
            name_0="completion",
            name_1="invocation",
        )


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_normalize(server, model_name: str):
    input_text = ["The chef prepared a delicious meal."]

    def get_outputs(normalize):
        response = requests.post(
            server.url_for("v1/embeddings"),
            json={
                "model": MODEL_NAME,
                "input": input_text,
                "encoding_format": "float",
                "normalize": normalize,
            },
        )
        return torch.tensor([x["embedding"] for x in response.json()["data"]])

    default = get_outputs(normalize=None)
    w_normal = get_outputs(normalize=True)
    wo_normal = get_outputs(normalize=False)

    assert torch.allclose(default, w_normal, atol=1e-2), "Default should use normal."
    assert not torch.allclose(w_normal, wo_normal, atol=1e-2), "wo_normal should not use normal."
    assert torch.allclose(w_normal, F.normalize(wo_normal, p=2, dim=-1), atol=1e-2), (
        "w_normal should be close to normal(wo_normal)."
    )


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_pooling_embed(server, model_name: str):
    response = requests.post(
        server.url_for("pooling"),
        json={
            "model": model_name,
            "input": ["The chef prepared a delicious meal."],
            "encoding_format": "float",
            "task": "embed",
        },
    )
    poolings = PoolingResponse.model_validate(response.json())
    assert len(poolings.data) == 1
    assert len(poolings.data[0].data) == HIDDEN


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_pooling_token_embed(server, model_name: str, tokenizer):
    input_text = ["The chef prepared a delicious meal."]
    response = requests.post(
        server.url_for("pooling"),
        json={"model": model_name, "input": input_text, "encoding_format": "float", "task": "token_embed"},
    )
    poolings = PoolingResponse.model_validate(response.json())
    assert len(poolings.data) == 1
    assert len(poolings.data[0].data) == n_tokens(tokenizer, input_text)  # 11
    assert len(poolings.data[0].data[0]) == HIDDEN


@pytest.mark.parametrize("model_name", [MODEL_NAME])
@pytest.mark.parametrize("task", ["classify", "token_classify", "plugin"])
def test_pooling_not_supported(server, model_name: str, task: str):
    response = requests.post(
        server.url_for("pooling"),
        json={"model": model_name, "input": "test", "encoding_format": "float", "task": task},
    )
    assert response.json()["error"]["type"] == "BadRequestError"
    message = response.json()["error"]["message"]
    if task == "plugin":
        assert message.startswith("No IOProcessor plugin installed.")
    else:
        assert (
            "not supported" in message and task in message
        )  # vLLM: startswith(f"Task {task} is not supported")


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_batched_conversations(server, model_name: str):
    # vLLM 0.33's EmbeddingBatchChatRequest / EmbeddingChatInputRequest (protocol.py; not in the stored test):
    # several conversations in `messages`, or one (or several) in `input`, each equal to its own request.
    other = [{"role": "user", "content": "Hello there."}]
    one = requests.post(
        server.url_for("v1/embeddings"), json={"model": model_name, "messages": MESSAGES}
    ).json()
    two = requests.post(server.url_for("v1/embeddings"), json={"model": model_name, "messages": other}).json()
    for body in ({"messages": [MESSAGES, other]}, {"input": [MESSAGES, other]}):
        both = requests.post(server.url_for("v1/embeddings"), json={"model": model_name, **body})
        both.raise_for_status()
        got = [d["embedding"] for d in both.json()["data"]]
        check_embeddings_close(
            embeddings_0_lst=[one["data"][0]["embedding"], two["data"][0]["embedding"]],
            embeddings_1_lst=got,
            name_0="single",
            name_1="batched",
        )
        assert (
            both.json()["usage"]["prompt_tokens"]
            == one["usage"]["prompt_tokens"] + two["usage"]["prompt_tokens"]
        )
    single_in_input = requests.post(
        server.url_for("v1/embeddings"), json={"model": model_name, "input": MESSAGES}
    )
    assert single_in_input.json()["data"][0]["embedding"] == one["data"][0]["embedding"]
    empty = requests.post(
        server.url_for("v1/embeddings"), json={"model": model_name, "messages": [MESSAGES, []]}
    )
    assert empty.status_code == 400 and "empty conversation" in empty.json()["error"]["message"]
