"""The label-logits head step: next-token probabilities of chosen label tokens, read from a causal LM.

A judge ("Is this answer correct? Yes/No") is read through the probability of its answer token after the
prompt: vLLM's ``/generative_scoring``. Here that is one packed, prefix-shared forward (a query shared by all
items is one prefix-tree node, computed once) with LAST pooling, and a head step that multiplies only what
is needed:

- ``apply_softmax=True``: the final hidden state of each sequence's last position times the label rows of
  the LM head, ``[n, hidden] @ lm_head.weight[labels].T`` -> ``[n, k]``, then a softmax over those k logits;
- ``apply_softmax=False``: the full-vocabulary row of the last position only (``[n, vocab]``, one row per
  item), whose log-softmax gives each label's true model probability.

No ``[tokens, vocab]`` logits matrix is ever built: the runner gathers one row per sequence before the
head (and the direct Llama/Qwen decoder loop runs its last layer on those rows only), and
:meth:`~rlhf_rewards.models.causal_lm.LMHeadPoolingModel.head_logits` indexes the weight's rows rather than
running the ``lm_head`` module. Numbers are float32, the head in float32 whatever the backbone's dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from rlhf_rewards.pooling.params import ResolvedPooling


def label_pooling(label_token_ids: Sequence[int], apply_softmax: bool) -> ResolvedPooling:
    """The engine settings of one label read: LAST pooling, the LM head, no activation.

    With ``apply_softmax`` the head multiplies only the distinct label rows (in first-seen order); without
    it, every vocabulary row (the full distribution at the last position is needed for its log-softmax).
    """
    columns = tuple(dict.fromkeys(int(t) for t in label_token_ids)) if apply_softmax else None
    return ResolvedPooling(
        task="classify",
        pooling_type="LAST",
        use_activation=False,
        logit_mean=None,
        logit_sigma=None,
        step_tag_id=None,
        returned_token_ids=columns,
        dimensions=None,
        normalize=False,
    )


def label_probabilities(
    logits: torch.Tensor, label_token_ids: Sequence[int], apply_softmax: bool
) -> torch.Tensor:
    """``[len(label_token_ids)]`` float64 probabilities of the labels, in the order given (repeats allowed).

    ``logits`` is the head's output for one sequence under :func:`label_pooling`: ``[k_distinct]`` label
    logits (``apply_softmax``: softmax over the distinct labels only) or ``[vocab]`` logits (the model's
    probability over the whole vocabulary: ``exp(log_softmax)``, the log-softmax in float32 as vLLM computes
    its logprobs).
    """
    labels = [int(t) for t in label_token_ids]
    if apply_softmax:
        distinct = list(dict.fromkeys(labels))
        probs = torch.softmax(logits.reshape(-1).double(), dim=-1)
        where = {t: i for i, t in enumerate(distinct)}
        return probs[torch.tensor([where[t] for t in labels], dtype=torch.long)]
    logprobs = torch.log_softmax(logits.reshape(-1).float(), dim=-1)
    return logprobs[torch.tensor(labels, dtype=torch.long)].double().exp()


__all__ = ["label_pooling", "label_probabilities"]
