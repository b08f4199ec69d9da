"""Port of vLLM's ``tests/entrypoints/pooling/token_classify/test_online.py`` (GitHub commit
081d0a9f41589dffd80cf841d9262d10f0eb7afb), on a tiny 2-label classifier served as
``jason9693/Qwen2.5-1.5B-apeach`` with ``--pooler-config '{"pooling_task": "token_classify"}'``.

Kept: the flags (``--max-model-len 512 --dtype float32 --pooler-config``), request bodies and assertions.
Changed (real-model numbers): the 8 tokens of ``input_text`` are the tiny tokenizer's count. Deliberate
deviation: ``test_pooling_not_supported`` — ``classify``, ``embed`` and ``token_embed`` are served here (this
library's extension), so those cases assert the answer's shape instead of vLLM's 400; ``plugin`` stays a
``BadRequestError`` (this server's message starts "No IOProcessor plugin installed.", vLLM's older test wording
"Unsupported task: 'plugin'" is not copied).
"""

from __future__ import annotations

import pytest
import requests
import torch
from transformers import AutoTokenizer

from rlhf_rewards.server.pooling.protocol import PoolingResponse
from tests.compat.vllm.online import RemoteOpenAIServer

MODEL_NAME = "jason9693/Qwen2.5-1.5B-apeach"
DTYPE = "float32"  # Use float32 to avoid NaN issue
input_text = "This product was excellent and exceeded my expectations"


@pytest.fixture(scope="module")
def server(apeach_like):
    args = [
        "--max-model-len",
        "512",
        "--dtype",
        DTYPE,
        "--pooler-config",
        '{"pooling_task": "token_classify"}',
    ]
    with RemoteOpenAIServer(apeach_like, args, MODEL_NAME) as remote_server:
        yield remote_server


@pytest.fixture(scope="module")
def n_tokens(apeach_like):
    return len(
        AutoTokenizer.from_pretrained(str(apeach_like))(input_text)["input_ids"]
    )  # 8 for the real model


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_pooling_token_classify(server: RemoteOpenAIServer, model_name: str, n_tokens):
    task = "token_classify"
    response = requests.post(
        server.url_for("pooling"),
        json={"model": model_name, "input": input_text, "encoding_format": "float", "task": task},
    )
    poolings = PoolingResponse.model_validate(response.json())
    assert len(poolings.data) == 1
    assert len(poolings.data[0].data) == n_tokens
    assert len(poolings.data[0].data[0]) == 2


@pytest.mark.parametrize("model_name", [MODEL_NAME])
def test_default_task_is_the_pooler_configs(server: RemoteOpenAIServer, model_name: str, n_tokens):
    # Not in vLLM's file: the flag's task is the default (what vLLM's "Try switching" message relies on).
    response = requests.post(server.url_for("pooling"), json={"model": model_name, "input": input_text})
    assert torch.tensor(response.json()["data"][0]["data"]).shape == (n_tokens, 2)


@pytest.mark.parametrize("model_name", [MODEL_NAME])
@pytest.mark.parametrize("task", ["classify", "embed", "token_embed", "plugin"])
def test_pooling_not_supported(server: RemoteOpenAIServer, model_name: str, task: str, n_tokens):
    response = requests.post(
        server.url_for("pooling"),
        json={"model": model_name, "input": input_text, "encoding_format": "float", "task": task},
    )
    if task != "plugin":  # served here (extension)
        shape = torch.tensor(PoolingResponse.model_validate(response.json()).data[0].data).shape
        assert shape == {"classify": (2,), "embed": (64,), "token_embed": (n_tokens, 64)}[task]
        return
    assert response.json()["error"]["type"] == "BadRequestError"
    assert response.json()["error"]["message"].startswith("No IOProcessor plugin installed.")
