"""LLM.encode against an independent reference: plain transformers forwards, one unpadded text at a time."""

from __future__ import annotations

import contextlib
import io
import json

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from rlhf_rewards import LLM, PoolerConfig, PoolingParams, PoolingRequestOutput
from tests.conftest import MIXED_TEXTS

ATOL = 1e-5


@pytest.fixture(scope="module")
def rm3(checkpoint_factory):
    """A 3-label classifier, so softmax and multi-column outputs are exercised."""
    return checkpoint_factory("Qwen3ForSequenceClassification", num_labels=3, seed=3)


@pytest.fixture(scope="module")
def reference(rm3):
    model = AutoModelForSequenceClassification.from_pretrained(str(rm3), dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(str(rm3))

    @torch.no_grad()
    def forward(text: str) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        ids = tok(text)["input_ids"]
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        return ids, hidden, model.score(hidden)

    return forward


@pytest.fixture(scope="module")
def llm(rm3):
    # A small token budget forces several micro-batches of mixed lengths within one call (the cross-call prefix
    # cache is off: texts repeated between tests would otherwise run as a few suffix tokens in one forward).
    return LLM(
        str(rm3), runner="pooling", device="cpu", max_num_batched_tokens=96, enable_prefix_caching=False
    )


def _data(outputs: list[PoolingRequestOutput]) -> list[torch.Tensor]:
    return [o.outputs.data for o in outputs]


def test_classify_last_matches_reference_logits_and_softmax(llm, reference):
    raw = _data(llm.encode(MIXED_TEXTS, PoolingParams(use_activation=False), pooling_task="classify"))
    act = _data(llm.encode(MIXED_TEXTS, pooling_task="classify"))
    for text, r, a in zip(MIXED_TEXTS, raw, act, strict=True):
        _, _, logits = reference(text)
        assert r.shape == (3,)
        torch.testing.assert_close(r, logits[-1], atol=ATOL, rtol=0)
        torch.testing.assert_close(a, torch.softmax(logits[-1], -1), atol=ATOL, rtol=0)


def test_token_classify_all_matches_every_token(llm, reference):
    outs = _data(llm.encode(MIXED_TEXTS, PoolingParams(use_activation=False), pooling_task="token_classify"))
    for text, out in zip(MIXED_TEXTS, outs, strict=True):
        ids, _, logits = reference(text)
        assert out.shape == (len(ids), 3)
        torch.testing.assert_close(out, logits, atol=ATOL, rtol=0)


def test_embed_and_token_embed(llm, reference):
    emb = _data(llm.encode(MIXED_TEXTS, pooling_task="embed"))
    tok_emb = _data(llm.encode(MIXED_TEXTS, pooling_task="token_embed"))
    small = _data(llm.encode(MIXED_TEXTS, PoolingParams(dimensions=8, normalize=False), pooling_task="embed"))
    for text, e, t, s in zip(MIXED_TEXTS, emb, tok_emb, small, strict=True):
        _, hidden, _ = reference(text)
        torch.testing.assert_close(e, F.normalize(hidden[-1], dim=-1), atol=ATOL, rtol=0)
        torch.testing.assert_close(
            t, F.normalize(hidden, dim=-1), atol=ATOL, rtol=0
        )  # vLLM: rows L2-normalized
        torch.testing.assert_close(s, hidden[-1, :8], atol=ATOL, rtol=0)
        assert e.shape == (64,) and abs(float(e.norm()) - 1.0) < 1e-5


@pytest.mark.parametrize("pooling_type", ["MEAN", "CLS"])
def test_mean_and_cls_pooling(rm3, reference, pooling_type):
    llm = LLM(str(rm3), device="cpu", pooler_config={"pooling_type": pooling_type})
    raw = _data(llm.encode(MIXED_TEXTS, PoolingParams(use_activation=False), pooling_task="classify"))
    emb = _data(llm.encode(MIXED_TEXTS, PoolingParams(normalize=False), pooling_task="embed"))
    for text, r, e in zip(MIXED_TEXTS, raw, emb, strict=True):
        _, hidden, _ = reference(text)
        pooled = hidden.mean(0) if pooling_type == "MEAN" else hidden[0]
        torch.testing.assert_close(e, pooled, atol=ATOL, rtol=0)
        torch.testing.assert_close(r, llm.model.head(pooled), atol=ATOL, rtol=0)


def test_step_pooling_on_a_classifier_keeps_step_tag_rows(rm3, reference):
    tok = AutoTokenizer.from_pretrained(str(rm3))
    tag = tok.convert_tokens_to_ids("<extra_0>")
    texts = [
        "Step one<extra_0>Step two<extra_0>",
        "a<extra_0>",
        "no tags here",
        "<extra_0>x<extra_0>y<extra_0>",
    ]
    llm = LLM(str(rm3), device="cpu", pooler_config=PoolerConfig(pooling_type="STEP", step_tag_id=tag))
    outs = _data(llm.encode(texts, pooling_task="token_classify"))
    picked = _data(llm.encode(texts, PoolingParams(returned_token_ids=[2, 0]), pooling_task="token_classify"))
    for text, out, pick in zip(texts, outs, picked, strict=True):
        ids, _, logits = reference(text)
        rows = logits[torch.tensor(ids) == tag]
        assert out.shape == (rows.shape[0], 3)
        torch.testing.assert_close(out, torch.softmax(rows, -1), atol=ATOL, rtol=0)
        torch.testing.assert_close(pick, torch.softmax(rows[:, [2, 0]], -1), atol=ATOL, rtol=0)


def test_math_shepherd_style_lm_head_step_pooling(checkpoint_factory):
    path = checkpoint_factory("LlamaForCausalLM", seed=5)
    tok = AutoTokenizer.from_pretrained(str(path))
    tag, good, bad = (tok.convert_tokens_to_ids(t) for t in ("<extra_0>", "+", "-"))
    cfg = {"pooling_type": "STEP", "step_tag_id": tag, "returned_token_ids": [good, bad]}
    llm = LLM(str(path), device="cpu", pooler_config=cfg)
    ref = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    texts = ["Solve 3 * 4 = 12<extra_0>12 - 5 = 7<extra_0>", "One step only<extra_0>"]
    for text, out in zip(texts, llm.encode(texts, pooling_task="token_classify"), strict=True):
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            logits = ref(input_ids=torch.tensor([ids])).logits[0]
        expected = torch.softmax(logits[:, [good, bad]], -1)[torch.tensor(ids) == tag]
        torch.testing.assert_close(out.outputs.data, expected, atol=ATOL, rtol=0)
        assert out.outputs.data[:, 0].tolist() == pytest.approx(expected[:, 0].tolist(), abs=ATOL)


def test_padding_and_batching_never_change_a_score(rm3):
    batched = LLM(str(rm3), device="cpu", max_num_batched_tokens=100_000)
    alone = [batched.encode(t, pooling_task="token_classify")[0].outputs.data for t in MIXED_TEXTS]
    together = _data(batched.encode(MIXED_TEXTS, pooling_task="token_classify"))
    for a, b in zip(alone, together, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_prompt_forms_order_and_output_fields(llm):
    ids = llm.get_tokenizer()("What is 2 + 2?")["input_ids"]
    forms = ["What is 2 + 2?", {"prompt": "What is 2 + 2?"}, {"prompt_token_ids": ids}]
    outs = llm.encode(forms, pooling_task="classify")
    assert [o.prompt_token_ids for o in outs] == [ids, ids, ids]
    torch.testing.assert_close(outs[0].outputs.data, outs[2].outputs.data, atol=0, rtol=0)
    assert len({o.request_id for o in outs}) == 3 and all(o.finished for o in outs)
    for o in outs:
        assert o.outputs.data.dtype == torch.float32 and o.outputs.data.device.type == "cpu"
    single = llm.encode("What is 2 + 2?", pooling_task="classify")
    assert len(single) == 1 and single[0].prompt_token_ids == ids
    # Order is input order even though the scheduler sorts by length.
    outs = llm.encode(MIXED_TEXTS, pooling_task="embed")
    assert [len(o.prompt_token_ids) for o in outs] == [
        len(llm.get_tokenizer()(t)["input_ids"]) for t in MIXED_TEXTS
    ]


def test_per_prompt_pooling_params(llm, reference):
    params = [PoolingParams(use_activation=False), PoolingParams(use_activation=True)]
    raw, act = _data(llm.encode(MIXED_TEXTS[:2], params, pooling_task="classify"))
    torch.testing.assert_close(raw, reference(MIXED_TEXTS[0])[2][-1], atol=ATOL, rtol=0)
    torch.testing.assert_close(act, torch.softmax(reference(MIXED_TEXTS[1])[2][-1], -1), atol=ATOL, rtol=0)


def test_truncation_keeps_the_first_tokens_as_vllm(rm3, reference):
    # vLLM 0.32 (checked in tests/compat/vllm_live): the FIRST k tokens, unless truncation_side="left".
    llm = LLM(str(rm3), device="cpu", max_model_len=16)
    text = MIXED_TEXTS[3]
    ids = llm.get_tokenizer()(text)["input_ids"]
    assert len(ids) > 16
    with pytest.raises(ValueError, match=r"max_model_len=16.*truncate_prompt_tokens"):
        llm.encode(text, pooling_task="classify")
    out = llm.encode(text, pooling_task="token_embed", truncate_prompt_tokens=5)[0]
    assert out.prompt_token_ids == ids[:5]
    out = llm.encode(text, pooling_task="token_embed", tokenization_kwargs={"truncate_prompt_tokens": 5})[0]
    assert out.prompt_token_ids == ids[:5]
    out = llm.encode(
        text,
        pooling_task="token_embed",
        tokenization_kwargs={"truncate_prompt_tokens": 5, "truncation_side": "left"},
    )[0]
    assert out.prompt_token_ids == ids[-5:]
    out = llm.encode(text, PoolingParams(truncate_prompt_tokens=-1), pooling_task="classify")[0]
    assert out.prompt_token_ids == ids[:16]


def test_truncation_without_side_is_the_tokenizers(rm3, tmp_path):
    # vLLM 0.32 cuts a text prompt inside the tokenizer when no truncation_side is given (truncation=True,
    # max_length=k: a post-processor's BOS and EOS are kept), and slices the ids when a side is given; its pooling
    # runner loads every tokenizer with truncation_side="right" (checked in tests/compat/vllm_live): here BOS, 3
    # tokens, EOS.
    import shutil

    from tests.compat.vllm_live.offline import add_bos_eos

    path = add_bos_eos(shutil.copytree(rm3, tmp_path / "rm"))
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "truncation_side": "left"}))
    llm = LLM(str(path), device="cpu", max_model_len=16)
    text = MIXED_TEXTS[3]
    ids = llm.get_tokenizer()(text)["input_ids"]
    assert (
        llm.get_tokenizer().truncation_side == "left"
    )  # as its tokenizer_config says; vLLM cuts on the right
    first = ids[:4] + ids[-1:]
    for kwargs in ({"truncate_prompt_tokens": 5}, {"truncation": True, "max_length": 5}):
        out = llm.encode(text, pooling_task="classify", tokenization_kwargs=kwargs)[0]
        assert out.prompt_token_ids == first
    assert llm.encode(text, pooling_task="classify", truncate_prompt_tokens=5)[0].prompt_token_ids == first
    out = llm.encode(
        text,
        pooling_task="classify",
        tokenization_kwargs={"truncate_prompt_tokens": 5, "truncation_side": "right"},
    )[0]
    assert out.prompt_token_ids == ids[:5]
    out = llm.encode(
        text,
        pooling_task="classify",
        tokenization_kwargs={"truncate_prompt_tokens": 5, "truncation_side": "left"},
    )[0]
    assert out.prompt_token_ids == ids[-5:]
    out = llm.encode({"prompt_token_ids": ids}, pooling_task="classify", truncate_prompt_tokens=5)[0]
    assert out.prompt_token_ids == ids[:5]  # token ids are sliced: no tokenizer call


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda m: m.encode("hi"), "classify.*token_classify"),
        (lambda m: m.encode("hi", pooling_task="reward"), "pooling_task='reward'"),
        (lambda m: m.encode([], pooling_task="classify"), "empty"),
        (lambda m: m.encode("", pooling_task="classify"), r"prompts\[0\] is an empty string"),
        (lambda m: m.encode(["ok", ""], pooling_task="classify"), r"prompts\[1\]"),
        (lambda m: m.encode({"prompt_token_ids": []}, pooling_task="classify"), "empty"),
        (lambda m: m.encode({"prompt_token_ids": [1, 10**6]}, pooling_task="classify"), "vocabulary range"),
        (lambda m: m.encode({"prompt_token_ids": [1, -3]}, pooling_task="classify"), "vocabulary range"),
        (lambda m: m.encode([1, 2, 3], pooling_task="classify"), "prompt_token_ids"),
        (lambda m: m.encode(3.5, pooling_task="classify"), "prompts must be"),
        (lambda m: m.encode("hi", PoolingParams(step_tag_id=3), pooling_task="token_classify"), "STEP"),
        (lambda m: m.encode("hi", PoolingParams(dimensions=3), pooling_task="classify"), "dimensions"),
        (lambda m: m.encode(["a", "b"], [PoolingParams()], pooling_task="classify"), "one per prompt"),
        (
            lambda m: m.encode("hi", pooling_task="classify", truncate_prompt_tokens=0),
            "truncate_prompt_tokens",
        ),
    ],
)
def test_bad_input_names_the_field(llm, call, match):
    with pytest.raises(ValueError, match=match):
        call(llm)
    assert llm.encode("still works", pooling_task="classify")[0].outputs.data.shape == (3,)


def test_task_the_model_cannot_do_lists_supported(checkpoint_factory):
    llm = LLM(str(checkpoint_factory("LlamaForCausalLM", seed=5)), device="cpu")
    with pytest.raises(ValueError, match=r"not supported by this model.*token_classify"):
        llm.encode("hi", pooling_task="classify")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dtype": "float8"}, "dtype='float8'"),
        ({"device": "gpu7"}, "device='gpu7'"),
        ({"runner": "generate"}, "runner='generate'"),
        ({"max_model_len": 0}, "max_model_len"),
        ({"max_model_len": 10**6}, "max_position_embeddings"),
        ({"pooler_config": {"pooling_type": "LAST", "step_tag_id": 1}}, "step_tag_id"),
    ],
)
def test_bad_constructor_arguments(qwen3_rm, kwargs, match):
    kwargs.setdefault("device", "cpu")
    with pytest.raises(ValueError, match=match):
        LLM(str(qwen3_rm), **kwargs)


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        LLM(str(tmp_path / "nope"), device="cpu")


def test_lora_request_without_enable_lora(llm):
    from rlhf_rewards import LoRARequest

    with pytest.raises(ValueError, match="enable_lora"):
        llm.encode("hi", pooling_task="classify", lora_request=LoRARequest("a", 1, "/nowhere"))


def test_progress_bar_on_long_calls_and_quiet_when_off(llm):
    seen: list[int] = []

    class Bar:
        def __init__(self, total, **kw):
            self.total = total

        def update(self, n):
            seen.append(n)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return None

    texts = MIXED_TEXTS * 4
    llm.encode(texts, pooling_task="classify", use_tqdm=Bar)
    assert sum(seen) == len(texts) and len(seen) > 1
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        llm.encode(texts, pooling_task="classify", use_tqdm=False)
    assert err.getvalue() == ""
    with contextlib.redirect_stderr(err):
        llm.encode(texts, pooling_task="classify", use_tqdm=True)
    assert "Scoring prompts" in err.getvalue()


def test_bf16_backbone_keeps_fp32_head(rm3, reference):
    llm = LLM(str(rm3), device="cpu", dtype="bfloat16")
    assert llm.model.backbone.get_input_embeddings().weight.dtype == torch.bfloat16
    assert llm.model.head.weight.dtype == torch.float32
    out = llm.encode(MIXED_TEXTS, PoolingParams(use_activation=False), pooling_task="classify")
    for text, o in zip(MIXED_TEXTS, out, strict=True):
        assert o.outputs.data.dtype == torch.float32
        # bf16 backbone: scores within 0.1 of fp32 on these random tiny models.
        assert torch.allclose(o.outputs.data, reference(text)[2][-1], atol=0.1)


def test_vllm_classify_and_embed_helpers(llm, reference):
    (c,) = llm.classify(MIXED_TEXTS[0])
    assert c.outputs.num_classes == 3
    assert c.outputs.probs == pytest.approx(
        torch.softmax(reference(MIXED_TEXTS[0])[2][-1], -1).tolist(), abs=ATOL
    )
    (e,) = llm.embed(MIXED_TEXTS[1])
    assert e.outputs.embedding == pytest.approx(
        F.normalize(reference(MIXED_TEXTS[1])[1][-1], dim=-1).tolist(), abs=ATOL
    )


def test_non_finite_scores_are_an_item_error_not_a_number(rm3):
    llm = LLM(str(rm3), device="cpu")
    ok = llm.encode(MIXED_TEXTS[:2], pooling_task="classify")
    assert all(o.error is None for o in ok)
    with torch.no_grad():
        llm.model.head.weight[0, 0] = float("nan")
    bad = llm.encode(MIXED_TEXTS[:2], pooling_task="classify")
    assert all(o.error is not None and "NaN" in o.error for o in bad)
