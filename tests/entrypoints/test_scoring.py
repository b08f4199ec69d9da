"""The Scoring API's shared rules (``rlhf_rewards.entrypoints.scoring``), as ``LLM.score`` and the server's
``/score`` and ``/rerank`` both apply them, and ``chat_template`` loading (``LLM`` and ``serve`` alike)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_rewards import LLM, PoolingParams
from rlhf_rewards.entrypoints.chat_template import load_chat_template
from rlhf_rewards.entrypoints.scoring import (
    check_token_limits,
    score_type,
    truncate_pairs,
    truncate_text_to_tokens,
    valid_inputs,
)

QUERY = "What is the capital of France? Please answer in one short sentence."
DOC = "The capital of France is Paris."


@pytest.fixture(scope="module")
def llm(qwen3_rm):
    return LLM(str(qwen3_rm), device="cpu")


def test_score_types_follow_the_task_and_one_label():
    assert score_type("classify", 1) == "cross-encoder"
    assert score_type("classify", 2) is None
    assert score_type("embed", 7) == "bi-encoder"
    assert score_type("token_embed", 7) == "late-interaction"
    assert score_type("token_classify", 1) is None


def test_pair_validation_is_vllms_in_vllms_order():
    assert valid_inputs("q", ["a", "b"]) == (["q"], ["a", "b"])
    with pytest.raises(ValueError, match="Input lengths must be either 1:1, 1:N or N:N"):
        valid_inputs(["a", "b"], [])  # the length rule comes first, as in vLLM
    with pytest.raises(ValueError, match="At least one text element must be given"):
        valid_inputs([], ["a"])
    with pytest.raises(ValueError, match="At least one text_pair element must be given"):
        valid_inputs("q", [])


def test_token_limits_and_truncation(llm):
    tok = llm.get_tokenizer()
    check_token_limits(0, 0, 8)  # 0: no cut, never checked
    with pytest.raises(ValueError, match=r"max_tokens_per_doc \(8\) must be less than max_model_len \(8\)"):
        check_token_limits(0, 8, 8)
    with pytest.raises(ValueError, match="max_tokens_per_query must be a non-negative integer"):
        check_token_limits(-1, 0, 8)
    assert truncate_text_to_tokens(DOC, tok, 0) == ""  # vLLM's function; its callers skip a 0 limit
    assert truncate_pairs([QUERY], [DOC], tok, 0, 0) == ([QUERY], [DOC])
    queries, docs = truncate_pairs([QUERY], [DOC], tok, 3, 2)
    assert len(tok(queries[0], add_special_tokens=False)["input_ids"]) <= 3 and queries[0] != QUERY
    assert len(tok(docs[0], add_special_tokens=False)["input_ids"]) <= 2 and docs[0] != DOC


def test_offline_score_cuts_queries_and_documents_as_the_routes_do(llm):
    tok = llm.get_tokenizer()
    cut_query, cut_doc = truncate_pairs([QUERY], [DOC], tok, 3, 2)
    limits = PoolingParams(extra_kwargs={"max_tokens_per_query": 3, "max_tokens_per_doc": 2})
    (limited,) = llm.score(QUERY, DOC, pooling_params=limits, use_tqdm=False)
    (reference,) = llm.score(cut_query[0], cut_doc[0], use_tqdm=False)
    assert limited.prompt_token_ids == reference.prompt_token_ids
    assert limited.outputs.score == reference.outputs.score
    too_long = PoolingParams(extra_kwargs={"max_tokens_per_query": llm.max_model_len})
    with pytest.raises(ValueError, match="max_tokens_per_query .* must be less than max_model_len"):
        llm.score(QUERY, DOC, pooling_params=too_long, use_tqdm=False)


def test_a_chat_template_is_a_file_or_the_template_never_a_missing_path(tmp_path, qwen3_rm):
    template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    path = tmp_path / "t.jinja"
    path.write_text(template)
    assert load_chat_template(path) == template  # a PathLike too
    assert load_chat_template(template) == template
    with pytest.raises(ValueError, match="chat_template .* looks like a file path"):
        load_chat_template(tmp_path / "missing.jinja")
    with pytest.raises(ValueError, match="--chat-template .* looks like a file path"):
        load_chat_template(str(tmp_path / "missing.jinja"), name="--chat-template")
    # LLM(chat_template=...) reads it the same way as `serve --chat-template`.
    assert LLM(str(qwen3_rm), device="cpu", chat_template=str(path)).chat_template == template
    with pytest.raises(ValueError, match="looks like a file path"):
        LLM(str(qwen3_rm), device="cpu", chat_template=str(Path(tmp_path) / "missing.jinja"))
