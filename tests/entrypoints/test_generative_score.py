"""``LLM.generative_score`` against an independent reference: transformers' ``AutoModelForCausalLM`` logits at
the last position, softmax over the label ids (or over the vocabulary), per item.

Also: the prompt rules (query with special tokens, items without, ``item_first``, cut to
``max_model_len - 1``), vLLM's errors, prefix sharing (the query runs once), LoRA, and the memory rule: no
``[tokens, vocab]`` logits tensor is ever built (the ``lm_head`` module never runs; the head multiplies one
row per item).
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_rewards import LLM
from rlhf_rewards.errors import RequestError
from rlhf_rewards.models.causal_lm import LMHeadPoolingModel

CAUSAL = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64}
QUERY = (
    "Rubric: an answer is correct when it gives the right number and nothing else. Question: what is 2 + 2? "
)
ITEMS = ["The answer is 4.", "I think it is five, or maybe six", "4", "no idea at all, sorry"]
LABELS = [17, 42, 99]


@pytest.fixture(scope="module", params=["LlamaForCausalLM", "Qwen3ForCausalLM"])
def model_path(request, checkpoint_factory):
    return checkpoint_factory(request.param, seed=5, **CAUSAL)


@pytest.fixture(scope="module")
def llm(model_path):
    return LLM(str(model_path), device="cpu", dtype="float32", max_model_len=96)


@pytest.fixture(scope="module")
def reference(model_path):
    model = AutoModelForCausalLM.from_pretrained(str(model_path), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(model_path))

    @torch.no_grad()
    def probs(ids: list[int], labels: list[int], apply_softmax: bool) -> list[float]:
        logits = model(torch.tensor([ids])).logits[0, -1].double()
        p = torch.softmax(logits[labels], -1) if apply_softmax else torch.softmax(logits, -1)[labels]
        return p.tolist()

    return tok, probs


@pytest.mark.parametrize("apply_softmax", [True, False])
@pytest.mark.parametrize("item_first", [False, True])
def test_text_matches_transformers(llm, reference, apply_softmax, item_first):
    tok, probs = reference
    outs = llm.generative_score(QUERY, ITEMS, LABELS, apply_softmax=apply_softmax, item_first=item_first)
    assert [o.index for o in outs] == list(range(len(ITEMS)))
    q = tok.encode(QUERY)  # special tokens on the query only
    for o, item in zip(outs, ITEMS, strict=True):
        i = tok.encode(item, add_special_tokens=False)
        ids = (i + q) if item_first else (q + i)
        assert o.prompt_token_ids == ids
        expected = probs(ids, LABELS, apply_softmax)
        assert o.label_probs == pytest.approx(expected, abs=1e-5)
        assert o.score == pytest.approx(expected[0], abs=1e-5)
        assert o.error is None


def test_token_ids_truncation_and_no_special_tokens(llm, reference):
    tok, probs = reference
    query = tok.encode(QUERY * 3, add_special_tokens=False)  # 3x the query: over max_model_len - 1 with items
    items = [tok.encode(t, add_special_tokens=False) for t in ITEMS]
    outs = llm.generative_score(query, items, [LABELS[1]], apply_softmax=False)
    for o, item in zip(outs, items, strict=True):
        ids = (query + item)[: llm.max_model_len - 1]  # vLLM keeps the first max_model_len - 1 tokens
        assert o.prompt_token_ids == ids
        assert o.score == pytest.approx(probs(ids, [LABELS[1]], False)[0], abs=1e-6)
    text = llm.generative_score(QUERY, ITEMS[:1], LABELS, add_special_tokens=False)[0]
    assert text.prompt_token_ids == tok.encode(QUERY, add_special_tokens=False) + tok.encode(
        ITEMS[0], add_special_tokens=False
    )


def test_one_label_softmax_is_one_and_repeats(llm):
    assert llm.generative_score(QUERY, ITEMS[:2], [5])[0].score == pytest.approx(1.0)
    o = llm.generative_score(QUERY, ITEMS[:1], [5, 6, 5])[0]  # a repeated label counts once (vLLM's dict)
    assert o.label_probs[0] == o.label_probs[2]
    assert o.label_probs[0] + o.label_probs[1] == pytest.approx(1.0)


def test_errors_are_vllms(llm):
    vocab = llm.model.config.vocab_size
    with pytest.raises(RequestError, match=r"^items must contain at least one item\.$"):
        llm.generative_score(QUERY, [], LABELS)
    with pytest.raises(RequestError, match=r"^label_token_ids must contain at least one token ID\.$"):
        llm.generative_score(QUERY, ITEMS, [])
    with pytest.raises(
        RequestError, match=rf"^label_token_id {vocab} is out of vocabulary range \[0, {vocab}\)\. "
    ):
        llm.generative_score(QUERY, ITEMS, [1, vocab])
    with pytest.raises(RequestError, match="all texts or all token-id lists"):
        llm.generative_score(QUERY, ["a", [1, 2]], LABELS)


def test_query_runs_once_and_no_vocab_matrix(llm, monkeypatch):
    """Prefix sharing computes the query once; the head sees one row per item and never the lm_head module."""
    widths: list[tuple[int, int]] = []
    original = LMHeadPoolingModel.head_logits

    def spy(self, states, columns=None):
        out = original(self, states, columns)
        widths.append(tuple(out.shape))
        return out

    calls = []
    handle = llm.model.head.register_forward_hook(lambda *a: calls.append(1))
    monkeypatch.setattr(LMHeadPoolingModel, "head_logits", spy)
    try:
        for soft in (True, False):
            widths.clear()
            outs = llm.generative_score(QUERY, ITEMS, LABELS, apply_softmax=soft)
            stats = llm.runner.last_stats
            query_len = len(outs[0].prompt_token_ids) - len(
                llm.get_tokenizer().encode(ITEMS[0], add_special_tokens=False)
            )
            # Every item runs its own tokens; the shared query runs once, not len(ITEMS) times.
            assert stats.tokens_run <= stats.tokens_requested - (len(ITEMS) - 1) * (query_len - 1)
            assert stats.last_layer_rows == len(ITEMS)
            vocab = llm.model.config.vocab_size
            assert widths == [
                (len(ITEMS), len(LABELS) if soft else vocab)
            ]  # one row per item, never per token
    finally:
        handle.remove()
    assert not calls  # the lm_head module (a [tokens, vocab] product) never ran


def test_lora_matches_merged_model(tmp_path, model_path):
    from rlhf_rewards.lora.request import LoRARequest
    from tests.support.lora import build_adapter, build_merged

    adapter = build_adapter(model_path, tmp_path / "adapter", target_modules=["q_proj", "v_proj"], seed=1)
    merged = build_merged(model_path, adapter, tmp_path / "merged")
    llm = LLM(str(model_path), device="cpu", enable_lora=True)
    ref = LLM(str(merged), device="cpu")
    lora = LoRARequest("judge", 1, str(adapter))
    ours = [o.score for o in llm.generative_score(QUERY, ITEMS, LABELS, lora_request=lora)]
    theirs = [o.score for o in ref.generative_score(QUERY, ITEMS, LABELS)]
    base = [o.score for o in llm.generative_score(QUERY, ITEMS, LABELS)]
    assert ours == pytest.approx(theirs, abs=1e-5)
    assert max(abs(a - b) for a, b in zip(ours, base, strict=True)) > 1e-4


def test_model_without_lm_head_is_refused(checkpoint_factory):
    rm = LLM(str(checkpoint_factory("Qwen3ForSequenceClassification")), device="cpu")
    with pytest.raises(RequestError, match="no LM head"):
        rm.generative_score("q", ["a"], [1])


def test_cache_salt_keeps_label_reads_apart(llm):
    """vLLM's ``cache_salt`` isolates tenants: a salted read never reuses another salt's cached prefix."""
    from rlhf_rewards.entrypoints.generative_scoring import run_label_reads

    cache = llm.runner.prefix_cache
    if cache is None:
        pytest.skip("this LLM keeps no cross-call prefix cache")
    ids = llm.tokenizer(QUERY + ITEMS[0])["input_ids"]
    llm.reset_prefix_cache()

    def read(salt):
        before = cache.stats()["hit_tokens"]
        ((probs, error),) = run_label_reads(llm, [ids], [LABELS], [True], [None], cache_salt=[salt])
        assert error is None
        return probs, cache.stats()["hit_tokens"] - before

    first, hits = read("tenant-a")
    assert hits == 0
    other, hits = read("tenant-b")
    assert hits == 0, "a read under another salt reused tenant-a's cached prefix"
    again, hits = read("tenant-a")
    assert hits > 0, "the same salt should reuse its own cached prefix"
    torch.testing.assert_close(again, first, atol=1e-6, rtol=0)
    torch.testing.assert_close(other, first, atol=1e-6, rtol=0)
