"""Per-request LoRA on every architecture with a tiny builder, against the adapters merged into the model.

For each architecture three adapters are mixed with the base model in one call: LoRA on every linear
layer (peft's ``all-linear``, which also covers the head unless it is an LM head), the same with the head
saved as the adapter's own copy (``modules_to_save``), and LoRA put on the head module by name. The last
two cannot be in peft's model together, so the call runs in two turns.

Sequence (Qwen3/Llama/Jamba classifiers), token (Qwen2 RM, InternLM2 RM) and process reward models (Qwen2
PRM, Llama causal LM with STEP pooling) are all covered; Jamba runs under ``-m slow``.
"""

from __future__ import annotations

import pytest
import torch

from rlhf_rewards import LLM, LoRARequest, PoolerConfig, PoolingParams
from tests.conftest import MIXED_TEXTS
from tests.support.checkpoints import BUILDERS

ATOL = 1e-5
#: Full-vocabulary LM-head logits of the random tiny models reach ~5; merged and unmerged LoRA round apart
#: by a few fp32 ulps of that.
RTOL = 1e-5
TEXTS = [
    "Solve 3 * 4 = 12<extra_0>12 - 5 = 7<extra_0>So the result is 7.<extra_0>",
    "One step only<extra_0>",
    *MIXED_TEXTS[:3],
    "<|reward|>ok<|reward|>",
]
CLASSIFY_TASKS = ("classify", "token_classify")
#: Jamba's reference Mamba scan is slow on CPU: it runs under ``-m slow``.
SLOW_ARCHITECTURES = {"JambaForSequenceClassification"}
#: Mamba's sequential reference scan carries merged-vs-unmerged fp32 rounding (a few 1e-6 relative) across
#: the whole sequence; Jamba's hidden states (|x| ~ 4) then differ by ~2e-5, so for Jamba the bound is 1e-5
#: relative to the largest value of the tensor. A row with the wrong adapter differs by ~1e-1.
#: LM-head models score over the vocabulary: logits up to |x| ~ 6 on the tiny Llama, where the padded
#: mixed-adapter forward and the merged model's packed forward round apart by ~1.3e-5 on some CPUs (2e-6
#: relative; seen on a 2-vCPU AMD EPYC), so they take the same relative bound.
SCALED_TOLERANCE = {"JambaForSequenceClassification", "LlamaForCausalLM", "Qwen3ForCausalLM"}


def _head_name(llm: LLM) -> str | None:
    return getattr(llm.model, "lm_head_name", None) or llm.model.head_name


def _head_linears(llm: LLM) -> list[str]:
    """Full names of the head's Linear layers (LoRA targets by exact name)."""
    name = _head_name(llm)
    head = llm.model.hf_model.get_submodule(name)
    return [f"{name}.{n}" if n else name for n, m in head.named_modules() if isinstance(m, torch.nn.Linear)]


def _adapters(llm: LLM) -> dict[str, dict]:
    # transformers' Mamba mixers read dt_proj.weight directly, so a LoRA there acts neither in training nor
    # here (only merge_and_unload would apply it): it is left out, as real Jamba adapters leave it at zero.
    exclude = ["dt_proj"]
    configs = {"all_linear": {"seed": 61, "r": 4, "target_modules": "all-linear", "exclude_modules": exclude}}
    head = _head_name(llm)
    if head is not None:
        configs["saved_head"] = {
            "seed": 62,
            "r": 2,
            "target_modules": "all-linear",
            "exclude_modules": exclude,
            "modules_to_save": [head],
        }
        configs["lora_head"] = {"seed": 63, "r": 4, "target_modules": _head_linears(llm)}
    return configs


def _params(task: str) -> PoolingParams | None:
    return PoolingParams(use_activation=False) if task in CLASSIFY_TASKS else None


def _compare(base, adapter_factory, merged_factory, pooler_config=None, tasks=None, scaled=False):
    kwargs = {"device": "cpu", "pooler_config": pooler_config}
    llm = LLM(str(base), enable_lora=True, max_loras=3, **kwargs)
    configs = _adapters(llm)
    paths = {name: adapter_factory(base, **cfg) for name, cfg in configs.items()}
    requests = {name: LoRARequest(name, i + 1, str(p)) for i, (name, p) in enumerate(paths.items())}
    engines = {None: LLM(str(base), **kwargs)}
    engines.update({name: LLM(str(merged_factory(base, p)), **kwargs) for name, p in paths.items()})
    names = [None, *configs]
    plan = [names[i % len(names)] for i in range(len(TEXTS) * 2)]
    texts = TEXTS * 2
    for task in tasks or llm.supported_tasks:
        outs = llm.encode(
            texts, _params(task), pooling_task=task, lora_request=[requests.get(n) for n in plan]
        )
        expected = {n: engines[n].encode(TEXTS, _params(task), pooling_task=task) for n in names}
        for i, (out, name) in enumerate(zip(outs, plan, strict=True)):
            want = expected[name][i % len(TEXTS)].outputs.data
            atol = ATOL * max(1.0, float(want.abs().max())) if scaled and want.numel() else ATOL
            torch.testing.assert_close(
                out.outputs.data,
                want,
                atol=atol,
                rtol=RTOL,
                msg=lambda m, t=task, i=i, n=name: f"{t}, prompt {i}, {n}: {m}",
            )
            if name is not None and task in CLASSIFY_TASKS and want.numel():
                base_out = expected[None][i % len(TEXTS)].outputs.data
                assert not torch.allclose(want, base_out, atol=1e-3), f"{name} does not change {task}"


@pytest.mark.parametrize(
    "architecture",
    [pytest.param(a, marks=pytest.mark.slow) if a in SLOW_ARCHITECTURES else a for a in sorted(BUILDERS)],
)
def test_architecture_with_mixed_adapters_equals_merged(
    architecture, checkpoint_factory, adapter_factory, merged_factory
):
    base = checkpoint_factory(architecture, seed=71)
    _compare(base, adapter_factory, merged_factory, scaled=architecture in SCALED_TOLERANCE)


def test_math_shepherd_step_pooling_on_the_lm_head(checkpoint_factory, adapter_factory, merged_factory):
    """LlamaForCausalLM as a PRM: STEP pooling reads two LM-head columns, which adapters change."""
    from transformers import AutoTokenizer

    base = checkpoint_factory("LlamaForCausalLM", seed=72)
    tok = AutoTokenizer.from_pretrained(str(base))
    tag, good, bad = (tok.convert_tokens_to_ids(t) for t in ("<extra_0>", "+", "-"))
    config = PoolerConfig(pooling_type="STEP", step_tag_id=tag, returned_token_ids=[good, bad])
    _compare(base, adapter_factory, merged_factory, pooler_config=config, tasks=["token_classify"])
