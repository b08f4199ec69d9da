"""Online differential on process reward models: ``Qwen2ForProcessRewardModel`` and a math-shepherd-style
``LlamaForCausalLM`` served as vLLM 0.32 serves one: ``--convert classify`` with two LM-head rows
(``--hf-overrides``) and STEP pooling (``--pooler-config``), the same flags to both servers."""

from __future__ import annotations

import json

import pytest

from tests.compat.vllm_live.online import build, run_common, servers

pytestmark = pytest.mark.slow
NAME = "qwen2-prm"


@pytest.fixture(scope="module")
def pair(tmp_path_factory, compat):
    model = build("Qwen2ForProcessRewardModel", tmp_path_factory.mktemp("prm"))
    with servers(compat, model, NAME) as p:
        yield p


@pytest.mark.timeout(900)
def test_common_corpus(pair):
    run_common(pair)
    pair.done()


@pytest.mark.timeout(600)
def test_pooling_and_extensions(pair):
    pair.compare("/pooling no step tag", "POST", "/pooling", {"input": ["hi there", "a b"]})
    pair.compare(
        "/pooling step tags (vLLM reads id 151651)",
        "POST",
        "/pooling",
        {"input": "step one <extra_0> step two <extra_0>"},
        deliberate="prm-step-tag-from-tokenizer",
    )
    pair.compare(
        "/pooling step_tag_id field",
        "POST",
        "/pooling",
        {"input": "step one <extra_0>", "step_tag_id": 3},
        deliberate="prm-step-tag-from-tokenizer",
    )
    pair.compare("/classify not offered", "POST", "/classify", {"input": "step <extra_0>"})
    pair.compare(
        "/v1/embeddings with a step tag",
        "POST",
        "/v1/embeddings",
        {"input": "step one <extra_0>"},
        deliberate="embeddings-route-reward-models",
    )
    # Regression (issue 23): this was a 500 (IndexError on an empty STEP output), and the connection was reset.
    pair.compare(
        "/v1/embeddings without a step tag",
        "POST",
        "/v1/embeddings",
        {"input": "no tag here"},
        deliberate="embeddings-route-reward-models",
    )
    for task in ("embed", "token_embed"):
        pair.compare(
            f"/pooling task {task}",
            "POST",
            "/pooling",
            {"input": "a <extra_0>", "task": task},
            deliberate="embedding-api",
        )
    pair.compare("/pooling task classify", "POST", "/pooling", {"input": "a <extra_0>", "task": "classify"})
    pair.done()


#: Math-shepherd in vLLM 0.32 (see test_offline_process.py): ``--runner pooling`` with ``returned_token_ids`` makes
#: a ``LlamaForCausalLM`` an embedding model (no LM head). What 0.32 serves as STEP ``token_classify`` is the
#: LM-head conversion: ``--convert classify`` with ``classifier_from_token`` (" the", " is": math-shepherd's "+"
#: / "-") and ``no_post_processing`` (``score.weight = lm_head[[good, bad]]``), STEP pooling at the step tag,
#: and ``task: token_classify``: without it vLLM serves such a model's ``classify`` (the last token), its first
#: task by priority (``ModelConfig.get_pooling_task``), and refuses ``token_classify`` on ``/pooling``.
SHEPHERD_FLAGS = (
    "--convert",
    "classify",
    "--hf-overrides",
    json.dumps({"classifier_from_token": ["\u0120the", "\u0120is"], "method": "no_post_processing"}),
    "--pooler-config",
    json.dumps(
        {"task": "token_classify", "tok_pooling_type": "STEP", "step_tag_id": 3}
    ),  # <extra_0> in the tiny vocabulary
)


@pytest.fixture(scope="module")
def shepherd(tmp_path_factory, compat, pair):
    pair.close()  # one vLLM server at a time
    model = build("LlamaForCausalLM", tmp_path_factory.mktemp("shepherd"))
    with servers(compat, model, "llama-math-shepherd-step", *SHEPHERD_FLAGS) as p:
        yield p


@pytest.mark.timeout(900)
def test_math_shepherd_step(shepherd):
    text = "step one <extra_0> step two <extra_0>"
    for act in (None, True, False):
        body = (
            {"input": [text, "no tag"]} if act is None else {"input": [text, "no tag"], "use_activation": act}
        )
        shepherd.compare(f"/pooling STEP use_activation={act}", "POST", "/pooling", body)
    shepherd.compare("/pooling STEP token ids", "POST", "/pooling", {"input": [[5, 3, 6, 3]]})
    shepherd.compare(
        "/pooling STEP messages", "POST", "/pooling", {"messages": [{"role": "user", "content": text}]}
    )
    shepherd.compare(
        "/pooling task token_classify", "POST", "/pooling", {"input": text, "task": "token_classify"}
    )
    shepherd.compare(
        "/pooling task classify",
        "POST",
        "/pooling",
        {"input": text, "task": "classify"},
        deliberate="task-not-served",
    )
    shepherd.compare("/classify (vLLM: the route, no handler)", "POST", "/classify", {"input": text})
    shepherd.compare("/invocations", "POST", "/invocations", {"input": text})
    shepherd.compare("GET /v1/models", "GET", "/v1/models", deliberate="models-owned-by")
    shepherd.done()
