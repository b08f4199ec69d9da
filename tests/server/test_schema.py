"""Every route's actual answers match that route's response schema in the server's own ``/openapi.json``.

Bodies are validated with ``jsonschema`` against the document (``$ref``s resolved through it). The response
schemas forbid unknown properties and require every property a body always carries, and the test also
records which properties the answers actually carried: every documented property must be seen at least
once. So a route that adds a field, drops one, or stops sending an optional one fails here, as does a route
missing from this test.
"""

from __future__ import annotations

import concurrent.futures
import json
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import requests
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012
from safetensors.torch import load_file, save_file

from tests.server.conftest import MAX_BODY_BYTES, MAX_CLIENT_BATCH
from tests.support.server import InProcessServer

KEY = "schema-test-key-0123456789"
POISON = 300  # a token id whose embedding is NaN: any prompt containing it scores NaN
DOC_URI = "urn:rlhf-rewards:openapi"
TASKS = ("classify", "token_classify", "embed", "token_embed")
MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"}]


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


class SchemaChecker:
    """Validates answers against an OpenAPI document and records the properties each schema was seen with."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.registry = Registry().with_resource(DOC_URI, Resource.from_contents(doc, DRAFT202012))
        self.seen: dict[str, set[str]] = defaultdict(set)
        self.operations: set[tuple[str, str]] = set()

    def _resolve(self, pointer: str) -> Any:
        node: Any = self.doc
        for part in pointer.split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    def _validator(self, pointer: str) -> Draft202012Validator:
        return Draft202012Validator({"$ref": f"{DOC_URI}#{pointer}"}, registry=self.registry)

    def check(self, response: requests.Response, path: str | None = None, method: str = "post") -> Any:
        """Validate ``response`` against the schema of its status on ``method path`` (``path=None``: the
        ``ErrorResponse`` component, for answers to routes that do not exist). Returns the parsed body."""
        media = response.headers["content-type"].split(";")[0].strip()
        if path is None:
            pointer = "/components/schemas/ErrorResponse"
            assert media == "application/json", response.headers
        else:
            responses = self.doc["paths"][path][method]["responses"]
            status = str(response.status_code)
            assert status in responses, (
                f"{method.upper()} {path} answered {status}, which its schema does not list"
            )
            content = responses[status].get("content", {})
            assert media in content, (
                f"{method.upper()} {path} {status} sent {media}, the schema lists {list(content)}"
            )
            pointer = f"/paths/{_escape(path)}/{method}/responses/{status}/content/{_escape(media)}/schema"
            if status.startswith("2"):
                self.operations.add((method, path))
        if media != "application/json":
            assert self._resolve(pointer) == {"type": "string"}
            return response.text
        body = response.json()
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in self._validator(pointer).iter_errors(body)
        ]
        assert not errors, (path, response.status_code, errors, body)
        self._walk(pointer, body)
        return body

    def _walk(self, pointer: str, value: Any) -> None:
        """Record, per component schema, which properties ``value`` carries (following the matching branch)."""
        schema = self._resolve(pointer)
        if "$ref" in schema:
            target = schema["$ref"].removeprefix("#")
            if "properties" in self._resolve(target) and isinstance(value, dict):
                self.seen[target.rsplit("/", 1)[-1]].update(value)
            self._walk(target, value)
            return
        for key in ("anyOf", "oneOf"):
            if key in schema:
                branch = next(
                    i
                    for i in range(len(schema[key]))
                    if self._validator(f"{pointer}/{key}/{i}").is_valid(value)
                )
                self._walk(f"{pointer}/{key}/{branch}", value)
                return
        if isinstance(value, dict):
            for name, item in value.items():
                if name in schema.get("properties", {}):
                    self._walk(f"{pointer}/properties/{_escape(name)}", item)
                elif isinstance(schema.get("additionalProperties"), dict):
                    self._walk(f"{pointer}/additionalProperties", item)
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for item in value:
                self._walk(f"{pointer}/items", item)

    def documented(self, name: str) -> set[str]:
        """The properties the component schema ``name`` documents."""
        return set(self.doc["components"]["schemas"][name]["properties"])


def _poisoned_copy(model: Path, path: Path) -> Path:
    """A copy of ``model`` in ``path`` whose embedding row ``POISON`` is NaN."""
    for f in model.iterdir():
        (path / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(path / "model.safetensors"))
    weights["model.embed_tokens.weight"][POISON] = float("nan")
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


@pytest.fixture(scope="module")
def poisoned_server(qwen3_rm, tmp_path_factory):
    """The tiny RM with one NaN embedding row (NaN items), an API key (401) and a queue of one prompt (503)."""
    path = _poisoned_copy(qwen3_rm, tmp_path_factory.mktemp("nan-rm"))
    with InProcessServer(path, "--api-key", KEY, "--max-queue-size", "1") as proc:
        yield proc


@pytest.fixture(scope="module")
def checker(server):
    return SchemaChecker(requests.get(server.url + "/openapi.json", timeout=10).json())


def _queue_full_answer(proc: InProcessServer) -> requests.Response:
    """A 503 from a full queue: the engine is held on one request while a second waits in the queue."""
    batcher, entered, release = proc.served.batcher, threading.Event(), threading.Event()
    real = batcher._encode

    def held(task, items):
        entered.set()
        release.wait(60)
        return real(task, items)

    auth = {"Authorization": f"Bearer {KEY}"}

    def post() -> requests.Response:
        return requests.post(proc.url + "/pooling", json={"input": [[5, 6]]}, headers=auth, timeout=60)

    batcher._encode = held
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = pool.submit(post)
            assert entered.wait(30)
            waiting = pool.submit(post)
            while batcher.pending_prompts < 1:
                assert not waiting.done(), waiting.result().text
                time.sleep(0.01)
            answer = post()
            release.set()
            assert running.result().status_code == 200 and waiting.result().status_code == 200
    finally:
        release.set()
        batcher._encode = real
    return answer


@pytest.fixture(scope="module")
def embedding_server(checkpoint_factory):
    with InProcessServer(checkpoint_factory("Qwen3Model"), "--served-model-name", "tiny-embed") as proc:
        yield proc


@pytest.fixture(scope="module")
def judge_server(checkpoint_factory, tmp_path_factory):
    """A tiny causal LM (``/generative_scoring``) with the same NaN embedding row as ``poisoned_server``
    (an item's ``error``)."""
    path = _poisoned_copy(checkpoint_factory("Qwen3ForCausalLM"), tmp_path_factory.mktemp("nan-judge"))
    with InProcessServer(path, "--served-model-name", "tiny-judge") as proc:
        yield proc


def test_every_answer_matches_its_routes_schema(
    server, poisoned_server, embedding_server, judge_server, checker
):
    url = server.url
    c = checker
    # /pooling: every task, both encodings, with and without details, completion and chat forms.
    for task in TASKS:
        for encoding in ("float", "base64"):
            for details in (False, True):
                body = c.check(
                    requests.post(
                        url + "/pooling",
                        timeout=30,
                        json={
                            "input": ["Hello there", "ok"],
                            "task": task,
                            "encoding_format": encoding,
                            "return_details": details,
                            "request_id": f"{task}-{encoding}",
                        },
                    ),
                    "/pooling",
                )
                assert body["id"] == f"pooling-{task}-{encoding}" and len(body["data"]) == 2
                assert all(("shape" in item) == details for item in body["data"])
    c.check(
        requests.post(
            url + "/pooling", json={"input": [[5, 6, 7], [8, 9]], "truncate_prompt_tokens": 1}, timeout=30
        ),
        "/pooling",
    )
    c.check(requests.post(url + "/pooling", json={"messages": MESSAGES}, timeout=30), "/pooling")
    c.check(
        requests.post(url + "/classify", json={"input": ["a b", "c"], "use_activation": False}, timeout=30),
        "/classify",
    )
    c.check(requests.post(url + "/classify", json={"messages": MESSAGES}, timeout=30), "/classify")
    for fmt in ("bytes", "bytes_only"):
        assert (
            c.check(
                requests.post(
                    url + "/pooling", json={"input": ["a", "b"], "encoding_format": fmt}, timeout=30
                ),
                "/pooling",
            )
            is not None
        )
    # vLLM 0.33's routes: embeddings (SGLang's reward answer on a reward model), score, rerank, invocations.
    for body in ({"input": ["a b", "c"]}, {"input": "a", "encoding_format": "base64"}):
        c.check(requests.post(url + "/v1/embeddings", json=body, timeout=30), "/v1/embeddings")
    c.check(
        requests.post(url + "/v1/embeddings", json={"input": "a", "encoding_format": "bytes"}, timeout=30),
        "/v1/embeddings",
    )
    for route in ("/score", "/v1/score"):
        c.check(requests.post(url + route, json={"queries": "q", "documents": ["a", "b"]}, timeout=30), route)
    for route in ("/rerank", "/v1/rerank", "/v2/rerank"):
        c.check(
            requests.post(url + route, json={"query": "q", "documents": ["a", "b"], "top_n": 1}, timeout=30),
            route,
        )
    for body in ({"input": "a"}, {"query": "q", "documents": ["a"]}, {"queries": "q", "documents": "a"}):
        c.check(requests.post(url + "/invocations", json=body, timeout=30), "/invocations")
    answer = requests.post(url + "/v2/embed", json={"texts": ["a"]}, timeout=30)
    assert answer.status_code == 404 and c.check(answer, "/v2/embed") == {"detail": "Not Found"}
    # /generative_scoring needs a causal LM: a reward model answers vLLM's pooling-runner 404.
    answer = requests.post(
        url + "/generative_scoring", json={"query": "q", "items": ["a"], "label_token_ids": [1]}, timeout=30
    )
    assert answer.status_code == 404 and c.check(answer, "/generative_scoring") == {"detail": "Not Found"}
    judge = judge_server.url
    body = c.check(
        requests.post(
            judge + "/generative_scoring",
            json={"query": "Is 2 + 2 = 4? Answer:", "items": [" yes", " no"], "label_token_ids": [21, 33]},
            timeout=30,
        ),
        "/generative_scoring",
    )
    assert [item["index"] for item in body["data"]] == [0, 1] and body["model"] == "tiny-judge"
    body = c.check(
        requests.post(
            judge + "/generative_scoring",
            json={  # a NaN item: score null, error set
                "query": [5, 6],
                "items": [[POISON], [7]],
                "label_token_ids": [21],
                "apply_softmax": False,
            },
            timeout=30,
        ),
        "/generative_scoring",
    )
    assert body["data"][0]["score"] is None and "error" in body["data"][0] and "error" not in body["data"][1]
    answer = requests.post(
        judge + "/generative_scoring",
        json={"query": "q", "items": ["a"], "label_token_ids": [10**6]},
        timeout=30,
    )
    assert answer.status_code == 400, answer.text
    c.check(answer, "/generative_scoring")
    emb = embedding_server.url
    for body in (
        {"texts": ["a b", "c"], "embedding_types": ["float", "binary", "ubinary", "base64"]},
        {"inputs": [{"content": [{"type": "text", "text": "a"}]}], "truncate": "START", "max_tokens": 3},
    ):
        c.check(requests.post(emb + "/v2/embed", json=body, timeout=30), "/v2/embed")
    c.check(
        requests.post(emb + "/score", json={"text_1": ["a", "b"], "text_2": ["c", "d"]}, timeout=30), "/score"
    )
    c.check(
        requests.post(url + "/get_reward", json={"query": ["a b", "c"], "prompts": ["a"]}, timeout=30),
        "/get_reward",
    )
    for body in (
        {"prompt": "Hello world"},
        {"prompt": "Hello", "return_token_strs": True},
        {"messages": MESSAGES},
    ):
        c.check(requests.post(url + "/tokenize", json=body, timeout=30), "/tokenize")
    c.check(requests.get(url + "/v1/models", timeout=10), "/v1/models", "get")
    info = c.check(requests.get(url + "/v1/model_info", timeout=10), "/v1/model_info", "get")
    assert info["server_limits"]["max_client_batch_size"] == MAX_CLIENT_BATCH
    for method, path in (("get", "/health"), ("get", "/ping"), ("post", "/ping")):  # empty bodies, as vLLM's
        answer = requests.request(method, url + path, timeout=10)
        assert answer.status_code == 200 and answer.content == b"", (path, answer.content)
        assert "200" in c.doc["paths"][path][method]["responses"]
        c.operations.add((method, path))
    c.check(requests.post(url + "/detokenize", json={"tokens": [1, 2, 3]}, timeout=30), "/detokenize")
    assert c.check(requests.get(url + "/version", timeout=10), "/version", "get")["version"]
    assert "rlhf_rewards_requests_total" in c.check(
        requests.get(url + "/metrics", timeout=10), "/metrics", "get"
    )

    # Client mistakes: a RequestError from the engine, a schema error, the limits, unknown route and method.
    for route, body in (
        ("/pooling", {"input": ["ok", ""]}),
        ("/pooling", {"input": "x", "task": "classify", "dimensions": 4}),
        ("/pooling", {"input": 42}),
        ("/classify", {"input": [[1, 100000]]}),
        ("/get_reward", {"query": ["fine", ""]}),
        ("/score", {"queries": ["a", "b"], "documents": ["c"]}),
        ("/invocations", {"nothing": 1}),
        ("/v1/embeddings", {"input": "a", "dimensions": 2}),
    ):
        answer = requests.post(url + route, json=body, timeout=30)
        assert answer.status_code == 400, (route, answer.text)
        c.check(answer, route)
    for route, body in (
        ("/tokenize", {"prompt": "x", "model": "nope"}),
        ("/rerank", {"query": "q", "documents": "a", "model": "nope"}),
    ):
        answer = requests.post(url + route, json=body, timeout=30)
        assert answer.status_code == 404 and answer.json()["error"]["type"] == "NotFoundError"
        c.check(answer, route)
    answer = requests.post(url + "/pooling", json={"input": ["x"] * (MAX_CLIENT_BATCH + 1)}, timeout=30)
    assert answer.status_code == 413
    c.check(answer, "/pooling")
    answer = requests.post(url + "/classify", json={"input": "x" * (MAX_BODY_BYTES + 10)}, timeout=30)
    assert answer.status_code == 413
    c.check(answer, "/classify")
    answer = requests.post(url + "/v2/pooling", json={"input": "x"}, timeout=30)
    assert answer.status_code == 404 and answer.json() == {"detail": "Not Found"}  # FastAPI's, as vLLM
    answer = requests.get(url + "/pooling", timeout=30)
    assert answer.status_code == 405 and answer.json() == {
        "detail": "Method Not Allowed"
    }  # Starlette's, as vLLM

    # NaN items (the optional `error` fields), then 401, a full queue and draining (503).
    nan, auth = poisoned_server.url, {"Authorization": f"Bearer {KEY}"}
    bad, good = [5, POISON, 7], [5, 6, 7]
    body = c.check(
        requests.post(nan + "/pooling", json={"input": [bad, good]}, headers=auth, timeout=30), "/pooling"
    )
    assert body["data"][0]["data"] is None and "error" in body["data"][0] and "error" not in body["data"][1]
    body = c.check(
        requests.post(nan + "/classify", json={"input": [bad]}, headers=auth, timeout=30), "/classify"
    )
    assert body["data"][0]["probs"] is None
    body = c.check(
        requests.post(nan + "/get_reward", json={"query": ["Hello 3"]}, headers=auth, timeout=30),
        "/get_reward",
    )
    assert body["rewards"] == [None] and "0" in body["errors"]
    body = c.check(
        requests.post(nan + "/v1/embeddings", json={"input": [bad, good]}, headers=auth, timeout=30),
        "/v1/embeddings",
    )
    assert body["data"][0]["embedding"] is None and "error" in body["data"][0]
    body = c.check(
        requests.post(
            nan + "/score",
            json={"queries": "Hello", "documents": ["Hi", "Hello 3"]},
            headers=auth,
            timeout=30,
        ),
        "/score",
    )
    body = c.check(
        requests.post(
            nan + "/rerank", json={"query": "Hello", "documents": ["Hi", "Hello 3"]}, headers=auth, timeout=30
        ),
        "/rerank",
    )
    for method, route in (
        ("post", "/pooling"),
        ("post", "/classify"),
        ("post", "/get_reward"),
        ("post", "/tokenize"),
        ("get", "/v1/models"),
        ("get", "/v1/model_info"),
        ("get", "/metrics"),
    ):
        answer = requests.request(
            method, nan + route, json={"input": "x"} if method == "post" else None, timeout=30
        )
        assert answer.status_code == 401, route
        c.check(answer, route, method)
    answer = _queue_full_answer(poisoned_server)
    assert answer.status_code == 503 and "Retry-After" in answer.headers
    c.check(answer, "/pooling")
    poisoned_server.served.draining = True
    try:
        answers = [
            requests.post(nan + "/pooling", json={"input": "x"}, headers=auth, timeout=30),
            requests.get(nan + "/health", timeout=30),
        ]
    finally:
        poisoned_server.served.draining = False
    assert [a.status_code for a in answers] == [503, 503]
    c.check(answers[0], "/pooling")
    assert answers[1].content == b"" and answers[1].headers["Retry-After"] == "1"

    # Every route of the document was answered, and every documented response property was seen.
    documented = {(m, p) for p, ops in c.doc["paths"].items() for m in ops}
    assert documented == c.operations, documented ^ c.operations
    assert c.seen, "no component schema was reached"
    for name, keys in c.seen.items():
        assert keys == c.documented(name), (name, "never sent:", c.documented(name) - keys)


def test_the_check_fails_on_an_added_or_dropped_field(server, checker):
    # The mutations a drifting route would make, on a real answer: the schema must refuse each of them.
    answer = requests.post(server.url + "/pooling", json={"input": "hi", "return_details": True}, timeout=30)
    body = answer.json()
    validator = checker._validator("/paths/~1pooling/post/responses/200/content/application~1json/schema")
    assert validator.is_valid(body)
    mutations = [
        {**body, "extra": 1},
        {k: v for k, v in body.items() if k != "usage"},
        {**body, "data": [{**body["data"][0], "logits": [0.0]}]},
        {**body, "data": [{k: v for k, v in body["data"][0].items() if k != "data"}]},
        {**body, "usage": {"prompt_tokens": 1, "total_tokens": 1}},
    ]
    for mutated in mutations:
        assert not validator.is_valid(mutated), json.dumps(mutated)[:300]


def test_an_answer_the_server_cannot_build_is_a_500_not_a_400(poisoned_server):
    # A response model refusing what a route built is the server's fault (pydantic's error is a ValueError,
    # which the server otherwise answers as a client mistake).
    batcher, auth = poisoned_server.served.batcher, {"Authorization": f"Bearer {KEY}"}
    real = batcher._encode

    def wrong_ids(task, items):
        outputs = real(task, items)
        for out in outputs:
            out.prompt_token_ids = [f"token {t}" for t in out.prompt_token_ids]
        return outputs

    batcher._encode = wrong_ids
    try:
        answer = requests.post(
            poisoned_server.url + "/pooling",
            json={"input": [[5, 6]], "return_details": True},
            headers=auth,
            timeout=30,
        )
    finally:
        batcher._encode = real
    assert answer.status_code == 500 and answer.json()["error"]["type"] == "InternalServerError", answer.text
    assert "token 5" not in answer.text
    assert (
        requests.post(
            poisoned_server.url + "/pooling", json={"input": [[5, 6]]}, headers=auth, timeout=30
        ).status_code
        == 200
    )
