"""Loading, eviction, registration and refusal of adapters; the engine stays usable after every error."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from rlhf_rewards import LLM, LoRARequest, PoolingParams
from rlhf_rewards.engine.request import EngineRequest
from rlhf_rewards.lora.manager import LoRAManager
from rlhf_rewards.lora.routing import adapters_in
from tests.conftest import MIXED_TEXTS
from tests.support.lora import build_adapter

ATOL = 1e-5
RAW = PoolingParams(use_activation=False)


@pytest.fixture(scope="module")
def base(checkpoint_factory):
    return checkpoint_factory("Qwen3ForSequenceClassification", num_labels=2, seed=31)


@pytest.fixture(scope="module")
def good(base, adapter_factory):
    """Three usable adapters, one of which saves its own head."""
    paths = [
        adapter_factory(base, seed=41, target_modules=["q_proj", "v_proj"], modules_to_save=["score"]),
        adapter_factory(base, seed=42, target_modules=["k_proj", "up_proj"]),
        adapter_factory(base, seed=43, r=8, target_modules=["o_proj", "gate_proj"]),
    ]
    return [LoRARequest(name, i + 1, str(p)) for i, (name, p) in enumerate(zip("abc", paths, strict=True))]


@pytest.fixture(scope="module")
def expected(base, good, merged_factory):
    """Raw classify scores of MIXED_TEXTS for each good adapter, from its merged model."""
    return {
        r.lora_name: [
            o.outputs.data
            for o in LLM(str(merged_factory(base, r.lora_path)), device="cpu").encode(
                MIXED_TEXTS, RAW, pooling_task="classify"
            )
        ]
        for r in good
    }


def _scores(llm, lora):
    return [o.outputs.data for o in llm.encode(MIXED_TEXTS, RAW, pooling_task="classify", lora_request=lora)]


def _assert_scores(llm, lora, expected):
    for got, want in zip(_scores(llm, lora), expected[lora.lora_name], strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def _loaded_names(llm):
    return [r.lora_name for r in llm.lora_manager.loaded_loras]


def test_least_recently_used_adapter_is_evicted_and_reloaded(base, good, expected):
    llm = LLM(str(base), device="cpu", enable_lora=True, max_loras=2)
    a, b, c = good
    _assert_scores(llm, a, expected)
    _assert_scores(llm, b, expected)
    _assert_scores(llm, a, expected)  # a is now more recent than b
    assert _loaded_names(llm) == ["b", "a"]
    _assert_scores(llm, c, expected)
    assert _loaded_names(llm) == ["a", "c"]
    assert adapters_in(llm.model.hf_model) == {"lora_1", "lora_3"}
    _assert_scores(llm, b, expected)  # reloaded on demand
    assert _loaded_names(llm) == ["c", "b"]
    assert adapters_in(llm.model.hf_model) == {"lora_2", "lora_3"}


def test_one_call_with_more_adapters_than_max_loras_runs_in_waves(base, good, expected):
    llm = LLM(str(base), device="cpu", enable_lora=True, max_loras=2)
    plan = [good[i % 3] if i % 4 else None for i in range(len(MIXED_TEXTS) * 3)]
    assert len(llm.lora_manager.plan(plan)) == 2
    outs = llm.encode(MIXED_TEXTS * 3, RAW, pooling_task="classify", lora_request=plan)
    base_scores = [
        o.outputs.data for o in LLM(str(base), device="cpu").encode(MIXED_TEXTS, RAW, pooling_task="classify")
    ]
    for i, (out, lora) in enumerate(zip(outs, plan, strict=True)):
        want = base_scores if lora is None else expected[lora.lora_name]
        torch.testing.assert_close(out.outputs.data, want[i % len(MIXED_TEXTS)], atol=ATOL, rtol=0)
    assert len(llm.lora_manager.loaded_loras) <= 2
    with pytest.raises(ValueError, match="max_loras=2"):
        llm.lora_manager.prepare(good)


def test_registered_adapters_are_found_by_name(base, good, expected):
    llm = LLM(str(base), device="cpu", enable_lora=True, max_loras=2)
    for request in good:
        assert llm.add_lora(request) is True
    assert llm.add_lora(good[0]) is False
    assert llm.list_loras() == good
    assert llm.get_lora("b") == good[1]
    assert llm.model_info().lora_modules == ["a", "b", "c"]
    assert len(llm.lora_manager.loaded_loras) == 2  # registered is not pinned
    _assert_scores(llm, llm.get_lora("a"), expected)
    with pytest.raises(ValueError, match=r"Unknown LoRA adapter 'nope'.*\['a', 'b', 'c'\]"):
        llm.get_lora("nope")
    with pytest.raises(ValueError, match="already registered"):
        llm.add_lora(LoRARequest("a", 9, good[1].lora_path))
    with pytest.raises(ValueError, match="lora_int_id=2 .* already used"):
        llm.add_lora(LoRARequest("d", 2, good[0].lora_path))
    assert llm.remove_lora("b") is True
    assert llm.remove_lora("b") is False
    assert llm.list_loras() == [good[0], good[2]]
    assert "b" not in _loaded_names(llm)


def test_lora_needs_enable_lora(base, good):
    llm = LLM(str(base), device="cpu")
    with pytest.raises(ValueError, match="enable_lora"):
        llm.encode("hi", pooling_task="classify", lora_request=good[0])
    with pytest.raises(ValueError, match="enable_lora"):
        llm.add_lora(good[0])


def test_forward_kwargs_hook(base, good):
    llm = LLM(str(base), device="cpu", enable_lora=True)
    manager: LoRAManager = llm.lora_manager
    params = llm.runner  # noqa: F841 - the runner calls the hook; here it is called directly
    from rlhf_rewards.pooling import resolve_pooling

    pooling = resolve_pooling("classify", RAW, llm.pooler_config_for("classify"))
    reqs = [
        EngineRequest(i, str(i), [1, 2, 3], pooling, lora) for i, lora in enumerate([None, good[0], None])
    ]
    assert manager.forward_kwargs([reqs[0], reqs[2]]) == {}
    with pytest.raises(RuntimeError, match="is not loaded"):
        manager.forward_kwargs(reqs)
    manager.prepare([good[0]])
    names = ["__base__", "lora_1", "__base__"]
    assert manager.forward_kwargs(reqs) == {
        "forward": {"adapter_names": names},
        "head": {"adapter_names": names},
    }


# ---------------------------------------------------------------------- refusals


@pytest.fixture(scope="module")
def bad(base, checkpoint_factory, adapter_factory, tmp_path_factory):
    """Adapters that must be refused, by what is wrong with them."""
    root = tmp_path_factory.mktemp("bad")
    other_width = checkpoint_factory("Qwen3ForSequenceClassification", num_labels=2, hidden_size=32, seed=32)
    other_labels = checkpoint_factory("Qwen3ForSequenceClassification", num_labels=3, seed=33)
    internlm = checkpoint_factory("InternLM2ForRewardModel", seed=34)
    adapters = {
        "wide rank": adapter_factory(base, seed=51, r=16, target_modules=["q_proj"]),
        "other width": adapter_factory(other_width, seed=52, target_modules=["q_proj", "v_proj"]),
        "other head": adapter_factory(
            other_labels, seed=53, target_modules=["q_proj"], modules_to_save=["score"]
        ),
        "other modules": adapter_factory(internlm, seed=54, target_modules=["wqkv", "wo"]),
        "dora": adapter_factory(base, seed=55, target_modules=["q_proj"], use_dora=True),
        "missing path": root / "does-not-exist",
    }
    # Config targets k_proj too, but the weights have none for it (LoRA layers get injected, then fail).
    lacking = root / "lacking"
    shutil.copytree(adapter_factory(base, seed=56, target_modules=["q_proj", "v_proj"]), lacking)
    config = json.loads((lacking / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj", "v_proj", "k_proj"]
    (lacking / "adapter_config.json").write_text(json.dumps(config))
    adapters["lacking weights"] = lacking
    # Weights for v_proj that the config does not target.
    extra = root / "extra"
    shutil.copytree(adapter_factory(base, seed=57, target_modules=["q_proj", "v_proj"]), extra)
    config = json.loads((extra / "adapter_config.json").read_text())
    config["target_modules"] = ["q_proj"]
    (extra / "adapter_config.json").write_text(json.dumps(config))
    adapters["extra weights"] = extra
    not_adapter = root / "not-an-adapter"
    not_adapter.mkdir()
    adapters["not an adapter"] = not_adapter
    from peft import IA3Config, get_peft_model

    from tests.support.lora import _base_model

    ia3 = get_peft_model(
        _base_model(base),
        IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]),
    )
    ia3.save_pretrained(str(root / "ia3"))
    adapters["ia3"] = root / "ia3"
    return adapters


REFUSALS = {
    "wide rank": "rank 16, above max_lora_rank=8",
    "other width": "does not fit this model \(size mismatch for model.layers",
    "other head": "does not fit this model \(size mismatch for score",
    "other modules": "match no module of this model",
    "dora": "DoRA",
    "missing path": "cannot read the adapter",
    "lacking weights": "lacks weights",
    "extra weights": "fit no layer its config creates",
    "not an adapter": "no adapter_config.json",
    "ia3": "only LoRA adapters",
}


def test_bad_adapters_are_refused_and_leave_the_engine_usable(base, good, expected, bad):
    llm = LLM(str(base), device="cpu", enable_lora=True, max_loras=2, max_lora_rank=8)
    hf_model = llm.model.hf_model
    _assert_scores(llm, good[0], expected)
    structure = [(n, type(m)) for n, m in hf_model.named_modules()]
    state = {k: v.clone() for k, v in hf_model.state_dict().items()}
    for i, (what, message) in enumerate(REFUSALS.items()):
        request = LoRARequest(f"bad-{i}", 100 + i, str(bad[what]))
        for attempt in (
            lambda r=request: llm.encode(
                MIXED_TEXTS, RAW, pooling_task="classify", lora_request=[r, good[0], None, None, None]
            ),
            lambda r=request: llm.add_lora(r),
            lambda r=request: llm.lora_manager.prepare([r]),
        ):
            with pytest.raises(ValueError, match=message) as info:
                attempt()
            assert f"'bad-{i}'" in str(info.value), str(info.value)
            # Nothing of it is left: same modules, same weights, only the good adapter loaded.
            assert [(n, type(m)) for n, m in hf_model.named_modules()] == structure, what
            assert adapters_in(hf_model) == {"lora_1"}, what
            now = hf_model.state_dict()
            assert now.keys() == state.keys() and all(torch.equal(now[k], v) for k, v in state.items()), what
            assert llm.list_loras() == []
        _assert_scores(llm, good[0], expected)
    _assert_scores(llm, good[2], expected)


def test_reused_id_for_another_adapter_is_refused(base, good):
    llm = LLM(str(base), device="cpu", enable_lora=True)
    llm.encode("hi", pooling_task="classify", lora_request=good[0])
    with pytest.raises(ValueError, match="lora_int_id=1 .* already used"):
        llm.encode("hi", pooling_task="classify", lora_request=LoRARequest("other", 1, good[1].lora_path))
    # Two adapters with one id in a single call, neither loaded yet.
    fresh = LoRARequest("c2", 3, good[1].lora_path)
    with pytest.raises(ValueError, match="lora_int_id=3 .* already used"):
        llm.encode(["hi", "yo"], pooling_task="classify", lora_request=[good[2], fresh])
    assert llm.lora_manager.loaded_loras == [good[0]]


def test_other_base_model_name_only_warns(base, good, expected, tmp_path, caplog):
    moved = tmp_path / "adapter"
    shutil.copytree(good[1].lora_path, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "some-org/another-model"
    (moved / "adapter_config.json").write_text(json.dumps(config))
    llm = LLM(str(base), device="cpu", enable_lora=True)
    request = LoRARequest("b", 2, str(moved))
    with caplog.at_level("WARNING", logger="rlhf_rewards.lora.config"):
        scores = _scores(llm, request)
    assert "another-model" in caplog.text
    for got, want in zip(scores, expected["b"], strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


def test_manager_arguments_are_checked(base):
    llm = LLM(str(base), device="cpu")
    for kw in ({"max_loras": 0}, {"max_lora_rank": -1}, {"max_loras": True}):
        with pytest.raises(ValueError, match="positive integer"):
            LoRAManager(llm.model, **kw)
    assert build_adapter  # the helper used by the fixtures is importable from the library
