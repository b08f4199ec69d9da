"""Offline differential, LoRA: a peft adapter (q/v projections, rank 4, made with
``tests.support.lora.build_adapter``) on a ``Qwen3ForSequenceClassification``, served by vLLM with
``enable_lora=True`` and here with the same arguments: one adapter for every row, and a batch mixing adapter
rows with base-model rows.

Every row is also checked against peft's own model (base + adapter loaded with ``PeftModel``, every row
computed alone, adapter disabled for base rows). A mixed batch was once recorded as a vLLM CPU-build bug
(its base rows did not score as the base model alone); against vLLM 0.32.0 here its rows equal peft's and ours,
so it is an ordinary comparison.
"""

from __future__ import annotations

import pytest
import torch

from tests.compat.vllm_live.offline import (
    MAX_MODEL_LEN,
    PROMPTS,
    Pair,
    build,
    ours_call,
    ours_engine,
    vllm_engine,
)
from tests.compat.vllm_live.oracle import lora_request, pooling_params

pytestmark = pytest.mark.slow

ARCH = "Qwen3ForSequenceClassification"


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    from tests.support.lora import build_adapter

    base = build(tmp_path_factory, ARCH, "lora-base")
    adapter = build_adapter(
        base, tmp_path_factory.mktemp("adapter") / "a", r=4, seed=1, target_modules=["q_proj", "v_proj"]
    )
    return base, adapter


@pytest.fixture(scope="module")
def pair(compat, paths):
    base, _ = paths
    ours = ours_engine(base, enable_lora=True, max_lora_rank=8)
    for vllm in vllm_engine(base, enable_lora=True, max_lora_rank=8, max_loras=2):
        yield Pair(compat, f"{ARCH} + LoRA", vllm, ours)


def peft_reference(base, adapter, prompts, adapted: list[bool]) -> list[list[float]]:
    """Each row alone through peft: sigmoid of the last token's logit, adapter on or off."""
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForSequenceClassification.from_pretrained(str(base), torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).eval()
    out = []
    with torch.no_grad():
        for text, on in zip(prompts, adapted, strict=True):
            ids = tok(text, return_tensors="pt", truncation=True, max_length=MAX_MODEL_LEN)
            if on:
                logits = model(**ids).logits
            else:
                with model.disable_adapter():
                    logits = model(**ids).logits
            out.append(torch.sigmoid(logits[0].float()).tolist())
    return out


@pytest.mark.timeout(600)
def test_single_adapter(pair, paths):
    _, adapter = paths
    lora = lora_request("a", 1, adapter)
    pair.check("classify with one adapter", "classify", PROMPTS, lora_request=lora)
    pair.check(
        "encode classify with one adapter", "encode", PROMPTS, pooling_task="classify", lora_request=lora
    )
    pair.check(
        "encode classify adapter use_activation=False",
        "encode",
        PROMPTS,
        pooling_params(use_activation=False),
        pooling_task="classify",
        lora_request=lora,
    )
    pair.check("classify base model (LoRA engine)", "classify", PROMPTS)
    pair.check(
        "classify per-row adapter list, all rows adapted", "classify", PROMPTS, lora_request=[lora] * 3
    )


@pytest.mark.timeout(600)
def test_adapter_rows_match_peft(pair, paths):
    base, adapter = paths
    ours = ours_call(pair.ours, "classify", PROMPTS, lora_request=lora_request("a", 1, adapter))
    reference = peft_reference(base, adapter, PROMPTS, [True] * 3)
    torch.testing.assert_close(
        torch.tensor([o["probs"] for o in ours]), torch.tensor(reference), atol=1e-5, rtol=0
    )


@pytest.mark.timeout(600)
def test_mixed_batch(pair, paths):
    base, adapter = paths
    lora = lora_request("a", 1, adapter)
    rows = [lora, None, lora]
    ours, theirs = pair.answers("classify", PROMPTS, lora_request=rows)
    reference = peft_reference(base, adapter, PROMPTS, [r is not None for r in rows])
    torch.testing.assert_close(
        torch.tensor([o["probs"] for o in ours]),
        torch.tensor(reference),
        atol=1e-5,
        rtol=0,
        msg=lambda m: f"ours must be peft's rows: {m}",
    )
    pair.compat.check("offline", "classify mixed batch [adapter, base, adapter]", pair.model, ours, theirs)
