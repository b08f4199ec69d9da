"""math-shepherd-style PRMs: a plain ``LlamaForCausalLM`` with ``STEP`` pooling over two vocabulary logits.

The reference is the model card's own computation on transformers' ``LlamaForCausalLM``:
``logits[..., [good, bad]].softmax(-1)[..., 0]`` at the positions of the step tag.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlhf_rewards import LLM, PoolerConfig, PoolingParams

ATOL = 1e-5
STEP_TAG = "<extra_0>"  # math-shepherd uses "ки"; any single token works the same way
TEXTS = [
    f"What is 3 * 4 - 5? Step 1: 3 * 4 = 12 {STEP_TAG} Step 2: 12 - 5 = 7 {STEP_TAG} The answer is 7 {STEP_TAG}",
    f"ok {STEP_TAG}",
    "A completion with no step tag.",
    f"{STEP_TAG}" + " The quick brown fox jumps over the lazy dog." * 5 + f" {STEP_TAG}",
]


@pytest.mark.parametrize("architecture", ["LlamaForCausalLM", "Qwen3ForCausalLM"])
def test_step_scores_match_the_model_card(checkpoint_factory, architecture):
    path = checkpoint_factory(architecture, seed=51)
    tok = AutoTokenizer.from_pretrained(str(path))
    good, bad = tok.convert_tokens_to_ids(["+", "-"])
    step_tag_id = tok.convert_tokens_to_ids(STEP_TAG)
    config = PoolerConfig(pooling_type="STEP", step_tag_id=step_tag_id, returned_token_ids=[good, bad])
    llm = LLM(str(path), device="cpu", pooler_config=config, max_num_batched_tokens=128)
    info = llm.model_info()
    assert (info.kind, info.step_tag, info.default_task) == ("process", STEP_TAG, "token_classify")
    outs = llm.encode(TEXTS, pooling_task="token_classify")

    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
    for text, out in zip(TEXTS, outs, strict=True):
        input_id = torch.tensor([tok.encode(text)])
        with torch.no_grad():  # the card, line by line
            logits = model(input_id).logits[:, :, [good, bad]]
            scores = logits.softmax(dim=-1)[:, :, 0]
            step_scores = scores[input_id == step_tag_id]
        assert out.outputs.data.shape == (text.count(STEP_TAG), 2)
        torch.testing.assert_close(out.outputs.data[:, 0], step_scores, atol=ATOL, rtol=0)
    # Raw logits of the two tokens on request.
    (raw,) = llm.encode(TEXTS[0], PoolingParams(use_activation=False), pooling_task="token_classify")
    input_id = torch.tensor([tok.encode(TEXTS[0])])
    with torch.no_grad():
        expected = model(input_id).logits[0][input_id[0] == step_tag_id][:, [good, bad]]
    torch.testing.assert_close(raw.outputs.data, expected, atol=ATOL, rtol=0)
