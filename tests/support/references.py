"""Reference code copied from model cards, the independent answers tests and benchmarks compare against."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def make_step_rewards(logits: torch.Tensor, token_masks: torch.Tensor) -> list[list[float]]:
    """Verbatim from the Qwen2.5-Math-PRM model card: P(step is right) at each masked (step tag) position."""
    probabilities = F.softmax(logits, dim=-1)
    probabilities = probabilities * token_masks.unsqueeze(-1)  # bs, seq_len, num_labels

    all_scores_res = []
    for i in range(probabilities.size(0)):
        sample = probabilities[i]  # seq_len, num_labels
        positive_probs = sample[sample != 0].view(-1, 2)[:, 1]  # valid_tokens, num_labels
        non_zero_elements_list = positive_probs.cpu().tolist()
        all_scores_res.append(non_zero_elements_list)
    return all_scores_res


__all__ = ["make_step_rewards"]
