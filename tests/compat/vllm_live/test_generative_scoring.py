"""``POST /generative_scoring`` against vLLM 0.32's own server, request for request.

The same causal LM (fp32, ``--max-model-len 64`` so truncation is exercised, one LoRA adapter served as
``judge``) behind vLLM's server (generate runner, the default for ``*ForCausalLM``, with ``--enable-lora``)
and ``rlhf-rewards serve``. Every request goes to both; status codes must be equal, bodies equal in structure
and scores within 1e-5. Errors: the three vLLM messages (empty ``items``, empty / out-of-vocabulary
``label_token_ids``) are compared whole; schema errors (mixed items, a missing field, a bad ``cache_salt``)
and an unknown model by status and error type (the wording of validation messages is each server's own).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.compat.vllm_live.oracle import VllmServer
from tests.support.checkpoints import build_checkpoint
from tests.support.lora import build_adapter
from tests.support.server import serve

pytestmark = pytest.mark.slow

MAX_LEN = 64
CAUSAL = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64}
QUERY = "Rubric: the answer is right when it is the sum. Question: 2 + 2? "
ITEMS = ["The answer is 4.", "five", "4", "I do not know, sorry about that"]
LABELS = [17, 42, 99]
TIMEOUT = 180.0


@pytest.fixture(scope="module")
def judge(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("generative-scoring")
    model = build_checkpoint("LlamaForCausalLM", root / "llama-judge", seed=11, **CAUSAL)
    adapter = build_adapter(model, root / "judge-lora", target_modules=["q_proj", "v_proj"], seed=2)
    return model, adapter


@pytest.fixture(scope="module")
def servers(judge) -> Iterator[tuple[str, str, str]]:
    model, adapter = judge
    lora = f"judge={adapter}"
    vllm = VllmServer(
        model,
        "--max-model-len",
        str(MAX_LEN),
        "--enable-lora",
        "--max-lora-rank",
        "8",
        "--lora-modules",
        lora,
        "--enforce-eager",
        startup_timeout=300,
    )
    try:
        with serve(
            model, "--dtype", "float32", "--max-model-len", str(MAX_LEN), "--lora-modules", lora
        ) as ours:
            yield ours, vllm.url, str(model)
    finally:
        vllm.close()


def _post(url: str, body: dict[str, Any]) -> tuple[int, Any]:
    r = httpx.post(url + "/generative_scoring", json=body, timeout=TIMEOUT)
    return r.status_code, r.json()


@pytest.fixture(scope="module")
def tok(judge):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(judge[0]))


def _ids(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


SCORED = {
    "text, defaults": {},
    "text, apply_softmax=false": {"apply_softmax": False},
    "text, item_first": {"item_first": True},
    "text, item_first, apply_softmax=false": {"item_first": True, "apply_softmax": False},
    "text, add_special_tokens=false": {"add_special_tokens": False},
    "one label": {"label_token_ids": [7]},
    "one label, apply_softmax=false": {"label_token_ids": [7], "apply_softmax": False},
    "repeated label": {"label_token_ids": [17, 42, 17]},
    "truncation (query over max_model_len)": {"query": QUERY * 4},
    "truncation, item_first, apply_softmax=false": {
        "query": QUERY * 4,
        "item_first": True,
        "apply_softmax": False,
    },
    "LoRA": {"model": "judge"},
    "LoRA, apply_softmax=false, item_first": {"model": "judge", "apply_softmax": False, "item_first": True},
    "priority and cache_salt accepted": {"priority": 3, "cache_salt": "salt-123"},
    "request_id": {"request_id": "abc-123"},
    "one item": {"items": ["yes"]},
}


@pytest.mark.parametrize("case", list(SCORED))
def test_scored_requests(servers, compat, case):
    ours, theirs, model = servers
    body = {"query": QUERY, "items": ITEMS, "label_token_ids": LABELS, **SCORED[case]}
    a, b = _post(ours, body), _post(theirs, body)
    compat.check(
        "online",
        f"/generative_scoring {case}",
        "LlamaForCausalLM",
        {"status": a[0], "body": a[1]},
        {"status": b[0], "body": b[1]},
    )
    assert a[0] == 200
    if "request_id" in body:
        assert a[1]["id"] == b[1]["id"] == "generative-scoring-abc-123"


@pytest.mark.parametrize("item_first", [False, True])
@pytest.mark.parametrize("apply_softmax", [True, False])
def test_token_ids(servers, compat, tok, item_first, apply_softmax):
    ours, theirs, _ = servers
    body = {
        "query": _ids(tok, QUERY),
        "items": [_ids(tok, t) for t in ITEMS],
        "label_token_ids": LABELS,
        "item_first": item_first,
        "apply_softmax": apply_softmax,
    }
    a, b = _post(ours, body), _post(theirs, body)
    compat.check(
        "online",
        f"/generative_scoring token ids item_first={item_first} apply_softmax={apply_softmax}",
        "LlamaForCausalLM",
        {"status": a[0], "body": a[1]},
        {"status": b[0], "body": b[1]},
    )
    assert a[0] == 200


def test_token_ids_truncated(servers, compat, tok):
    ours, theirs, _ = servers
    body = {"query": _ids(tok, QUERY * 4), "items": [_ids(tok, t) for t in ITEMS], "label_token_ids": LABELS}
    a, b = _post(ours, body), _post(theirs, body)
    compat.check(
        "online",
        "/generative_scoring token ids truncated",
        "LlamaForCausalLM",
        {"status": a[0], "body": a[1]},
        {"status": b[0], "body": b[1]},
    )
    assert a[1]["usage"]["prompt_tokens"] == len(ITEMS) * (MAX_LEN - 1)


#: vLLM's own messages: compared whole.
VLLM_ERRORS = {
    "empty items": {"items": []},
    "empty label_token_ids": {"label_token_ids": []},
    "label id = vocab size": {"label_token_ids": [1, 448]},
    "negative label id": {"label_token_ids": [-1]},
    "empty items and bad label (label first)": {"items": [], "label_token_ids": [100000]},
}
#: Schema errors and an unknown model: status and error type.
OTHER_ERRORS = {
    "mixed items": {"items": ["text", [1, 2, 3]]},
    "missing query": {"query": None},
    "empty cache_salt": {"cache_salt": ""},
    "cache_salt with a slash": {"cache_salt": "a/b"},
    "unknown model": {"model": "no-such-model"},
}


@pytest.mark.parametrize("case", list(VLLM_ERRORS))
def test_vllm_errors(servers, compat, case):
    ours, theirs, _ = servers
    body = {"query": QUERY, "items": ITEMS, "label_token_ids": LABELS, **VLLM_ERRORS[case]}
    a, b = _post(ours, body), _post(theirs, body)
    compat.check(
        "online",
        f"/generative_scoring error: {case}",
        "LlamaForCausalLM",
        {"status": a[0], "body": a[1]},
        {"status": b[0], "body": b[1]},
    )
    assert a[0] == 400


@pytest.mark.parametrize("case", list(OTHER_ERRORS))
def test_other_errors(servers, compat, case):
    ours, theirs, _ = servers
    body = {"query": QUERY, "items": ITEMS, "label_token_ids": LABELS, **OTHER_ERRORS[case]}
    body = {k: v for k, v in body.items() if v is not None}
    a, b = _post(ours, body), _post(theirs, body)

    def shape(answer: tuple[int, Any]) -> dict[str, Any]:
        error = answer[1].get("error", {}) if isinstance(answer[1], dict) else {}
        return {"status": answer[0], "type": error.get("type"), "code": error.get("code")}

    compat.check("online", f"/generative_scoring error: {case}", "LlamaForCausalLM", shape(a), shape(b))
    assert 400 <= a[0] < 500
