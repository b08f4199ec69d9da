"""Per-request LoRA adapters on a sequence reward model, against each adapter merged into the base model.

The reference for an adapter is peft's ``merge_and_unload`` of it, saved and scored by an engine without
LoRA (itself checked against plain transformers in tests/entrypoints). Adapters have random non-zero
``lora_B`` and perturbed saved heads, so an adapter that is ignored, or applied to the wrong rows, fails.
"""

from __future__ import annotations

import pytest
import torch

from rlhf_rewards import LLM, LoRARequest, PoolingParams
from rlhf_rewards.lora.routing import adapters_in, peft_layers
from tests.conftest import MIXED_TEXTS

ATOL = 1e-5
RAW = PoolingParams(use_activation=False)

#: name -> LoraConfig fields. "saved_head" and "lora_head" change the head in the two ways peft allows.
ADAPTERS = {
    # Also saves its own embedding table (a backbone module peft mixes row by row).
    "attn": {"seed": 1, "r": 4, "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["embed_tokens"]},
    "saved_head": {
        "seed": 2,
        "r": 8,
        "target_modules": ["k_proj", "o_proj", "gate_proj"],
        "modules_to_save": ["score"],
    },
    "lora_head": {"seed": 3, "r": 4, "target_modules": ["q_proj", "down_proj", "score"]},
    # What TRL's RewardTrainer saves: all linear layers, the head in modules_to_save (task_type SEQ_CLS).
    "trl": {"seed": 4, "r": 2, "target_modules": "all-linear", "task_type": "SEQ_CLS"},
}


@pytest.fixture(scope="module")
def base(checkpoint_factory):
    return checkpoint_factory("Qwen3ForSequenceClassification", num_labels=2, seed=11)


@pytest.fixture(scope="module")
def adapters(base, adapter_factory):
    return {name: adapter_factory(base, **cfg) for name, cfg in ADAPTERS.items()}


@pytest.fixture(scope="module")
def requests_by_name(adapters):
    return {name: LoRARequest(name, i + 1, str(path)) for i, (name, path) in enumerate(adapters.items())}


@pytest.fixture(scope="module")
def reference(base, adapters, merged_factory):
    """``reference(name, task) -> list[Tensor]`` over MIXED_TEXTS; name None is the base model."""
    engines = {None: LLM(str(base), device="cpu")}
    for name, path in adapters.items():
        engines[name] = LLM(str(merged_factory(base, path)), device="cpu")
    cache: dict[tuple, list[torch.Tensor]] = {}

    def get(name: str | None, task: str) -> list[torch.Tensor]:
        if (name, task) not in cache:
            params = RAW if task == "classify" else None
            cache[name, task] = [
                o.outputs.data for o in engines[name].encode(MIXED_TEXTS, params, pooling_task=task)
            ]
        return cache[name, task]

    return get


def _plan(names: list[str | None], n: int) -> list[str | None]:
    """Prompt i uses names[i % len(names)], so every adapter meets every prompt length across calls."""
    return [names[i % len(names)] for i in range(n)]


def _check(outputs, plan, reference, task, offset=0):
    for i, (out, name) in enumerate(zip(outputs, plan, strict=True)):
        expected = reference(name, task)[(i + offset) % len(MIXED_TEXTS)]
        torch.testing.assert_close(
            out.outputs.data, expected, atol=ATOL, rtol=0, msg=f"prompt {i}, adapter {name}"
        )


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_each_adapter_equals_merged_model(base, requests_by_name, reference, name):
    # The adapter changes every score (no adapter can pass by doing nothing).
    for adapted, plain in zip(reference(name, "classify"), reference(None, "classify"), strict=True):
        assert (adapted - plain).abs().min() > 1e-3
    llm = LLM(str(base), device="cpu", enable_lora=True)
    request = requests_by_name[name]
    outs = llm.encode(MIXED_TEXTS, RAW, pooling_task="classify", lora_request=request)
    _check(outs, [name] * len(MIXED_TEXTS), reference, "classify")
    emb = llm.encode(MIXED_TEXTS, pooling_task="embed", lora_request=request)
    _check(emb, [name] * len(MIXED_TEXTS), reference, "embed")


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_mixed_adapters_and_base_in_one_call(base, requests_by_name, reference, packing, monkeypatch):
    llm = LLM(str(base), device="cpu", enable_lora=True, max_loras=4)
    llm.runner.packing = packing
    names = [None, "attn", "saved_head", "lora_head", "trl"]
    texts = MIXED_TEXTS * 3
    plan = _plan(names, len(texts))
    # Shift the texts so each adapter meets different prompts than in the other tests.
    texts = texts[1:] + texts[:1]
    loras = [requests_by_name[n] if n else None for n in plan]
    packed_calls: list[set] = []
    padded_calls: list[set] = []
    run_packed, run_batch = llm.runner.run_packed, llm.runner.run_batch
    monkeypatch.setattr(
        llm.runner,
        "run_packed",
        lambda p, reqs: packed_calls.append({r.lora for r in reqs}) or run_packed(p, reqs),
    )
    monkeypatch.setattr(
        llm.runner, "run_batch", lambda reqs: padded_calls.append({r.lora for r in reqs}) or run_batch(reqs)
    )
    for task in ("classify", "embed"):
        packed_calls.clear()
        padded_calls.clear()
        outs = llm.encode(texts, RAW if task == "classify" else None, pooling_task=task, lora_request=loras)
        _check(outs, plan, reference, task, offset=1)
        # A packed forward is one row and could hold one adapter only, so mixed adapters always run in shared
        # padded batches (peft's per-row routing), even where the engine packs single-adapter calls. Only
        # "lora_head" runs alone: it cannot be loaded beside "saved_head" (see the test below).
        assert any(len(c) >= 3 for c in padded_calls), padded_calls
        assert all(c == {requests_by_name["lora_head"]} for c in packed_calls), packed_calls
    if packing:
        single = llm.encode(texts, RAW, pooling_task="classify", lora_request=requests_by_name["attn"])
        _check(single, ["attn"] * len(texts), reference, "classify", offset=1)
        assert llm.runner.packing_disabled_reason is None
        assert packed_calls and all(c == {requests_by_name["attn"]} for c in packed_calls)  # it really packs


def test_compatible_adapters_share_one_forward(base, requests_by_name, reference, monkeypatch):
    """Base rows and three adapters (one with its own head) run as one padded forward and one head pass."""
    llm = LLM(str(base), device="cpu", enable_lora=True, max_loras=4, max_num_batched_tokens=100_000)
    llm.runner.packing = False
    calls = []
    forward = llm.model.hidden_states
    monkeypatch.setattr(
        llm.model,
        "hidden_states",
        lambda *a, **kw: calls.append(kw.get("adapter_names")) or forward(*a, **kw),
    )
    plan = _plan([None, "attn", "saved_head", "trl"], len(MIXED_TEXTS) * 2)
    loras = [requests_by_name[n] if n else None for n in plan]
    outs = llm.encode(MIXED_TEXTS * 2, RAW, pooling_task="classify", lora_request=loras)
    assert len(calls) == 1
    assert sorted(set(calls[0])) == ["__base__", "lora_1", "lora_2", "lora_4"]
    _check(outs, plan, reference, "classify")


def test_adapters_that_cannot_coexist_run_in_turns(base, requests_by_name, reference):
    """A saved head and a LoRA'd head cannot be in peft's model together; one call still serves both."""
    llm = LLM(str(base), device="cpu", enable_lora=True, max_loras=4)
    manager = llm.lora_manager
    with pytest.raises(ValueError, match="cannot be loaded together"):
        manager.prepare([requests_by_name["saved_head"], requests_by_name["lora_head"]])
    plan = _plan(["saved_head", None, "lora_head", "attn"], len(MIXED_TEXTS) * 2)
    loras = [requests_by_name[n] if n else None for n in plan]
    assert len(manager.plan(loras)) == 2
    outs = llm.encode(MIXED_TEXTS * 2, RAW, pooling_task="classify", lora_request=loras)
    _check(outs, plan, reference, "classify")
    # The engine keeps working for either afterwards.
    again = llm.encode(MIXED_TEXTS, RAW, pooling_task="classify", lora_request=requests_by_name["saved_head"])
    _check(again, ["saved_head"] * len(MIXED_TEXTS), reference, "classify")


def test_base_rows_are_the_base_model_while_adapters_are_loaded(base, requests_by_name, reference):
    llm = LLM(str(base), device="cpu", enable_lora=True, max_loras=4)
    for name in ("attn", "saved_head", "trl"):
        llm.lora_manager.prepare([requests_by_name[name]])
    assert adapters_in(llm.model.hf_model) == {"lora_1", "lora_2", "lora_4"}
    assert llm.lora_manager.forward_kwargs([]) == {}
    outs = llm.encode(MIXED_TEXTS, RAW, pooling_task="classify")
    _check(outs, [None] * len(MIXED_TEXTS), reference, "classify")


def test_unloading_every_adapter_restores_the_model(base, requests_by_name):
    llm = LLM(str(base), device="cpu", enable_lora=True, max_loras=4)
    hf_model = llm.model.hf_model
    before = {k: v.clone() for k, v in hf_model.state_dict().items()}
    structure = [(n, type(m)) for n, m in hf_model.named_modules()]
    for name in ADAPTERS:
        llm.lora_manager.prepare([requests_by_name[name]])
        assert peft_layers(hf_model)
        llm.remove_lora(requests_by_name[name].lora_int_id)
    assert peft_layers(hf_model) == []
    assert [(n, type(m)) for n, m in hf_model.named_modules()] == structure
    after = hf_model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert not hasattr(hf_model, "peft_config")


def test_head_and_its_adapter_copies_run_in_float32(base, requests_by_name, reference):
    llm = LLM(str(base), device="cpu", dtype="bfloat16", enable_lora=True, max_loras=4)
    for name in ("saved_head", "attn"):
        llm.lora_manager.prepare([requests_by_name[name]])
    head_params = dict(llm.model.head.named_parameters())
    assert any("modules_to_save.lora_2" in n for n in head_params)
    assert all(p.dtype == torch.float32 for p in head_params.values())
    llm.lora_manager.prepare([requests_by_name["lora_head"]])  # evicts the saved head: they conflict
    head_params = dict(llm.model.head.named_parameters())
    assert any("lora_A.lora_3" in n for n in head_params)
    assert all(p.dtype == torch.float32 for p in head_params.values())
    # LoRA weights of bf16 layers are float32 too (peft's autocast_adapter_dtype).
    q = llm.model.backbone.layers[0].self_attn.q_proj
    assert q.base_layer.weight.dtype == torch.bfloat16 and q.lora_A["lora_3"].weight.dtype == torch.float32
    outs = llm.encode(MIXED_TEXTS, RAW, pooling_task="classify", lora_request=requests_by_name["lora_head"])
    for out, expected in zip(outs, reference("lora_head", "classify"), strict=True):
        torch.testing.assert_close(out.outputs.data, expected, atol=0.1, rtol=0.05)
