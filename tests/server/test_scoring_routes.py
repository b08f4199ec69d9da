"""``/score`` and ``/rerank`` on embedding models (bi-encoder cosine) and token-embedding models (ColBERT MaxSim),
as vLLM 0.33 serves them, against the engine's own embeddings."""

from __future__ import annotations

import pytest
import requests
import torch
import torch.nn.functional as F

from rlhf_rewards import LLM
from tests.support.server import InProcessServer

QUERIES = ["What is the capital of France?", "What is 2 + 2?"]
DOCS = ["The capital of France is Paris.", "Four."]


@pytest.mark.parametrize("task", ["embed", "token_embed"])
def test_bi_encoder_and_late_interaction_scores(checkpoint_factory, task):
    path = checkpoint_factory("Qwen3Model", seed=155)
    llm = LLM(str(path), device="cpu")
    args = () if task == "embed" else ("--pooler-config", '{"task": "token_embed"}')
    with InProcessServer(path, *args) as proc:
        got = requests.post(
            proc.url + "/score", json={"queries": QUERIES, "documents": DOCS}, timeout=30
        ).json()
        ranked = requests.post(
            proc.url + "/rerank", json={"query": QUERIES[0], "documents": DOCS}, timeout=30
        ).json()
    if task == "embed":
        outs = llm.encode(QUERIES + DOCS, pooling_task="embed", use_tqdm=False)
        want = [
            float(F.cosine_similarity(outs[i].outputs.data, outs[2 + i].outputs.data, dim=0))
            for i in range(2)
        ]
        first = [
            float(F.cosine_similarity(outs[0].outputs.data, outs[2 + j].outputs.data, dim=0))
            for j in range(2)
        ]
    else:
        outs = [
            F.normalize(o.outputs.data.float(), dim=-1)
            for o in llm.encode(QUERIES + DOCS, pooling_task="token_embed", use_tqdm=False)
        ]

        def maxsim(q: torch.Tensor, d: torch.Tensor) -> float:
            return float((q @ d.T).amax(dim=-1).sum())

        want = [maxsim(outs[i], outs[2 + i]) for i in range(2)]
        first = [maxsim(outs[0], outs[2 + j]) for j in range(2)]
    assert [d["score"] for d in got["data"]] == pytest.approx(want, rel=1e-4)
    assert [r["index"] for r in ranked["results"]] == sorted(range(2), key=lambda j: -first[j])
    assert [r["relevance_score"] for r in ranked["results"]] == pytest.approx(
        sorted(first, reverse=True), rel=1e-4
    )


def test_embeddings_of_a_token_embedding_model_are_per_token(checkpoint_factory):
    # vLLM serves /v1/embeddings of a token_embed model with TokenEmbeddingResponse: one vector per token.
    path = checkpoint_factory("Qwen3Model", seed=155)
    llm = LLM(str(path), device="cpu")
    with InProcessServer(path, "--pooler-config", '{"task": "token_embed"}') as proc:
        got = requests.post(proc.url + "/v1/embeddings", json={"input": QUERIES}, timeout=30).json()
    want = llm.encode(QUERIES, pooling_task="token_embed", use_tqdm=False)
    for item, out in zip(got["data"], want, strict=True):
        torch.testing.assert_close(
            torch.tensor(item["embedding"]), out.outputs.data.float(), atol=1e-5, rtol=0
        )
