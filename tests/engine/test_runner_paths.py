"""Every execution path of the ModelRunner against an independent reference: plain transformers, one
unpadded sequence at a time, fp32, to 1e-5.

Paths: padded batches; packed without prefix sharing; packed with prefix sharing; the direct decoder loop
with and without last-layer pruning; the generic ``hidden_states`` path (taken when a forward-kwargs hook
passes per-row arguments); trees cut across forwards by a small token budget; the automatic fall-back to
padding. Inputs mix lengths, GRPO-style groups, duplicates, prompts that are prefixes of each other, a
single-token prompt and nested shared prefixes, with every pooler (LAST, CLS, MEAN, ALL, STEP) in one call.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import transformers

from rlhf_rewards.engine.request import EngineRequest
from rlhf_rewards.engine.runner import ModelRunner
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.models.base import PoolingModel
from rlhf_rewards.models.loader import load_pooling_model
from rlhf_rewards.pooling import PoolerConfig, PoolingParams, resolve_pooling

ATOL = 1e-5
CPU = torch.device("cpu")
STEP_ID = 9


def _sequences(seed: int = 0, vocab: int = 400) -> list[list[int]]:
    rng = random.Random(seed)
    tok = lambda: rng.randrange(10, vocab)  # noqa: E731
    seqs: list[list[int]] = []
    # GRPO-style groups: a prompt and completions of mixed lengths, with step tags sprinkled in.
    for _ in range(3):
        prompt = [tok() for _ in range(rng.randint(20, 40))] + [STEP_ID]
        for _ in range(4):
            seqs.append(prompt + [rng.choice([tok(), tok(), STEP_ID]) for _ in range(rng.randint(1, 25))])
        seqs.append(list(prompt))  # the prompt alone: a prefix of its group's completions
    seqs.append(list(seqs[0]))  # duplicate
    seqs.append(list(seqs[1]))  # duplicate
    seqs.append([tok()])  # single-token prompt
    seqs.append([STEP_ID])  # single token that is a step tag
    seqs.append(seqs[0][:7])  # a short prefix of a group's prompt
    # Nested sharing: a shared stem, two shared branches, leaves below each.
    stem = [tok() for _ in range(15)]
    for _ in range(2):
        branch = stem + [tok() for _ in range(12)]
        seqs += [branch + [tok() for _ in range(rng.randint(1, 8))] for _ in range(2)]
    # Unrelated texts of mixed lengths.
    seqs += [[tok() for _ in range(n)] for n in (2, 3, 17, 60, 90)]
    return seqs


POOLINGS: list[tuple[str, dict[str, Any]]] = [
    ("classify", {"pooling_type": "LAST"}),
    ("classify", {"pooling_type": "CLS"}),
    ("classify", {"pooling_type": "MEAN"}),
    ("token_classify", {"pooling_type": "ALL"}),
    ("token_classify", {"pooling_type": "STEP", "step_tag_id": STEP_ID}),
    ("embed", {"pooling_type": "LAST"}),
    ("token_embed", {"pooling_type": "ALL"}),
]


def _requests(seqs, poolings, use_activation: bool = False, lora=None) -> list[EngineRequest]:
    out = []
    for i, ids in enumerate(seqs):
        task, cfg = poolings[i % len(poolings)]
        params = (
            PoolingParams(use_activation=use_activation)
            if task in ("classify", "token_classify")
            else PoolingParams()
        )
        pooling = resolve_pooling(task, params, PoolerConfig(**cfg))
        out.append(
            EngineRequest(
                index=i,
                request_id=str(i),
                token_ids=list(ids),
                pooling=pooling,
                lora=lora[i] if lora else None,
            )
        )
    return out


class Reference:
    """Plain transformers: one unpadded forward per sequence, heads and poolers written out by hand."""

    def __init__(self, path, cls) -> None:
        self.model = getattr(transformers, cls).from_pretrained(str(path), dtype=torch.float32).eval()

    @torch.no_grad()
    def __call__(self, req: EngineRequest) -> torch.Tensor:
        ids = torch.tensor([req.token_ids])
        hidden = self.model.model(input_ids=ids).last_hidden_state[0]
        p = req.pooling
        if p.task in ("embed", "token_embed"):
            x = hidden[-1] if p.pooling_type == "LAST" else hidden
            return F.normalize(x, dim=-1) if p.normalize else x
        head = self.model.score if hasattr(self.model, "score") else self.model.lm_head
        if p.pooling_type == "LAST":
            logits = head(hidden[-1])
        elif p.pooling_type == "CLS":
            logits = head(hidden[0])
        elif p.pooling_type == "MEAN":
            logits = head(hidden.mean(0))
        elif p.pooling_type == "ALL":
            logits = head(hidden)
        else:  # STEP
            rows = hidden[ids[0] == p.step_tag_id] if p.step_tag_id is not None else hidden
            logits = head(rows)
        if p.returned_token_ids is not None:
            logits = logits[..., list(p.returned_token_ids)]
        if not p.use_activation:
            return logits
        return torch.sigmoid(logits) if logits.shape[-1] < 2 else torch.softmax(logits, -1)


def _check(outputs, requests, reference) -> None:
    assert len(outputs) == len(requests)
    for out, req in zip(outputs, requests, strict=True):
        expected = reference(req)
        assert out.dtype == torch.float32 and out.device.type == "cpu"
        assert out.shape == expected.shape, (req.pooling.pooling_type, req.token_ids)
        torch.testing.assert_close(out, expected.float(), atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def qwen3(checkpoint_factory):
    path = checkpoint_factory("Qwen3ForSequenceClassification", num_labels=3, seed=5)
    return (
        path,
        load_pooling_model(str(path), dtype=torch.float32, device=CPU),
        Reference(path, "Qwen3ForSequenceClassification"),
    )


@pytest.fixture(scope="module")
def llama(checkpoint_factory):
    path = checkpoint_factory("LlamaForSequenceClassification", num_labels=2, seed=6)
    return (
        path,
        load_pooling_model(str(path), dtype=torch.float32, device=CPU),
        Reference(path, "LlamaForSequenceClassification"),
    )


PATHS: dict[str, dict[str, Any]] = {
    "padded": {"packing": False},
    "packed": {"prefix_sharing": False, "prune_last_layer": False},
    "packed+prefix": {"prune_last_layer": False},
    "packed+prefix+prune": {},
    "packed+prefix+prune, min_shared=1": {"min_shared_tokens": 1},
}


@pytest.mark.parametrize("path_name", list(PATHS))
@pytest.mark.parametrize("budget", [4096, 64])
def test_every_path_matches_reference_qwen3(qwen3, path_name, budget):
    _, model, reference = qwen3
    runner = ModelRunner(model, CPU, budget, **PATHS[path_name])
    requests = _requests(_sequences(), POOLINGS)
    _check(runner.run(requests), requests, reference)
    assert runner.packing_disabled_reason is None
    if path_name != "padded" and budget == 4096:
        assert runner.last_stats.forwards == 1
    if "prefix" in path_name:
        assert runner.last_stats.tokens_run < runner.last_stats.tokens_requested * 0.8


@pytest.mark.parametrize("pooling", POOLINGS, ids=[f"{t}-{c['pooling_type']}" for t, c in POOLINGS])
def test_single_pooler_calls_use_pruning_exactly(qwen3, pooling):
    """One pooler per call, so sparse poolers (LAST/CLS/STEP) really prune the last layer."""
    _, model, reference = qwen3
    runner = ModelRunner(model, CPU, 4096)
    requests = _requests(_sequences(seed=1), [pooling], use_activation=True)
    _check(runner.run(requests), requests, reference)
    stats = runner.last_stats
    if pooling[1]["pooling_type"] in ("LAST", "CLS", "STEP"):
        assert stats.last_layer_rows < stats.tokens_run / 2


@pytest.mark.parametrize("path_name", ["padded", "packed+prefix+prune"])
def test_llama_family(llama, path_name):
    _, model, reference = llama
    runner = ModelRunner(model, CPU, 200, **PATHS[path_name])
    requests = _requests(_sequences(seed=2), POOLINGS)
    _check(runner.run(requests), requests, reference)


def test_grpo_batch_single_forward_each_prompt_once(qwen3):
    _, model, reference = qwen3
    rng = random.Random(3)
    seqs = []
    for _ in range(4):
        prompt = [rng.randrange(10, 400) for _ in range(50)]
        seqs += [prompt + [rng.randrange(10, 400) for _ in range(rng.randint(1, 40))] for _ in range(8)]
    requests = _requests(seqs, [POOLINGS[0]])
    runner = ModelRunner(model, CPU, 16384)
    _check(runner.run(requests), requests, reference)
    stats = runner.last_stats
    assert stats.tokens_run == sum(len(s) for s in seqs) - 4 * 7 * 50
    assert stats.last_layer_rows == len(seqs)


class _GenericOnly(PoolingModel):
    """Same model, but ``hidden_states`` is overridden, so the runner must use the generic packed path."""

    def hidden_states(self, input_ids, *, attention_mask=None, position_ids=None, **kwargs):
        return super().hidden_states(
            input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
        )


def _rewrap(model: PoolingModel, cls) -> PoolingModel:
    return cls(
        model.hf_model,
        model.spec,
        backbone_name=model.backbone_name,
        head_name=model.head_name,
        num_labels=model.num_labels,
        problem_type=model.problem_type,
    )


def test_generic_hidden_states_path(qwen3):
    _, model, reference = qwen3
    runner = ModelRunner(_rewrap(model, _GenericOnly), CPU, 150)
    assert not runner._uses_direct()
    requests = _requests(_sequences(seed=4), POOLINGS)
    _check(runner.run(requests), requests, reference)
    assert runner.packing_disabled_reason is None and runner.last_stats.forwards > 1


class _IgnoresPlans(PoolingModel):
    """A backbone whose attention never consults the segment plan (as a model with hard-wired SDPA would)."""

    def hidden_states(self, input_ids, *, attention_mask=None, position_ids=None, **kwargs):
        configs = {id(m.config): m.config for m in self.backbone.modules() if hasattr(m, "config")}
        saved = {k: c.__dict__["_attn_implementation_internal"] for k, c in configs.items()}
        for c in configs.values():
            c.__dict__["_attn_implementation_internal"] = "sdpa"
        try:
            return super().hidden_states(
                input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
            )
        finally:
            for k, c in configs.items():
                c.__dict__["_attn_implementation_internal"] = saved[k]


def test_falls_back_to_padding_when_attention_ignores_the_plan(qwen3):
    _, model, reference = qwen3
    runner = ModelRunner(_rewrap(model, _IgnoresPlans), CPU, 4096)
    requests = _requests(_sequences(seed=5), POOLINGS)
    _check(runner.run(requests), requests, reference)
    assert runner.packing_disabled_reason is not None
    _check(runner.run(requests), requests, reference)  # stays on the padded path


def test_forward_kwargs_hook_contract_and_adapter_grouping(qwen3):
    """Mixed adapters share padded forwards (per-row routing); a single adapter's call is packed."""
    _, model, reference = qwen3
    calls: list[list[EngineRequest]] = []

    def hook(reqs):
        calls.append(list(reqs))
        return {"forward": {}, "head": {}}

    a, b = LoRARequest("a", 1, "/nowhere/a"), LoRARequest("b", 2, "/nowhere/b")
    seqs = _sequences(seed=6)
    loras = [[None, a, b][i % 3] for i in range(len(seqs))]
    requests = _requests(seqs, [POOLINGS[0], POOLINGS[3]], lora=loras)
    runner = ModelRunner(model, CPU, 4096, forward_kwargs=hook)
    _check(runner.run(requests), requests, reference)
    # A packed forward is one row, which can hold one adapter: mixed calls take the padded path instead.
    assert runner.last_stats.last_layer_rows == runner.last_stats.tokens_run  # padded accounting
    assert any(len({r.lora for r in reqs}) == 3 for reqs in calls)

    calls.clear()
    single = _requests(seqs, [POOLINGS[0], POOLINGS[3]], lora=[a] * len(seqs))
    _check(runner.run(single), single, reference)
    assert runner.last_stats.tokens_run <= sum(len(s) for s in seqs)  # packed: no padding rows
    assert calls and all({r.lora for r in reqs} == {a} for reqs in calls)


def test_per_row_forward_kwargs_reach_the_backbone(qwen3):
    """With non-empty ``forward`` kwargs the generic path runs and gets one value per packed row."""
    _, model, reference = qwen3
    seen: list[Any] = []

    class Spy(PoolingModel):
        def hidden_states(self, input_ids, *, attention_mask=None, position_ids=None, **kwargs):
            seen.append((input_ids.shape[0], kwargs.pop("row_tags")))
            return super().hidden_states(
                input_ids, attention_mask=attention_mask, position_ids=position_ids, **kwargs
            )

    def hook(reqs):
        return {"forward": {"row_tags": [r.request_id for r in reqs]}, "head": {}}

    requests = _requests(_sequences(seed=7), POOLINGS)
    runner = ModelRunner(_rewrap(model, Spy), CPU, 4096, forward_kwargs=hook)
    _check(runner.run(requests), requests, reference)
    assert seen and all(rows == 1 and len(tags) == 1 for rows, tags in seen)


def test_jamba_is_never_packed(checkpoint_factory):
    path = checkpoint_factory("JambaForSequenceClassification")
    model = load_pooling_model(str(path), dtype=torch.float32, device=CPU)
    assert not model.supports_packing
    runner = ModelRunner(model, CPU, 4096)
    assert runner.packing is False
    ref_model = transformers.JambaForSequenceClassification.from_pretrained(
        str(path), dtype=torch.float32
    ).eval()
    seqs = _sequences(seed=8)[:10]
    requests = _requests(seqs, [POOLINGS[0]])
    outputs = runner.run(requests)
    with torch.no_grad():
        for out, s in zip(outputs, seqs, strict=True):
            hidden = ref_model.model(input_ids=torch.tensor([s])).last_hidden_state[0]
            torch.testing.assert_close(out, ref_model.score(hidden[-1]), atol=ATOL, rtol=0)


def test_lm_head_prm_step_pooling_with_returned_token_ids(checkpoint_factory):
    """math-shepherd style: a causal LM, STEP pooling, two vocabulary columns, softmax."""
    path = checkpoint_factory("LlamaForCausalLM", seed=9)
    model = load_pooling_model(str(path), dtype=torch.float32, device=CPU)
    reference = Reference(path, "LlamaForCausalLM")
    cfg = {"pooling_type": "STEP", "step_tag_id": STEP_ID, "returned_token_ids": [15, 27]}
    requests = _requests(_sequences(seed=10), [("token_classify", cfg)], use_activation=True)
    runner = ModelRunner(model, CPU, 4096)
    _check(runner.run(requests), requests, reference)
    assert runner.last_stats.last_layer_rows < runner.last_stats.tokens_run / 2


def test_model_outside_a_plan_is_plain_sdpa(qwen3):
    """A model switched to the segment implementation but with no plan active computes SDPA's result."""
    from rlhf_rewards.engine.attention.interface import register

    _, model, reference = qwen3
    config = model.hf_model.config
    saved = config.__dict__["_attn_implementation_internal"]
    config.__dict__["_attn_implementation_internal"] = register()
    try:
        ids = torch.tensor([[11, 12, 13, 14, 15, 0, 0], [21, 22, 23, 24, 25, 26, 27]])
        mask = torch.tensor([[1, 1, 1, 1, 1, 0, 0], [1] * 7])
        with torch.no_grad():
            hidden = model.hidden_states(ids, attention_mask=mask)
    finally:
        config.__dict__["_attn_implementation_internal"] = saved
    for row, n in ((0, 5), (1, 7)):
        req = _requests([ids[row, :n].tolist()], [("token_embed", {"pooling_type": "ALL"})])[0]
        torch.testing.assert_close(hidden[row, :n], reference(req), atol=ATOL, rtol=0)
