"""Every client mistake is a 4xx in vLLM 0.33's error shape (``{"error": {"message", "type", "param", "code"}}``)
naming the field and the limit; the server stays healthy. Unknown fields are ignored with a logged warning and
a route that does not exist answers FastAPI's ``{"detail": "Not Found"}``, as in vLLM (issue 15).

Also a quick property-based run (schemathesis, from the server's own OpenAPI document): no generated request,
valid or not, gets a 5xx. The full run (>= 2,000 requests, fixed seed) is the slow ``test_fuzz.py``.
"""

from __future__ import annotations

import json
import re

import pytest
import requests

from tests.server.conftest import MAX_BODY_BYTES, MAX_CLIENT_BATCH

JSON = {"Content-Type": "application/json"}
LONG = list(range(5, 25)) * 30  # 600 token ids, over the tiny model's max_model_len=512

# (id, route, body (dict -> JSON, bytes -> raw), extra headers, status, words the message must contain, param)
CASES = [
    ("empty input list", "/pooling", {"input": []}, {}, 400, ["input", "empty"], None),
    ("empty string", "/pooling", {"input": ""}, {}, 400, ["input[0]", "empty string"], None),
    ("empty string in list", "/pooling", {"input": ["ok", ""]}, {}, 400, ["input[1]", "empty string"], None),
    ("empty token list", "/pooling", {"input": [[1, 2], []]}, {}, 400, ["input[1]", "empty"], None),
    (
        "token id out of vocab",
        "/pooling",
        {"input": [[1, 2, 100000]]},
        {},
        400,
        ["input[0]", "100000", "[0, 448)"],
        None,
    ),
    ("negative token id", "/pooling", {"input": [3, -1]}, {}, 400, ["input[0]", "-1", "vocabulary"], None),
    (
        "over max_model_len",
        "/pooling",
        {"input": [LONG]},
        {},
        400,
        ["input[0]", "600 tokens", "max_model_len=512", "truncate_prompt_tokens"],
        "input_tokens",
    ),
    (
        "truncate over max_model_len",
        "/pooling",
        {"input": "hi", "truncate_prompt_tokens": 600},
        {},
        400,
        ["truncate_prompt_tokens=600", "512"],
        None,
    ),
    (
        "truncate zero",
        "/pooling",
        {"input": "hi", "truncate_prompt_tokens": 0},
        {},
        400,
        ["truncate_prompt_tokens", "-1"],
        None,
    ),
    (
        "unknown task",
        "/pooling",
        {"input": "hi", "task": "reward"},
        {},
        400,
        ["task", "classify", "token_classify"],
        "body.task",
    ),
    (
        "removed task",
        "/pooling",
        {"input": "hi", "task": "encode"},
        {},
        400,
        ["encode", "token_embed"],
        "task",
    ),
    (
        "step fields without STEP",
        "/pooling",
        {"input": "hi", "task": "token_classify", "step_tag_id": 3},
        {},
        400,
        ["step_tag_id", "STEP"],
        "step_tag_id",
    ),
    (
        "returned ids without STEP",
        "/pooling",
        {"input": "hi", "task": "token_classify", "returned_token_ids": [0]},
        {},
        400,
        ["returned_token_ids", "STEP"],
        "returned_token_ids",
    ),
    (
        "field of another task",
        "/pooling",
        {"input": "hi", "task": "classify", "dimensions": 4},
        {},
        400,
        ["dimensions", "classify"],
        "dimensions",
    ),
    (
        "dimensions over hidden size",
        "/pooling",
        {"input": "hi", "task": "embed", "dimensions": 4096},
        {},
        400,
        ["dimensions", "4096", "64"],
        "dimensions",
    ),
    (
        "unknown model",
        "/pooling",
        {"input": "hi", "model": "no-such-model"},
        {},
        404,
        ["no-such-model", "tiny-rm"],
        None,
    ),
    (
        "unknown lora on classify",
        "/classify",
        {"input": "hi", "model": "my-lora"},
        {},
        404,
        ["my-lora"],
        None,
    ),
    ("malformed JSON", "/pooling", b'{"input": "hi"', JSON, 400, ["not valid JSON"], "body.14"),
    ("not an object", "/pooling", b'["hi"]', JSON, 400, ["JSON object"], "body"),
    ("empty body", "/pooling", b"", JSON, 400, ["empty"], "body"),
    ("non-UTF-8 body", "/pooling", b'{"input": "\xff\xfe"}', JSON, 400, ["UTF-8"], None),
    (
        "not JSON content type",
        "/pooling",
        b'{"input": "hi"}',
        {"Content-Type": "text/plain"},
        400,
        ["Content-Type: application/json"],
        None,
    ),
    (
        "wrong type bool",
        "/pooling",
        {"input": "hi", "use_activation": "maybe"},
        {},
        400,
        ["use_activation", "boolean"],
        "body.use_activation",
    ),
    ("wrong type input", "/pooling", {"input": 42}, {}, 400, ["input", "valid"], "body.input"),
    ("mixed input list", "/pooling", {"input": ["a", 1]}, {}, 400, ["input"], "body.input.0"),
    ("float token ids", "/pooling", {"input": [1.5, 2.0]}, {}, 400, ["input", "fractional"], "body.input.0"),
    (
        "input and messages",
        "/pooling",
        {"input": "hi", "messages": [{"role": "user", "content": "x"}]},
        {},
        400,
        ["one of `input`", "not both"],
        "messages",
    ),
    (
        "neither input nor messages",
        "/pooling",
        {"task": "classify"},
        {},
        400,
        ["one of `input`"],
        "body.input",
    ),
    ("empty messages", "/pooling", {"messages": []}, {}, 400, ["messages", "empty"], None),
    (
        "message without role",
        "/pooling",
        {"messages": [{"content": "x"}]},
        {},
        400,
        ["messages[0].role"],
        "body.input",
    ),
    (
        "image content part",
        "/pooling",
        {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
        {},
        400,
        ["content[0]", "text"],
        "body.input",
    ),
    (
        "chat template from request",
        "/pooling",
        {"messages": [{"role": "user", "content": "x"}], "chat_template": "{{ messages }}"},
        {},
        400,
        ["chat_template", "--trust-request-chat-template"],
        "chat_template",
    ),
    (
        "renderer option in chat_template_kwargs",
        "/pooling",
        {"messages": [{"role": "user", "content": "x"}], "chat_template_kwargs": {"tokenize": True}},
        {},
        400,
        ["chat_template_kwargs", "tokenize"],
        "chat_template_kwargs",
    ),
    (
        "chat option on input",
        "/pooling",
        {"input": "x", "add_generation_prompt": True},
        {},
        400,
        ["add_generation_prompt", "messages"],
        "add_generation_prompt",
    ),
    (
        "priority out of range",
        "/pooling",
        {"input": "x", "priority": 2**63},
        {},
        400,
        ["priority"],
        "body.priority",
    ),
    (
        "bad encoding_format",
        "/pooling",
        {"input": "x", "encoding_format": "bad_encoding_format"},
        {},
        400,
        ["encoding_format", "literal_error", "bad_encoding_format"],
        "body.encoding_format",
    ),
    (
        "padding max_length",
        "/pooling",
        {"input": "x", "padding": "max_length"},
        {},
        400,
        ["padding", "max_length"],
        "padding",
    ),
    (
        "multimodal kwargs",
        "/classify",
        {"input": "x", "mm_processor_kwargs": {"a": 1}},
        {},
        400,
        ["mm_processor_kwargs", "text only"],
        "mm_processor_kwargs",
    ),
    (
        "bad cache_salt",
        "/pooling",
        {"input": "x", "cache_salt": "a/b"},
        {},
        400,
        ["cache_salt"],
        "cache_salt",
    ),
    (
        "wrong type truncation_side",
        "/pooling",
        {"input": "x", "truncation_side": "middle"},
        {},
        400,
        ["truncation_side", "literal_error"],
        "body.truncation_side",
    ),
    (
        "too many inputs",
        "/pooling",
        {"input": ["x"] * (MAX_CLIENT_BATCH + 1)},
        {},
        413,
        [f"{MAX_CLIENT_BATCH + 1} prompts", f"--max-client-batch-size={MAX_CLIENT_BATCH}"],
        "input",
    ),
    (
        "body over max-body-bytes",
        "/pooling",
        {"input": "x" * (MAX_BODY_BYTES + 10)},
        {},
        413,
        [f"--max-body-bytes={MAX_BODY_BYTES}"],
        None,
    ),
    ("get_reward empty query", "/get_reward", {"query": []}, {}, 400, ["query"], "body.query"),
    (
        "get_reward query not a list",
        "/get_reward",
        {"query": "text"},
        {},
        400,
        ["query", "list"],
        "body.query",
    ),
    (
        "get_reward empty text",
        "/get_reward",
        {"query": ["fine", ""]},
        {},
        400,
        ["query[1]", "empty string"],
        None,
    ),
    (
        "get_reward too many",
        "/get_reward",
        {"query": ["x"] * (MAX_CLIENT_BATCH + 1)},
        {},
        413,
        ["--max-client-batch-size"],
        "query",
    ),
    (
        "tokenize both forms",
        "/tokenize",
        {"prompt": "x", "messages": [{"role": "user", "content": "x"}]},
        {},
        400,
        ["exactly one of `prompt` or `messages`"],
        "body",
    ),
    (
        "tokenize continue_final_message with add_generation_prompt",  # vLLM's rule and message, as /pooling's
        "/tokenize",
        {
            "messages": [{"role": "user", "content": "x"}],
            "continue_final_message": True,
            "add_generation_prompt": True,
        },
        {},
        400,
        ["Cannot set both `continue_final_message` and `add_generation_prompt` to True."],
        None,
    ),
    (
        "score lengths before emptiness",  # vLLM's validate_score_input order (shared with LLM.score)
        "/score",
        {"queries": ["a", "b"], "documents": []},
        {},
        400,
        ["Input lengths must be either 1:1, 1:N or N:N"],
        None,
    ),
    ("tokenize unknown model", "/tokenize", {"prompt": "x", "model": "nope"}, {}, 404, ["nope"], "model"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_client_mistake_is_a_4xx_naming_the_field(server, case):
    _, route, body, headers, status, words, param = case
    if isinstance(body, bytes):
        response = requests.post(server.url + route, data=body, headers=headers, timeout=30)
    else:
        response = requests.post(server.url + route, json=body, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status
    # vLLM's types: a schema error is "Bad Request" (its param "body.<field>"), the rest are named error classes.
    schema = (
        param is not None
        and (param == "body" or param.startswith("body."))
        or case[0] in ("non-UTF-8 body", "not JSON content type")
    )
    assert error["type"] == (
        "Bad Request"
        if schema
        else {400: "BadRequestError", 404: "NotFoundError", 413: "RequestTooLargeError"}[status]
    )
    for word in words:
        assert word in error["message"], (word, error["message"])
    assert error["param"] == param
    assert len(error["message"]) < 1000  # never echoes a huge input back


def test_unknown_fields_are_ignored_and_logged_and_an_unknown_route_is_fastapis_404(server, llm):
    # vLLM 0.33 ignores fields it does not know and logs their names; a typo no longer fails the request.
    for route, body in (
        ("/pooling", {"input": "ignored fields", "use_activaton": False}),
        ("/classify", {"input": "ignored fields", "task": "embed", "zz_unknown_field": 1}),
    ):
        r = requests.post(server.url + route, json=body, timeout=30)
        assert r.status_code == 200, r.text
    (want,) = llm.encode("ignored fields", pooling_task="classify", use_tqdm=False)
    assert abs(r.json()["data"][0]["probs"][0] - float(want.outputs.data[0])) < 1e-5  # still a classification
    log = server.log()
    assert "ignored" in log and "use_activaton" in log and "zz_unknown_field" in log
    for method, route in (("post", "/v2/pooling"), ("get", "/no/such/route")):
        r = requests.request(method, server.url + route, json={"input": "x"}, timeout=30)
        assert r.status_code == 404 and r.json() == {"detail": "Not Found"}


def test_a_request_error_carries_its_structure_in_a_header(server):
    # What RemoteWorker rebuilds and moves to its caller's prompt index, without parsing the message.
    from rlhf_rewards.errors import RequestError
    from rlhf_rewards.server.errors import ERROR_HEADER
    from rlhf_rewards.workers import http_wire

    assert http_wire.ERROR_HEADER == ERROR_HEADER  # the client reads the header the server writes
    for route, body, field, index in (
        ("/pooling", {"input": ["ok", "", "x"]}, "input", 1),
        ("/pooling", {"input": [[1, 2], [3, 100000]]}, "input", 1),
        ("/classify", {"input": [LONG[:10], LONG]}, "input", 1),
        ("/get_reward", {"query": ["fine", "", "ok"]}, "query", 1),
        ("/pooling", {"input": "hi", "truncate_prompt_tokens": 0}, "truncate_prompt_tokens", None),
        ("/pooling", {"input": "hi", "task": "classify", "dimensions": 4}, "task", None),
    ):
        response = requests.post(server.url + route, json=body, timeout=30)
        assert response.status_code == 400, response.text
        error = RequestError.from_dict(json.loads(response.headers[ERROR_HEADER]))
        assert (error.field, error.index, error.subfield) == (field, index, None), (route, body)
        answer = response.json()["error"]
        # The body's param is vLLM's (none, or "input_tokens" for an over-long prompt); the header locates it.
        assert error.message == answer["message"]
    # Mistakes found by the request schema or a limit, and answers that are no error, carry none.
    for route, body in (
        ("/pooling", {"input": 42}),
        ("/pooling", {"input": ["x"] * (MAX_CLIENT_BATCH + 1)}),
        ("/pooling", {"input": "hi", "model": "nope"}),
        ("/pooling", {"input": "hi"}),
    ):
        assert ERROR_HEADER not in requests.post(server.url + route, json=body, timeout=30).headers, body


def test_wrong_method_and_health_after_mistakes(server, llm):
    r = requests.get(server.url + "/pooling", timeout=10)
    assert r.status_code == 405 and r.json() == {"detail": "Method Not Allowed"}  # Starlette's, as vLLM
    health = requests.get(server.url + "/health", timeout=10)
    assert health.status_code == 200 and health.content == b""  # vLLM's empty body
    good = requests.post(server.url + "/pooling", json={"input": "still works"}, timeout=30).json()
    (want,) = llm.encode("still works", pooling_task="classify", use_tqdm=False)
    assert abs(good["data"][0]["data"][0] - float(want.outputs.data[0])) < 1e-5
    metrics = requests.get(server.url + "/metrics", timeout=10).text
    assert not re.search(r'rlhf_rewards_requests_total\{[^}]*status="5\d\d"', metrics)


def test_a_bad_request_among_concurrent_good_ones_fails_alone(server, llm):
    import concurrent.futures

    bodies = [{"input": f"good {i}"} for i in range(12)] + [{"input": [[1, 2, 100000]]}]
    with concurrent.futures.ThreadPoolExecutor(13) as pool:
        answers = list(pool.map(lambda b: requests.post(server.url + "/pooling", json=b, timeout=60), bodies))
    assert [a.status_code for a in answers] == [200] * 12 + [400]
    want = llm.encode([b["input"] for b in bodies[:12]], pooling_task="classify", use_tqdm=False)
    for answer, w in zip(answers, want, strict=False):
        assert abs(answer.json()["data"][0]["data"][0] - float(w.outputs.data[0])) < 1e-5


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_no_generated_request_gets_a_server_error(server, mode):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    generation_mode = getattr(schemathesis.GenerationMode, mode.upper())
    seen = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        if mode == "negative" and (
            operation.method.upper() != "POST" or operation.path in ("/invocations", "/ping")
        ):
            continue  # no body or parameters (or any JSON body): no invalid form

        @given(operation.as_strategy(generation_mode=generation_mode))
        @settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            nonlocal seen
            seen += 1
            response = case.call(base_url=server.url, timeout=60)
            assert response.status_code < 500, (case.method, case.path, case.body, response.text)
            if response.status_code >= 400:
                body = json.loads(response.text)
                if body != {"detail": "Not Found"}:  # a route the served model does not offer (as vLLM)
                    assert body["error"]["code"] == response.status_code, body

        check()
    assert seen >= 30
    assert requests.get(server.url + "/health", timeout=10).status_code == 200


@pytest.fixture(scope="module")
def embedding_server(checkpoint_factory):
    from tests.support.server import InProcessServer

    with InProcessServer(checkpoint_factory("Qwen3Model"), "--served-model-name", "tiny-embed") as proc:
        yield proc


def test_a_task_the_model_cannot_do_is_a_400(embedding_server):
    url = embedding_server.url
    for route, body, words in (
        ("/pooling", {"input": "hi", "task": "classify"}, ["task='classify'", "not supported", "embed"]),
        ("/get_reward", {"query": ["hi"]}, ["/get_reward", "embedding"]),
    ):
        r = requests.post(url + route, json=body, timeout=30)
        assert r.status_code == 400, (route, r.text)
        for word in words:
            assert word in r.json()["error"]["message"], (route, word, r.json())
    # vLLM serves /classify only for models with the classify task: elsewhere the route does not exist.
    r = requests.post(url + "/classify", json={"input": "hi"}, timeout=30)
    assert r.status_code == 404 and r.json() == {"detail": "Not Found"}
    assert requests.get(url + "/health", timeout=10).status_code == 200
    ok = requests.post(url + "/pooling", json={"input": "hi"}, timeout=30).json()  # its own task still works
    assert len(ok["data"][0]["data"]) == 64


def test_a_server_fault_is_a_500_that_leaks_nothing_and_the_server_keeps_serving(embedding_server):
    engine = embedding_server.served
    real = engine.batcher._encode

    def broken(task, items):
        raise RuntimeError("engine fault with secret detail /home/user/.cache/token=abc123")

    engine.batcher._encode = broken
    try:
        r = requests.post(embedding_server.url + "/pooling", json={"input": "hi"}, timeout=30)
    finally:
        engine.batcher._encode = real
    assert r.status_code == 500 and r.json()["error"]["type"] == "InternalServerError"
    assert (
        "abc123" not in r.text
        and "Traceback" not in r.text
        and "RuntimeError" in r.json()["error"]["message"]
    )
    assert requests.get(embedding_server.url + "/health", timeout=10).status_code == 200
    assert (
        requests.post(embedding_server.url + "/pooling", json={"input": "hi"}, timeout=30).status_code == 200
    )


@pytest.fixture(scope="module")
def prm_server(checkpoint_factory):
    from tests.support.server import InProcessServer

    with InProcessServer(
        checkpoint_factory("Qwen2ForProcessRewardModel"), "--served-model-name", "tiny-prm"
    ) as proc:
        yield proc


def test_prm_embeddings_without_a_step_tag_is_a_4xx_and_the_connection_survives(prm_server):
    # Regression (issue 23, found by the online differential): a process reward model's prompt without a step
    # tag keeps no STEP row; /v1/embeddings read its last row and answered 500 (IndexError), closing the
    # connection. Now a 400 naming the input, and the same keep-alive connection serves the next request.
    import http.client

    host, port = prm_server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:

        def post(body: dict) -> tuple[int, dict, str | None]:
            conn.request("POST", "/v1/embeddings", body=json.dumps(body), headers=JSON)
            r = conn.getresponse()
            return r.status, json.loads(r.read()), r.getheader("connection")

        status, body, connection = post({"input": "no tag here"})
        assert status == 400, body
        assert body["error"]["type"] == "BadRequestError" and body["error"]["param"] == "input", body
        assert "step tag" in body["error"]["message"] and "input[0]" in body["error"]["message"]
        assert connection != "close"
        sock = conn.sock
        assert sock is not None  # kept open after the 400
        status, body, _ = post({"input": "step one <extra_0>"})  # <extra_0>: the tiny tokenizer's step tag
        assert status == 200, body
        assert conn.sock is sock  # the same connection, not a reconnect
        assert len(body["data"]) == 1 and len(body["data"][0]["embedding"]) == 2  # the PRM's two labels
        # Mixed in one request: the whole request is the 400 (as before), and the server keeps serving.
        status, body, _ = post({"input": ["step <extra_0>", "no tag"]})
        assert status == 400 and "input[1]" in body["error"]["message"], body
    finally:
        conn.close()
    assert requests.get(prm_server.url + "/health", timeout=10).status_code == 200
