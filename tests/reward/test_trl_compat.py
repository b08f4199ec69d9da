"""``as_trl_reward_model`` against the contract of TRL's PPO ``get_reward``, and the real PPOTrainer (slow).

The last TRL release that ships PPOTrainer is 1.12.0 (``trl.experimental.ppo``; removed in 1.13). Its
``get_reward`` (``trl.experimental.utils``; ``trl.trainer.utils`` up to 0.26, same body) is copied below
verbatim, so the contract is tested in the main environment; the slow test runs the real trainer in
``.venv-ppo`` (created by ``scripts/ppo_env.sh``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhf_rewards import LLM, RewardFunction, as_trl_reward_model
from rlhf_rewards.reward import RewardFunctionError
from tests.reward.expected import close, outcome_expected

REPO = Path(__file__).resolve().parents[2]
PAD = 4  # <pad> in the tiny tokenizer


# ---- verbatim from trl 1.12.0, trl/experimental/utils.py (Apache-2.0) -------------------------------
def first_true_indices(bools: torch.Tensor, dtype=torch.long) -> torch.Tensor:
    row_len = bools.size(-1)
    zero_or_index = row_len * (~bools).type(dtype) + torch.arange(row_len, dtype=dtype, device=bools.device)
    return torch.min(zero_or_index, dim=-1).values


def get_reward(
    model: torch.nn.Module, query_responses: torch.Tensor, pad_token_id: int, context_length: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    attention_mask = query_responses != pad_token_id
    position_ids = attention_mask.cumsum(1) - attention_mask.long()  # exclusive cumsum
    lm_backbone = getattr(model, model.base_model_prefix)
    input_ids = torch.masked_fill(query_responses, ~attention_mask, 0)
    output = lm_backbone(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        return_dict=True,
        output_hidden_states=True,
        use_cache=False,  # otherwise mistral-based RM would error out
    )
    reward_logits = model.score(output.hidden_states[-1])
    sequence_lengths = (
        first_true_indices(query_responses[:, context_length:] == pad_token_id) - 1 + context_length
    )
    # https://github.com/huggingface/transformers/blob/dc68a39c8111217683bf49a4912d0c9018bab33d/src/transformers/models/gpt2/modeling_gpt2.py#L1454
    return (
        reward_logits,
        reward_logits[
            torch.arange(reward_logits.size(0), device=reward_logits.device),
            sequence_lengths,
        ].squeeze(-1),
        sequence_lengths,
    )


# -----------------------------------------------------------------------------------------------------


def _query_responses(tokenizer) -> tuple[torch.Tensor, int, list[list[int]]]:
    """PPO's layout: left-padded queries, then responses right-padded after their stop."""
    queries = [tokenizer(q)["input_ids"] for q in ["What is 12 + 7?", "Hello", "Solve 3 * 4 = 12. Then"]]
    responses = [tokenizer(r)["input_ids"] for r in [" The answer is 19.", " my name is Ada", ""]]
    ctx = max(len(q) for q in queries)
    resp_len = max(len(r) for r in responses) + 2
    rows, unpadded = [], []
    for q, r in zip(queries, responses, strict=True):
        rows.append([PAD] * (ctx - len(q)) + q + r + [PAD] * (resp_len - len(r)))
        unpadded.append(q + r)
    return torch.tensor(rows), ctx, unpadded


@pytest.fixture(scope="module")
def hf_rm(rm_path):
    return AutoModelForSequenceClassification.from_pretrained(str(rm_path), dtype=torch.float32).eval()


def test_get_reward_contract_matches_the_transformers_model(rm_llm, hf_rm):
    tokenizer = rm_llm.get_tokenizer()
    qr, ctx, unpadded = _query_responses(tokenizer)
    model = as_trl_reward_model(rm_llm).to("cpu").eval()
    with torch.no_grad():
        logits, scores, lengths = get_reward(model, qr, PAD, ctx)
        _, hf_scores, hf_lengths = get_reward(hf_rm, qr, PAD, ctx)
    assert logits.shape == (qr.shape[0], qr.shape[1], 1) and scores.dtype == torch.float32
    torch.testing.assert_close(lengths, hf_lengths)
    torch.testing.assert_close(scores, hf_scores, atol=1e-4, rtol=1e-4)
    assert close(scores.tolist(), outcome_expected(rm_llm, [{"prompt_token_ids": u} for u in unpadded]))
    # Calling the module directly reads like a one-label classifier.
    out = model(qr, attention_mask=qr != PAD)
    torch.testing.assert_close(out.logits[:, 0], scores)


def test_installed_trl_get_reward_if_present(rm_llm, hf_rm):
    utils = pytest.importorskip("trl.experimental.utils")
    if not hasattr(utils, "get_reward"):
        pytest.skip("this trl has no experimental get_reward")
    tokenizer = rm_llm.get_tokenizer()
    qr, ctx, _ = _query_responses(tokenizer)
    with torch.no_grad():
        ours = utils.get_reward(as_trl_reward_model(rm_llm), qr, PAD, ctx)[1]
        ref = utils.get_reward(hf_rm, qr, PAD, ctx)[1]
    torch.testing.assert_close(ours, ref, atol=1e-4, rtol=1e-4)


def test_policy_tokenizer_path_decodes_and_rescoring_as_text(rm_llm):
    tokenizer = rm_llm.get_tokenizer()
    qr, ctx, unpadded = _query_responses(tokenizer)
    model = as_trl_reward_model(RewardFunction(rm_llm), tokenizer=tokenizer)
    with torch.no_grad():
        scores = get_reward(model, qr, PAD, ctx)[1]
    texts = tokenizer.batch_decode(unpadded, skip_special_tokens=True)
    assert close(scores.tolist(), outcome_expected(rm_llm, texts))


def test_unscorable_rows_raise_unless_missing_reward(rm_path, rm_llm):
    tokenizer = rm_llm.get_tokenizer()
    qr, ctx, _ = _query_responses(tokenizer)
    short = LLM(str(rm_path), device="cpu", max_model_len=6)
    with pytest.raises(RewardFunctionError, match="missing_reward"), pytest.warns(UserWarning):
        get_reward(as_trl_reward_model(short), qr, PAD, ctx)
    with pytest.warns(UserWarning):
        scores = get_reward(as_trl_reward_model(short, missing_reward=-5.0), qr, PAD, ctx)[1]
    assert -5.0 in scores.tolist()


def test_process_reward_models_are_rejected(prm_llm):
    with pytest.raises(ValueError, match="process reward model"):
        as_trl_reward_model(prm_llm)
    with pytest.raises(ValueError, match="not both"):
        as_trl_reward_model(RewardFunction(prm_llm), truncate=True)


@pytest.mark.slow
def test_real_ppo_trainer_two_steps(tmp_path):
    python = REPO / ".venv-ppo" / "bin" / "python"
    if not python.exists():
        pytest.skip(
            ".venv-ppo does not exist: run `bash scripts/ppo_env.sh` (trl 1.12.0, the last with PPOTrainer)"
        )
    summary = tmp_path / "summary.json"
    env = {
        **os.environ,
        "TRL_EXPERIMENTAL_SILENCE": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        [
            str(python),
            "-m",
            "recipes.ppo_legacy",
            "--steps",
            "2",
            "--workdir",
            str(tmp_path / "work"),
            "--summary",
            str(summary),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(summary.read_text())
    assert data["trl"] == os.environ.get("TRL_PPO_VERSION", "1.12.0"), data
    assert data["updates"] == 2 and data["problems"] == []
    assert len(data["scores"]) == 2 and all(len(s) == 2 for s in data["scores"])
    print(sys.executable, data)
