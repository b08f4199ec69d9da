"""NaN/inf model output is an error for that item on every route and in ``RemoteWorker``, never a number."""

from __future__ import annotations

import concurrent.futures
import math

import pytest
import requests
import torch

from rlhf_rewards.workers import RemoteWorker
from tests.support.checkpoints import with_nan_embedding
from tests.support.server import InProcessServer

POISON = 300  # a token id whose embedding is NaN: any prompt containing it scores NaN


@pytest.fixture(scope="module")
def nan_server(qwen3_rm, tmp_path_factory):
    path = with_nan_embedding(qwen3_rm, tmp_path_factory.mktemp("nan-rm"), POISON)
    with InProcessServer(path) as proc:
        yield proc


def test_nan_item_is_an_error_never_a_number(nan_server):
    good, bad = [5, 6, 7], [5, POISON, 7]
    body = requests.post(nan_server.url + "/pooling", json={"input": [bad]}, timeout=30).json()
    (item,) = body["data"]
    assert item["data"] is None and "non-finite" in item["error"]
    body = requests.post(nan_server.url + "/pooling", json={"input": [good, good]}, timeout=30).json()
    assert all(math.isfinite(d["data"][0]) and "error" not in d for d in body["data"])

    body = requests.post(nan_server.url + "/classify", json={"input": [bad]}, timeout=30).json()
    (item,) = body["data"]
    assert item["probs"] is None and item["label"] is None and "non-finite" in item["error"]

    assert (
        POISON
        in requests.post(nan_server.url + "/tokenize", json={"prompt": "Hello 3"}, timeout=30).json()[
            "tokens"
        ]
    )
    body = requests.post(nan_server.url + "/get_reward", json={"query": ["Hello 3"]}, timeout=30).json()
    assert body["rewards"] == [None] and body["scores"] == [None] and "non-finite" in body["errors"]["0"]
    body = requests.post(nan_server.url + "/get_reward", json={"query": ["Hello"]}, timeout=30).json()
    assert math.isfinite(body["rewards"][0]) and "errors" not in body

    with RemoteWorker(nan_server.url) as worker:
        (clean,) = worker.encode([{"prompt_token_ids": good}], pooling_task="classify")
        (poisoned,) = worker.encode([{"prompt_token_ids": bad}], pooling_task="classify")
    assert clean.error is None and torch.isfinite(clean.outputs.data).all()
    assert "non-finite" in poisoned.error and torch.isnan(poisoned.outputs.data).all()
    assert poisoned.outputs.data.shape == clean.outputs.data.shape


def test_a_nan_request_never_spoils_concurrent_requests(nan_server):
    # Concurrent requests share engine calls; a NaN in one must not reach the others.
    bodies = [{"input": [[5, POISON, 7]]}] + [{"input": [[5, 6, 7 + i], [8, 9]]} for i in range(11)]
    for _ in range(3):
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(
                pool.map(
                    lambda b: requests.post(nan_server.url + "/pooling", json=b, timeout=60).json(), bodies
                )
            )
        assert answers[0]["data"][0]["data"] is None
        for answer in answers[1:]:
            assert all(d["data"] is not None and math.isfinite(d["data"][0]) for d in answer["data"]), answer
