"""LoRA modules on the server: served by name from ``--lora-modules``, never by a path sent in a request."""

from __future__ import annotations

import pytest
import requests
import torch

from rlhf_rewards import LLM, LoRARequest
from rlhf_rewards.workers import RemoteWorker
from tests.conftest import MIXED_TEXTS
from tests.support.server import InProcessServer


@pytest.fixture(scope="module")
def adapter(qwen3_rm, tmp_path_factory):
    from tests.support.lora import build_adapter

    return build_adapter(
        qwen3_rm,
        tmp_path_factory.mktemp("adapter") / "my-lora",
        seed=7,
        target_modules=["q_proj", "v_proj"],
        modules_to_save=["score"],
    )


@pytest.fixture(scope="module")
def lora_server(qwen3_rm, adapter):
    with InProcessServer(
        qwen3_rm, "--served-model-name", "base", "--lora-modules", f"my-lora={adapter}"
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def lora_llm(qwen3_rm, adapter):
    llm = LLM(str(qwen3_rm), device="cpu", enable_lora=True)
    llm.add_lora(LoRARequest("my-lora", 1, str(adapter)))
    return llm


def test_lora_module_is_listed_and_scores_like_the_engine(lora_server, lora_llm, adapter):
    models = requests.get(lora_server.url + "/v1/models", timeout=10).json()["data"]
    assert [(m["id"], m["parent"]) for m in models] == [("base", None), ("my-lora", "base")]
    assert str(adapter) not in str(models)  # no filesystem paths handed out
    lora = lora_llm.get_lora("my-lora")
    want_lora = lora_llm.encode(MIXED_TEXTS, pooling_task="classify", lora_request=lora, use_tqdm=False)
    want_base = lora_llm.encode(MIXED_TEXTS, pooling_task="classify", use_tqdm=False)
    got_lora = requests.post(
        lora_server.url + "/pooling", json={"model": "my-lora", "input": MIXED_TEXTS}, timeout=60
    ).json()
    got_base = requests.post(
        lora_server.url + "/pooling", json={"model": "base", "input": MIXED_TEXTS}, timeout=60
    ).json()
    assert got_lora["model"] == "my-lora"
    for g, w in ((got_lora, want_lora), (got_base, want_base)):
        torch.testing.assert_close(
            torch.tensor([d["data"] for d in g["data"]]),
            torch.stack([o.outputs.data for o in w]),
            atol=1e-5,
            rtol=0,
        )
    assert not torch.allclose(
        torch.stack([o.outputs.data for o in want_lora]), torch.stack([o.outputs.data for o in want_base])
    )


def test_remote_worker_mixes_adapters_per_prompt(lora_server, lora_llm):
    lora = lora_llm.get_lora("my-lora")
    per_prompt = [lora if i % 2 else None for i in range(len(MIXED_TEXTS))]
    want = lora_llm.encode(MIXED_TEXTS, pooling_task="classify", lora_request=per_prompt, use_tqdm=False)
    with RemoteWorker(lora_server.url) as worker:
        assert worker.model_info().lora_modules == ["my-lora"]
        # The client sends the adapter's NAME; its id and path stay on the client.
        remote_lora = LoRARequest("my-lora", 99, "/not/a/path/on/the/server")
        got = worker.encode(
            MIXED_TEXTS,
            pooling_task="classify",
            lora_request=[remote_lora if i % 2 else None for i in range(len(MIXED_TEXTS))],
        )
        torch.testing.assert_close(
            torch.stack([o.outputs.data for o in got]),
            torch.stack([o.outputs.data for o in want]),
            atol=1e-5,
            rtol=0,
        )
        with pytest.raises(ValueError, match="other-lora"):
            worker.encode("hi", pooling_task="classify", lora_request=LoRARequest("other-lora", 2, "/x"))


def test_a_request_cannot_load_an_adapter_by_path(lora_server, lora_llm, adapter):
    r = requests.post(lora_server.url + "/pooling", json={"model": str(adapter), "input": "hi"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFoundError"  # vLLM's (param: none)
    # An unknown field is ignored (vLLM's rule, logged by the server): a path in it loads nothing.
    r = requests.post(
        lora_server.url + "/pooling", json={"input": "hi", "lora_path": str(adapter)}, timeout=30
    )
    (base,) = lora_llm.encode("hi", pooling_task="classify", use_tqdm=False)
    assert r.status_code == 200 and abs(r.json()["data"][0]["data"][0] - float(base.outputs.data[0])) < 1e-5
