"""``POST /generative_scoring`` on a causal LM, against transformers' ``AutoModelForCausalLM``: the last
position's logits, softmax over the label ids (or the vocabulary), per item. Also the error shapes (4xx,
never 500), LoRA by ``model``, concurrent requests merged, the 404 on a model without an LM head, and the
workers' ``generative_score`` (colocated and remote agree).
"""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.support.server import InProcessServer

CAUSAL = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64}
QUERY = "Rubric: judge the answer. Question: what is 3 + 4? Answer: "
ITEMS = ["7", "It is seven.", "eight", "I am not sure"]
LABELS = [21, 33]
MAX_LEN = 48


@pytest.fixture(scope="module")
def judge(checkpoint_factory):
    return checkpoint_factory("Qwen3ForCausalLM", seed=9, **CAUSAL)


@pytest.fixture(scope="module")
def adapter(judge, tmp_path_factory):
    from tests.support.lora import build_adapter

    return build_adapter(
        judge, tmp_path_factory.mktemp("gs-lora") / "a", target_modules=["q_proj", "v_proj"], seed=4
    )


@pytest.fixture(scope="module")
def url(judge, adapter):
    with InProcessServer(
        judge,
        "--max-model-len",
        str(MAX_LEN),
        "--lora-modules",
        f"judge={adapter}",
        "--served-model-name",
        "tiny-judge",
    ) as server:
        yield server.url


@pytest.fixture(scope="module")
def reference(judge):
    model = AutoModelForCausalLM.from_pretrained(str(judge), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(judge))

    @torch.no_grad()
    def score(ids: list[int], labels: list[int], apply_softmax: bool) -> float:
        logits = model(torch.tensor([ids])).logits[0, -1].double()
        p = torch.softmax(logits[labels], -1) if apply_softmax else torch.softmax(logits, -1)[labels]
        return float(p[0])

    return tok, score


def post(url: str, body: dict) -> httpx.Response:
    return httpx.post(url + "/generative_scoring", json=body, timeout=60)


@pytest.mark.parametrize("apply_softmax", [True, False])
@pytest.mark.parametrize("item_first", [False, True])
def test_scores_match_transformers(url, reference, apply_softmax, item_first):
    tok, score = reference
    r = post(
        url,
        {
            "query": QUERY,
            "items": ITEMS,
            "label_token_ids": LABELS,
            "apply_softmax": apply_softmax,
            "item_first": item_first,
            "request_id": "r1",
        },
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (
        body["id"] == "generative-scoring-r1" and body["object"] == "list" and body["model"] == "tiny-judge"
    )
    q = tok.encode(QUERY)
    n_tokens = 0
    for i, (item, row) in enumerate(zip(ITEMS, body["data"], strict=True)):
        ids = tok.encode(item, add_special_tokens=False)
        ids = (ids + q if item_first else q + ids)[: MAX_LEN - 1]
        n_tokens += len(ids)
        assert row == {
            "index": i,
            "object": "score",
            "score": pytest.approx(score(ids, LABELS, apply_softmax), abs=1e-5),
        }
    assert body["usage"] == {
        "prompt_tokens": n_tokens,
        "completion_tokens": len(ITEMS),
        "total_tokens": n_tokens + len(ITEMS),
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }


def test_token_ids_and_truncation(url, reference):
    tok, score = reference
    q = tok.encode(QUERY * 3, add_special_tokens=False)
    items = [tok.encode(t, add_special_tokens=False) for t in ITEMS]
    r = post(url, {"query": q, "items": items, "label_token_ids": LABELS, "apply_softmax": False})
    assert r.status_code == 200, r.text
    for row, item in zip(r.json()["data"], items, strict=True):
        assert row["score"] == pytest.approx(score((q + item)[: MAX_LEN - 1], LABELS, False), abs=1e-6)


@pytest.mark.parametrize(
    "body, status, message",
    [
        ({"items": []}, 400, "items must contain at least one item."),
        ({"label_token_ids": []}, 400, "label_token_ids must contain at least one token ID."),
        (
            {"label_token_ids": [5, 10**6]},
            400,
            "label_token_id 1000000 is out of vocabulary range [0, 448). Please provide valid token IDs.",
        ),
        ({"items": ["a", [1]]}, 400, None),
        ({"query": 3}, 400, None),
        ({"query": [1, 100000]}, 400, None),
        ({"cache_salt": "a/b"}, 400, None),
        ({"model": "nope"}, 404, None),
    ],
)
def test_errors(url, body, status, message):
    r = post(url, {"query": QUERY, "items": ITEMS, "label_token_ids": LABELS, **body})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["code"] == status
    if message is not None:
        assert error["message"] == message and error["param"] is None


def test_lora_by_model_name(url, judge, adapter):
    from rlhf_rewards import LLM
    from rlhf_rewards.lora.request import LoRARequest

    llm = LLM(str(judge), device="cpu", enable_lora=True, max_model_len=MAX_LEN)
    expected = [
        o.score
        for o in llm.generative_score(
            QUERY, ITEMS, LABELS, lora_request=LoRARequest("judge", 1, str(adapter))
        )
    ]
    r = post(url, {"model": "judge", "query": QUERY, "items": ITEMS, "label_token_ids": LABELS})
    assert r.status_code == 200 and r.json()["model"] == "judge"
    assert [d["score"] for d in r.json()["data"]] == pytest.approx(expected, abs=1e-5)


def test_concurrent_requests_each_get_their_own(url, reference):
    tok, score = reference
    bodies = [
        {
            "query": QUERY + f" ({k})",
            "items": ITEMS[k % 3 :],
            "label_token_ids": LABELS[::-1] if k % 2 else LABELS,
            "apply_softmax": bool(k % 3),
        }
        for k in range(6)
    ]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda b: post(url, b), bodies))
    for b, r in zip(bodies, answers, strict=True):
        assert r.status_code == 200
        q = tok.encode(b["query"])
        for item, row in zip(b["items"], r.json()["data"], strict=True):
            ids = (q + tok.encode(item, add_special_tokens=False))[: MAX_LEN - 1]
            assert row["score"] == pytest.approx(
                score(ids, b["label_token_ids"], b["apply_softmax"]), abs=1e-5
            )


def test_not_found_without_lm_head(qwen3_rm):
    with InProcessServer(qwen3_rm) as server:
        r = post(server.url, {"query": "q", "items": ["a"], "label_token_ids": [1]})
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}


def test_remote_and_colocated_workers_agree(url, judge):
    from rlhf_rewards import LLM
    from rlhf_rewards.workers import ColocatedWorker, RemoteWorker

    colocated = ColocatedWorker(LLM(str(judge), device="cpu", max_model_len=MAX_LEN))
    with RemoteWorker(url) as remote:
        for soft in (True, False):
            a = colocated.generative_score(QUERY, ITEMS, [21, 33, 40], apply_softmax=soft, all_labels=True)
            b = remote.generative_score(QUERY, ITEMS, [21, 33, 40], apply_softmax=soft, all_labels=True)
            # The server serves an adapter (LoRA engines keep the modules' own linear kernels) and the colocated
            # engine packs its projections for the CPU GEMM: float32 rounding apart, the same numbers.
            assert [o.score for o in a] == pytest.approx([o.score for o in b], abs=1e-5)
            assert [o.label_probs for o in a] == [pytest.approx(o.label_probs, abs=1e-5) for o in b]
        with pytest.raises(ValueError, match="items must contain at least one item"):
            remote.generative_score(QUERY, [], [21])
