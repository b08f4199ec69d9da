"""Port of vLLM's ``tests/entrypoints/pooling/scoring/test_cross_encoder_online.py`` (GitHub commit
29fda7946ff08249b20fe0fb95e077a512df5d02): ``/score``, ``/rerank`` and ``/invocations`` on a one-label classifier,
here a tiny ``Qwen3ForSequenceClassification`` served as ``BAAI/bge-reranker-base`` (an encoder this engine does
not serve) with ``--max-model-len 100``.

Kept: request bodies and assertions. Changed (real-model numbers): ``input_tokens`` (the tiny tokenizer's);
``hf_model.predict`` (sentence-transformers' ``CrossEncoder``) is plain ``transformers``: the sigmoid of the
classifier's logit on ``tokenizer(query, document)``; the rerank thresholds (``>= 0.9`` / ``<= 0.01`` for the
real model) become "the reference's order and values". Deliberate deviations: the over-length messages are this
server's ("... over max_model_len=100 ...", vLLM: "Please reduce the length of the input prompt" / "Please request
a smaller truncation size."); ``max_tokens_per_doc: 0`` means "no cut" as in vLLM 0.33's source (the stored test
predates it and expects 400), a negative one is a 400 naming the field; ``embed`` and ``token_embed`` on
``/pooling`` are served here (extension).
"""

from __future__ import annotations

import pytest
import requests
import torch
import torch.nn.functional as F
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf_rewards.server.pooling.protocol import PoolingResponse
from rlhf_rewards.server.score.protocol import RerankResponse, ScoreResponse
from tests.compat.vllm.online import RemoteOpenAIServer

MODEL_NAME = "BAAI/bge-reranker-base"
input_text = "This product was excellent and exceeded my expectations"

TEXTS_1 = ["What is the capital of France?", "What is the capital of Germany?"]
TEXTS_2 = ["The capital of France is Paris.", "The capital of Germany is Berlin."]


@pytest.fixture(scope="module")
def server(reranker_like):
    with RemoteOpenAIServer(reranker_like, ["--max-model-len", "100"], MODEL_NAME) as remote_server:
        yield remote_server


class _HFCrossEncoder:
    """``CrossEncoder.predict`` of sentence-transformers, in plain transformers: sigmoid(logit(query, doc))."""

    def __init__(self, path) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = AutoModelForSequenceClassification.from_pretrained(
            str(path), torch_dtype=torch.float32
        ).eval()

    @torch.no_grad()
    def predict(self, pairs: list[list[str]]) -> torch.Tensor:
        scores = []
        for query, doc in pairs:
            ids = self.tokenizer(text=query, text_pair=doc, return_tensors="pt")
            scores.append(torch.sigmoid(self.model(**ids).logits[0, 0]))
        return torch.stack(scores)


@pytest.fixture(scope="module")
def hf_model(reranker_like):
    return _HFCrossEncoder(reranker_like)


def test_basic(server: RemoteOpenAIServer, hf_model):
    response = requests.get(server.url_for("/v1/models"))
    served_model = response.json()["data"][0]["id"]
    assert served_model == MODEL_NAME

    response = requests.post(server.url_for("/tokenize"), json={"model": MODEL_NAME, "prompt": input_text})
    assert response.json()["tokens"] == hf_model.tokenizer(input_text)["input_ids"]


@pytest.mark.parametrize(
    "fields,text_pairs",
    [
        ({"queries": TEXTS_1[0], "documents": TEXTS_2[0]}, [[TEXTS_1[0], TEXTS_2[0]]]),
        ({"queries": TEXTS_1[0], "documents": TEXTS_2}, [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[0], TEXTS_2[1]]]),
        ({"queries": TEXTS_1, "documents": TEXTS_2}, [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[1], TEXTS_2[1]]]),
        ({"queries": TEXTS_1, "items": TEXTS_2}, [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[1], TEXTS_2[1]]]),
        ({"text_1": TEXTS_1, "text_2": TEXTS_2}, [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[1], TEXTS_2[1]]]),
        ({"data_1": TEXTS_1, "data_2": TEXTS_2}, [[TEXTS_1[0], TEXTS_2[0]], [TEXTS_1[1], TEXTS_2[1]]]),
    ],
    ids=[
        "test_score_api_queries_str_1_documents_str_1",
        "test_score_api_queries_str_1_documents_str_n",
        "test_score_api_queries_str_n_documents_str_n",
        "test_score_api_queries_vs_items",
        "test_score_api_text_1_vs_text_2",
        "test_score_api_data_1_vs_data_2",
    ],
)
def test_score_api(hf_model, server: RemoteOpenAIServer, fields, text_pairs):
    """vLLM's six ``test_score_api_*`` tests (its ``queries_vs_documents`` is ``str_n_documents_str_n`` again)."""
    score_response = requests.post(server.url_for("score"), json={"model": MODEL_NAME, **fields})
    score_response.raise_for_status()
    score = ScoreResponse.model_validate(score_response.json())

    assert score.id is not None
    assert score.data is not None
    assert len(score.data) == len(text_pairs)

    vllm_outputs = [d.score for d in score.data]
    hf_outputs = hf_model.predict(text_pairs).tolist()
    for i in range(len(vllm_outputs)):
        assert hf_outputs[i] == pytest.approx(vllm_outputs[i], rel=0.01)


@pytest.mark.parametrize("top_n", [None, 2], ids=["test_rerank_api_texts", "test_rerank_api_top_n"])
def test_rerank_api(server: RemoteOpenAIServer, hf_model, top_n):
    query = "What is the capital of France?"
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    if top_n:
        documents.append("Cross-encoder models are neat")
    body = {
        "model": MODEL_NAME,
        "query": query,
        "documents": documents,
        **({"top_n": top_n} if top_n else {}),
    }
    rerank_response = requests.post(server.url_for("rerank"), json=body)
    rerank_response.raise_for_status()
    rerank = RerankResponse.model_validate(rerank_response.json())

    assert rerank.id is not None
    assert rerank.results is not None
    assert len(rerank.results) == 2
    # The real model: results[0] >= 0.9, results[1] <= 0.01; here: the reference's best two, best first.
    want = hf_model.predict([[query, d] for d in documents])
    order = torch.argsort(want, descending=True)[:2].tolist()
    assert [r.index for r in rerank.results] == order
    for r in rerank.results:
        assert r.relevance_score == pytest.approx(float(want[r.index]), rel=0.01)
        assert r.document.text == documents[r.index]


def test_rerank_api_max_model_len(server: RemoteOpenAIServer):
    query = "What is the capital of France?" * 100
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    rerank_response = requests.post(
        server.url_for("rerank"), json={"model": MODEL_NAME, "query": query, "documents": documents}
    )
    assert rerank_response.status_code == 400
    assert "max_model_len=100" in rerank_response.text  # vLLM: "Please reduce the length of the input prompt"


def test_score_api_max_model_len(server: RemoteOpenAIServer):
    queries = "What is the capital of France?" * 20
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    score_response = requests.post(
        server.url_for("score"), json={"model": MODEL_NAME, "queries": queries, "documents": documents}
    )
    assert score_response.status_code == 400
    assert "max_model_len=100" in score_response.text

    # Test truncation
    score_response = requests.post(
        server.url_for("score"),
        json={"model": MODEL_NAME, "queries": queries, "documents": documents, "truncate_prompt_tokens": 101},
    )
    assert score_response.status_code == 400
    assert (
        "truncate_prompt_tokens" in score_response.text
    )  # vLLM: "Please request a smaller truncation size."


def test_invocations(server: RemoteOpenAIServer):
    query = "What is the capital of France?"
    documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
    request_args = {"model": MODEL_NAME, "query": query, "documents": documents}

    rerank_response = requests.post(server.url_for("rerank"), json=request_args)
    rerank_response.raise_for_status()
    invocation_response = requests.post(server.url_for("invocations"), json=request_args)
    invocation_response.raise_for_status()

    rerank_output = rerank_response.json()
    invocation_output = invocation_response.json()
    assert rerank_output.keys() == invocation_output.keys()
    for rerank_result, invocations_result in zip(
        rerank_output["results"], invocation_output["results"], strict=True
    ):
        assert rerank_result.keys() == invocations_result.keys()
        assert rerank_result["relevance_score"] == pytest.approx(
            invocations_result["relevance_score"], rel=0.01
        )


def test_use_activation(server: RemoteOpenAIServer):
    def get_outputs(use_activation):
        query = "What is the capital of France?"
        documents = ["The capital of Brazil is Brasilia.", "The capital of France is Paris."]
        response = requests.post(
            server.url_for("rerank"),
            json={
                "model": MODEL_NAME,
                "query": query,
                "documents": documents,
                "use_activation": use_activation,
            },
        )
        outputs = response.json()
        # sorted by index: the order by relevance may differ with and without the sigmoid only on ties
        return torch.tensor(
            [x["relevance_score"] for x in sorted(outputs["results"], key=lambda r: r["index"])]
        )

    default = get_outputs(use_activation=None)
    w_activation = get_outputs(use_activation=True)
    wo_activation = get_outputs(use_activation=False)

    assert torch.allclose(default, w_activation, atol=1e-2), "Default should use activation."
    assert not torch.allclose(w_activation, wo_activation, atol=1e-2), (
        "wo_activation should not use activation."
    )
    assert torch.allclose(F.sigmoid(wo_activation), w_activation, atol=1e-2), (
        "w_activation should be close to activation(wo_activation)."
    )


def test_pooling_classify(server: RemoteOpenAIServer):
    response = requests.post(
        server.url_for("pooling"),
        json={"model": MODEL_NAME, "input": input_text, "encoding_format": "float", "task": "classify"},
    )
    poolings = PoolingResponse.model_validate(response.json())
    assert len(poolings.data) == 1
    assert len(poolings.data[0].data) == 1


def test_pooling_token_classify(server: RemoteOpenAIServer, hf_model):
    response = requests.post(
        server.url_for("pooling"),
        json={"model": MODEL_NAME, "task": "token_classify", "input": input_text, "encoding_format": "float"},
    )
    poolings = PoolingResponse.model_validate(response.json())
    assert len(poolings.data) == 1
    assert len(poolings.data[0].data) == len(hf_model.tokenizer(input_text)["input_ids"])
    assert len(poolings.data[0].data[0]) == 1


def test_rerank_max_tokens_per_doc(server: RemoteOpenAIServer):
    query = "What is the capital of France?"
    long_doc = "The capital of France is Paris. " * 50
    short_doc = "The capital of Brazil is Brasilia."
    rerank_response = requests.post(
        server.url_for("rerank"),
        json={
            "model": MODEL_NAME,
            "query": query,
            "documents": [long_doc, short_doc],
            "max_tokens_per_doc": 10,
        },
    )
    rerank_response.raise_for_status()
    rerank = RerankResponse.model_validate(rerank_response.json())
    assert rerank.id is not None
    assert rerank.results is not None
    assert len(rerank.results) == 2
    assert rerank.usage.prompt_tokens > 0


def test_rerank_max_tokens_per_doc_reduces_tokens(server: RemoteOpenAIServer):
    query = "What is the capital of France?"
    long_doc = "The capital of France is Paris. " * 10
    response_no_limit = requests.post(
        server.url_for("rerank"),
        json={"model": MODEL_NAME, "query": query, "documents": [long_doc], "truncate_prompt_tokens": 99},
    )
    response_no_limit.raise_for_status()
    rerank_no_limit = RerankResponse.model_validate(response_no_limit.json())

    response_with_limit = requests.post(
        server.url_for("rerank"),
        json={"model": MODEL_NAME, "query": query, "documents": [long_doc], "max_tokens_per_doc": 10},
    )
    response_with_limit.raise_for_status()
    rerank_with_limit = RerankResponse.model_validate(response_with_limit.json())
    assert rerank_with_limit.usage.prompt_tokens < rerank_no_limit.usage.prompt_tokens


def test_rerank_max_tokens_per_doc_validation(server: RemoteOpenAIServer):
    query = "What is the capital of France?"
    documents = ["The capital of France is Paris."]
    # vLLM 0.33's source: 0 is "no cut" (the stored test, older, expects a 400 there).
    response = requests.post(
        server.url_for("rerank"),
        json={"model": MODEL_NAME, "query": query, "documents": documents, "max_tokens_per_doc": 0},
    )
    assert response.status_code == 200
    # negative (a schema error: vLLM's param "body.<field>"), and not below max_model_len (the route's check)
    for bad, param in ((-5, "body.max_tokens_per_doc"), (100, None)):
        response = requests.post(
            server.url_for("rerank"),
            json={"model": MODEL_NAME, "query": query, "documents": documents, "max_tokens_per_doc": bad},
        )
        assert response.status_code == 400
        assert "max_tokens_per_doc" in response.text and response.json()["error"]["param"] == param


def test_score_max_tokens_per_doc_with_score_template(server: RemoteOpenAIServer):
    query = "What is the capital of France?"
    long_doc = "The capital of France is Paris. " * 20
    rerank_response = requests.post(
        server.url_for("rerank"),
        json={"model": MODEL_NAME, "query": query, "documents": [long_doc], "max_tokens_per_doc": 15},
    )
    rerank_response.raise_for_status()
    rerank = RerankResponse.model_validate(rerank_response.json())
    assert rerank.results is not None
    assert len(rerank.results) == 1
    assert rerank.usage.prompt_tokens > 0


@pytest.mark.parametrize("task", ["embed", "token_embed", "plugin"])
def test_pooling_not_supported(server: RemoteOpenAIServer, task: str):
    response = requests.post(
        server.url_for("pooling"),
        json={"model": MODEL_NAME, "input": input_text, "encoding_format": "float", "task": task},
    )
    if task != "plugin":  # served here (extension)
        assert response.status_code == 200 and len(response.json()["data"]) == 1
        return
    assert response.json()["error"]["type"] == "BadRequestError"
    assert response.json()["error"]["message"].startswith("No IOProcessor plugin installed.")
