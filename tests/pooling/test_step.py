"""STEP pooling: the pooler keeps rows whose input token is the step tag, and pooling.step's rules (columns,
tag defaults, which tasks the user's fields reach, kind, the reward column) reproduce the model cards."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_rewards import LLM, PoolerConfig, PoolingParams
from rlhf_rewards.pooling import get_pooler, resolve_pooling
from rlhf_rewards.pooling.step import (
    check_columns,
    default_step_tag_id,
    detect_step_kind,
    select_columns,
    step_rows,
    step_score_column,
    step_tag_id_of,
    step_tag_text,
    user_config_for_task,
)
from tests.models.test_qwen2_reward import PRM_TEXTS, reference_token_logits
from tests.support.references import make_step_rewards

STEP_TAG = "<extra_0>"


def test_step_positions_follow_input_tokens():
    ids = torch.tensor([5, 9, 3, 9, 9, 1])
    r = resolve_pooling("token_classify", PoolingParams(), PoolerConfig(pooling_type="STEP", step_tag_id=9))
    assert get_pooler("STEP").positions(ids, r).tolist() == [1, 3, 4]
    r_all = resolve_pooling("token_classify", PoolingParams(), PoolerConfig(pooling_type="STEP"))
    assert get_pooler("STEP").positions(ids, r_all).tolist() == list(range(6))
    none = resolve_pooling("token_classify", PoolingParams(step_tag_id=42), PoolerConfig(pooling_type="STEP"))
    assert get_pooler("STEP").positions(ids, none).numel() == 0


def test_step_rows_are_the_positions_of_the_tag():
    ids = torch.tensor([5, 9, 3, 9, 9, 1])
    assert step_rows(ids, 9).tolist() == torch.nonzero(ids == 9).flatten().tolist() == [1, 3, 4]
    assert step_rows(ids, None).tolist() == list(range(6))
    assert step_rows(ids, 42).numel() == 0 and step_rows(ids, 42).dtype == torch.long


def test_columns_are_selected_and_checked():
    logits = torch.arange(12.0).reshape(3, 4)
    assert torch.equal(select_columns(logits, (3, 0)), logits[:, [3, 0]])
    assert select_columns(logits, None) is logits
    with pytest.raises(
        ValueError, match=r"returned_token_ids \[4, 7\] are out of range: the head has 4 output columns"
    ):
        select_columns(logits, (1, 4, 7))
    with pytest.raises(ValueError, match="the vocabulary has 4 rows"):
        check_columns([5], 4, "the vocabulary has {width} rows")


def test_step_score_column_rule():
    assert step_score_column(2, returned_token_ids=[7, 8]) == 0  # math-shepherd: [good, bad]
    assert step_score_column(2) == 1  # Qwen2.5-Math-PRM: label 1 is "correct"
    assert step_score_column(1) == 0
    assert step_score_column(5, returned_token_ids=[1, 2, 3, 4, 5]) == 0
    assert (
        step_score_column(3, override=2) == 2
        and step_score_column(2, returned_token_ids=[1, 2], override=1) == 1
    )
    with pytest.raises(ValueError, match="has 3 columns and no returned_token_ids; pass step_score_column="):
        step_score_column(3)
    with pytest.raises(ValueError, match="step_score_column=2 but the STEP output has 2 columns"):
        step_score_column(2, override=2)


def test_kind_detection():
    step = PoolerConfig(pooling_type="STEP", step_tag_id=9)
    assert detect_step_kind("token", step) == ("process", 9)
    assert detect_step_kind("process", PoolerConfig(pooling_type="ALL")) == (
        "process",
        None,
    )  # no tag: not readable
    assert detect_step_kind("outcome", None) == ("outcome", None)
    assert detect_step_kind("process", PoolerConfig(pooling_type="STEP")) == ("process", None)


def test_user_fields_reach_the_right_tasks():
    # A PRM's defaults (Qwen2.5-Math-PRM-like): STEP on token_classify, sequence pooling for embed.
    defaults = {
        "token_classify": PoolerConfig(pooling_type="STEP", use_activation=True),
        "embed": PoolerConfig(pooling_type="LAST"),
        "token_embed": PoolerConfig(pooling_type="ALL"),
    }
    tag_only = PoolerConfig(step_tag_id=7, use_activation=False)
    merged = {t: user_config_for_task(tag_only, t, defaults).merged_over(d) for t, d in defaults.items()}
    assert (merged["token_classify"].pooling_type, merged["token_classify"].step_tag_id) == ("STEP", 7)
    assert (merged["token_embed"].pooling_type, merged["token_embed"].step_tag_id) == ("ALL", None)
    assert all(c.use_activation is False for c in merged.values())  # fields for every task still apply
    explicit = PoolerConfig(pooling_type="STEP", step_tag_id=7)
    merged = {t: user_config_for_task(explicit, t, defaults).merged_over(d) for t, d in defaults.items()}
    assert [merged[t].pooling_type for t in ("token_classify", "embed", "token_embed")] == [
        "STEP",
        "LAST",
        "STEP",
    ]
    # A model without a STEP default (a causal LM): a bare step_tag_id goes to the token tasks, as vLLM.
    lm = {"token_classify": PoolerConfig(pooling_type="ALL"), "embed": PoolerConfig(pooling_type="LAST")}
    assert user_config_for_task(tag_only, "token_classify", lm) is tag_only


def test_step_tag_defaults_use_the_models_tokenizer(checkpoint_factory):
    path = checkpoint_factory("Qwen2ForProcessRewardModel", seed=22)
    tok = AutoTokenizer.from_pretrained(str(path))
    tag_id = tok.encode(STEP_TAG)[0]
    assert step_tag_id_of(tok, STEP_TAG, "Qwen2ForProcessRewardModel") == tag_id
    assert step_tag_text(tok, tag_id) == STEP_TAG and step_tag_text(None, tag_id) is None
    with pytest.raises(ValueError, match=r"MyPRM marks steps with the token '<no-such-tag>'.*'step_tag_id'"):
        step_tag_id_of(tok, "<no-such-tag>", "MyPRM")
    step = PoolerConfig(pooling_type="STEP")
    assert default_step_tag_id(step, STEP_TAG, tok, "prm") == tag_id
    assert default_step_tag_id(PoolerConfig(pooling_type="STEP", step_tag_id=3), STEP_TAG, tok, "prm") == 3
    # Looked up only when needed: a task that is not STEP-pooled never consults the tokenizer.
    assert default_step_tag_id(PoolerConfig(pooling_type="ALL"), "<no-such-tag>", tok, "prm") is None
    assert default_step_tag_id(step, None, tok, "prm") is None
    # The engine resolves the same way.
    llm = LLM(str(path), device="cpu")
    info = llm.model_info()
    assert (info.kind, info.step_tag_id, info.step_tag) == ("process", tag_id, STEP_TAG)


def test_qwen_prm_model_card_from_the_step_functions(checkpoint_factory):
    """Rows at the tag, softmax, the default column: Qwen2.5-Math-PRM's ``make_step_rewards``."""
    path = checkpoint_factory("Qwen2ForProcessRewardModel", seed=22)
    tag_id = AutoTokenizer.from_pretrained(str(path)).encode(STEP_TAG)[0]
    reference = reference_token_logits(path)
    for text in PRM_TEXTS:
        ids, logits = reference(text)
        (card,) = make_step_rewards(logits.unsqueeze(0), torch.tensor([ids]) == tag_id)
        rows = logits.index_select(0, step_rows(torch.tensor(ids), tag_id)).softmax(-1)
        assert rows[:, step_score_column(rows.shape[1])].tolist() == pytest.approx(card, abs=1e-6)


def test_math_shepherd_model_card_from_the_step_functions(checkpoint_factory):
    """Rows at the tag, the [good, bad] columns, softmax, the default column: the math-shepherd card."""
    path = checkpoint_factory("LlamaForCausalLM", seed=51)
    tok = AutoTokenizer.from_pretrained(str(path))
    good, bad = tok.convert_tokens_to_ids(["+", "-"])
    tag_id = tok.convert_tokens_to_ids(STEP_TAG)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    text = f"Step 1: 3 * 4 = 12 {STEP_TAG} Step 2: 12 - 5 = 7 {STEP_TAG} The answer is 7 {STEP_TAG}"
    input_id = torch.tensor([tok.encode(text)])
    with torch.no_grad():
        full = model(input_id).logits
    card = full[:, :, [good, bad]].softmax(dim=-1)[:, :, 0][input_id == tag_id]  # the card, line by line
    rows = select_columns(full[0].index_select(0, step_rows(input_id[0], tag_id)), (good, bad)).softmax(-1)
    col = step_score_column(rows.shape[1], returned_token_ids=[good, bad])
    assert rows.shape == (3, 2)
    torch.testing.assert_close(rows[:, col], card, atol=1e-6, rtol=0)
