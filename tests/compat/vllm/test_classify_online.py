"""Port of vLLM's ``tests/entrypoints/pooling/classify/test_online.py`` (GitHub commit
030ea52effcb05071543c8c42b8f0145e94cee43), on a tiny 2-label ``Qwen3ForSequenceClassification`` (labels
``Default``/``Spoiled``, as the real model's) served as ``jason9693/Qwen2.5-1.5B-apeach`` by ``rlhf-rewards serve``.

Kept: ``--max-model-len 512 --dtype float32``, every request body and assertion. Changed (real-model numbers):
``input_tokens`` and the chat prompt token counts (51, 54, 49, 51) are computed with the tiny tokenizer and
plain ``transformers``' chat templating. Deliberate deviation: ``test_pooling_not_supported`` — ``embed``,
``token_embed`` and ``token_classify`` are served on a classifier here (this library's extension: the hidden
states and per-token scores of a reward model), so those cases assert the answer instead of vLLM's 400; ``plugin``
is still a ``BadRequestError`` starting with vLLM's message.
"""

from __future__ import annotations

import pytest
import requests
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from rlhf_rewards.server.classify.protocol import ClassificationResponse
from rlhf_rewards.server.pooling.protocol import PoolingResponse
from tests.compat.vllm.online import RemoteOpenAIServer

MODEL_NAME = "jason9693/Qwen2.5-1.5B-apeach"
DTYPE = "float32"  # Use float32 to avoid NaN issue
input_text = "This product was excellent and exceeded my expectations"
MESSAGES = [
    {"role": "user", "content": "The cat sat on the mat."},
    {"role": "assistant", "content": "A feline was resting on a rug."},
    {"role": "user", "content": "Stars twinkle brightly in the night sky."},
]


@pytest.fixture(scope="module")
def checkpoint(checkpoint_factory):
    return checkpoint_factory(
        "Qwen3ForSequenceClassification",
        num_labels=2,
        seed=151,
        id2label={0: "Default", 1: "Spoiled"},
        label2id={"Default": 0, "Spoiled": 1},
    )


@pytest.fixture(scope="module")
def server(checkpoint):
    args = ["--max-model-len", "512", "--dtype", DTYPE]
    with RemoteOpenAIServer(checkpoint, args, MODEL_NAME) as remote_server:
        yield remote_server


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    return AutoTokenizer.from_pretrained(str(checkpoint))


@pytest.fixture(scope="module")
def input_tokens(tokenizer):
    return tokenizer(input_text)["input_ids"]


def chat_len(tokenizer, add_special_tokens: bool = False, **kw) -> int:
    prompt = tokenizer.apply_chat_template(MESSAGES, tokenize=False, **kw)
    return len(tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"])


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_basic(server: RemoteOpenAIServer, model_name: str, input_tokens):
    # test /v1/models
    response = requests.get(server.url_for("/v1/models"))
    served_model = response.json()["data"][0]["id"]
    assert served_model == MODEL_NAME

    # test /tokenize
    response = requests.post(server.url_for("/tokenize"), json={"model": model_name, "prompt": input_text})
    assert response.json()["tokens"] == input_tokens


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_completion_request(server: RemoteOpenAIServer, model_name: str, input_tokens):
    for value in (input_text, input_tokens):  # input: str, then input: list[int]
        classification_response = requests.post(
            server.url_for("classify"), json={"model": model_name, "input": value}
        )
        classification_response.raise_for_status()
        output = ClassificationResponse.model_validate(classification_response.json())

        assert output.object == "list"
        assert output.model == MODEL_NAME
        assert len(output.data) == 1
        assert hasattr(output.data[0], "label")
        assert hasattr(output.data[0], "probs")


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_completion_request_batched(server: RemoteOpenAIServer, model_name: str, input_tokens):
    N = 10
    for value in ([input_text] * N, [input_tokens] * N):  # list[str], then list[list[int]]
        classification_response = requests.post(
            server.url_for("classify"), json={"model": model_name, "input": value}
        )
        output = ClassificationResponse.model_validate(classification_response.json())

        assert len(output.data) == N
        for i, item in enumerate(output.data):
            assert item.index == i
            assert hasattr(item, "label")
            assert hasattr(item, "probs")
            assert len(item.probs) == item.num_classes
            assert item.label in ["Default", "Spoiled"]


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_empty_input_error(server: RemoteOpenAIServer, model_name: str):
    for value in ("", []):
        classification_response = requests.post(
            server.url_for("classify"), json={"model": model_name, "input": value}
        )
        error = classification_response.json()
        assert classification_response.status_code == 400
        assert "error" in error


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_truncate_prompt_tokens(server: RemoteOpenAIServer, model_name: str):
    long_text = "hello " * 600

    classification_response = requests.post(
        server.url_for("classify"),
        json={"model": model_name, "input": long_text, "truncate_prompt_tokens": 5},
    )
    classification_response.raise_for_status()
    output = ClassificationResponse.model_validate(classification_response.json())

    assert len(output.data) == 1
    assert output.data[0].index == 0
    assert hasattr(output.data[0], "probs")
    assert output.usage.prompt_tokens == 5
    assert output.usage.total_tokens == 5

    # invalid_truncate_prompt_tokens
    classification_response = requests.post(
        server.url_for("classify"), json={"model": model_name, "input": "test", "truncate_prompt_tokens": 513}
    )
    error = classification_response.json()
    assert classification_response.status_code == 400
    assert "truncate_prompt_tokens" in error["error"]["message"]


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_add_special_tokens(server: RemoteOpenAIServer, model_name: str):
    for add_special_tokens in (False, True):
        response = requests.post(
            server.url_for("classify"),
            json={"model": model_name, "input": input_text, "add_special_tokens": add_special_tokens},
        )
        response.raise_for_status()
        ClassificationResponse.model_validate(response.json())


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_chat_request(server: RemoteOpenAIServer, model_name: str, tokenizer):
    messages = MESSAGES
    for extra, want in (
        ({}, chat_len(tokenizer)),  # 51 for the real model
        ({"add_generation_prompt": True}, chat_len(tokenizer, add_generation_prompt=True)),  # 54
        ({"continue_final_message": True}, chat_len(tokenizer, continue_final_message=True)),  # 49
        ({"add_special_tokens": True}, chat_len(tokenizer, add_special_tokens=True)),
    ):  # 51
        response = requests.post(
            server.url_for("classify"), json={"model": model_name, "messages": messages, **extra}
        )
        response.raise_for_status()
        output = ClassificationResponse.model_validate(response.json())

        assert output.object == "list"
        assert output.model == MODEL_NAME
        assert len(output.data) == 1
        assert hasattr(output.data[0], "label")
        assert hasattr(output.data[0], "probs")
        assert output.usage.prompt_tokens == want, extra

    # test continue_final_message with add_generation_prompt
    response = requests.post(
        server.url_for("classify"),
        json={
            "model": model_name,
            "messages": messages,
            "continue_final_message": True,
            "add_generation_prompt": True,
        },
    )
    assert (
        "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
        in response.json()["error"]["message"]
    )


@pytest.mark.parametrize(
    "request_args",
    [
        {"model": MODEL_NAME, "input": input_text},
        {"model": MODEL_NAME, "messages": MESSAGES},
    ],
    ids=["test_invocations_completion_request", "test_invocations_chat_request"],
)
def test_invocations(server: RemoteOpenAIServer, request_args):
    classification_response = requests.post(server.url_for("classify"), json=request_args)
    classification_response.raise_for_status()
    invocation_response = requests.post(server.url_for("invocations"), json=request_args)
    invocation_response.raise_for_status()

    classification_output = classification_response.json()
    invocation_output = invocation_response.json()
    assert classification_output.keys() == invocation_output.keys()
    for classification_data, invocation_data in zip(
        classification_output["data"], invocation_output["data"], strict=True
    ):
        assert classification_data.keys() == invocation_data.keys()
        assert classification_data["probs"] == pytest.approx(invocation_data["probs"], rel=0.01)


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_use_activation(server: RemoteOpenAIServer, model_name: str):
    def get_outputs(use_activation):
        response = requests.post(
            server.url_for("classify"),
            json={"model": model_name, "input": input_text, "use_activation": use_activation},
        )
        outputs = response.json()
        return torch.tensor([x["probs"] for x in outputs["data"]])

    default = get_outputs(use_activation=None)
    w_activation = get_outputs(use_activation=True)
    wo_activation = get_outputs(use_activation=False)

    assert torch.allclose(default, w_activation, atol=1e-2), "Default should use activation."
    assert not torch.allclose(w_activation, wo_activation, atol=1e-2), (
        "wo_activation should not use activation."
    )
    assert torch.allclose(F.softmax(wo_activation, dim=-1), w_activation, atol=1e-2), (
        "w_activation should be close to activation(wo_activation)."
    )


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_score(server: RemoteOpenAIServer, model_name: str):
    # Scoring API is only enabled for num_labels == 1.
    response = requests.post(
        server.url_for("score"), json={"model": model_name, "queries": "ping", "documents": "pong"}
    )
    assert response.json()["detail"] == "Not Found"


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_rerank(server: RemoteOpenAIServer, model_name: str):
    # Scoring API is only enabled for num_labels == 1.
    response = requests.post(
        server.url_for("rerank"), json={"model": model_name, "query": "ping", "documents": ["pong"]}
    )
    assert response.json()["detail"] == "Not Found"


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_pooling_classify(server: RemoteOpenAIServer, model_name: str):
    response = requests.post(
        server.url_for("pooling"),
        json={"model": model_name, "input": input_text, "encoding_format": "float", "task": "classify"},
    )
    poolings = PoolingResponse.model_validate(response.json())
    assert len(poolings.data) == 1
    assert len(poolings.data[0].data) == 2


@pytest.mark.parametrize("model_name", [MODEL_NAME])
@pytest.mark.parametrize("task", ["embed", "token_embed", "token_classify", "plugin"])
def test_pooling_not_supported(server: RemoteOpenAIServer, model_name: str, task: str, input_tokens):
    response = requests.post(
        server.url_for("pooling"),
        json={"model": model_name, "input": input_text, "encoding_format": "float", "task": task},
    )
    if task != "plugin":
        # Extension here (vLLM: 400 "Unsupported task" / "Try switching the model's pooling_task"): served.
        data = PoolingResponse.model_validate(response.json()).data[0].data
        shape = torch.tensor(data).shape
        assert shape[0] == {"embed": 64}.get(task, len(input_tokens)), (task, shape)
        assert task == "embed" or shape[1] == {"token_embed": 64, "token_classify": 2}[task]
        return
    assert response.json()["error"]["type"] == "BadRequestError"
    err_msg = "No IOProcessor plugin installed."
    assert response.json()["error"]["message"].startswith(err_msg)
