"""``as_trl_reward_model``: any reward worker as the ``reward_model`` of TRL's PPOTrainer.

TRL's PPOTrainer (last shipped in trl 1.12.0 as ``trl.experimental.ppo.PPOTrainer``; removed in 1.13)
scores rollouts with ``get_reward(model, query_responses, pad_token_id, context_length)``
(``trl.experimental.utils.get_reward`` there, ``trl.trainer.utils.get_reward`` up to 0.26 — same body),
which does::

    attention_mask = query_responses != pad_token_id
    backbone = getattr(model, model.base_model_prefix)
    output = backbone(input_ids=..., attention_mask=..., position_ids=..., return_dict=True,
                      output_hidden_states=True, use_cache=False)
    reward_logits = model.score(output.hidden_states[-1])          # [B, T, 1]
    final = reward_logits[arange(B), last_non_pad_index].squeeze(-1)  # [B]

The module returned here meets that contract without a local transformers model: its "backbone" sends
each sequence (the non-pad tokens) to the reward worker and returns the sequence's reward at every
position as a ``[B, T, 1]`` "hidden state"; ``score`` is the identity. So whatever index ``get_reward``
reads, it gets the reward of the whole query + response.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPast, SequenceClassifierOutput

from rlhf_rewards.reward.function import RewardFunction, RewardFunctionError


class TRLRewardModel(nn.Module):
    """A reward worker behind the ``nn.Module`` interface that TRL's PPO ``get_reward`` expects.

    Build it with :func:`as_trl_reward_model`. Calling it directly as ``model(input_ids, attention_mask)``
    returns a ``SequenceClassifierOutput`` with ``logits`` of shape ``[B, 1]`` (the reward of each row).
    """

    base_model_prefix = "backbone"

    def __init__(
        self,
        reward_function: RewardFunction,
        tokenizer: Any = None,
        *,
        skip_special_tokens: bool = True,
        missing_reward: float | None = None,
    ) -> None:
        super().__init__()
        if reward_function.kind == "process":
            raise ValueError(
                f"{reward_function.__name__}: a process reward model cannot back PPO's reward_model, because "
                "get_reward passes no prompt/response boundary to split the response into steps. Use "
                "RewardFunction with GRPOTrainer/RLOOTrainer for step rewards."
            )
        self.reward_function = reward_function
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.missing_reward = missing_reward
        self.backbone = _RewardBackbone(self.sequence_rewards)
        self.score = nn.Identity()

    @property
    def name(self) -> str:
        """The reward function's name."""
        return self.reward_function.__name__

    def sequence_rewards(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The reward of each row's attended tokens, as a float32 tensor ``[B]`` on ``input_ids``' device."""
        if input_ids.dim() != 2:
            raise ValueError(
                f"{self.name}: input_ids must be [batch, seq_len], got {tuple(input_ids.shape)}."
            )
        mask = (
            torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )
        rows = [ids[m].tolist() for ids, m in zip(input_ids.cpu(), mask.cpu(), strict=True)]
        if self.tokenizer is None:
            rewards = self.reward_function.score_token_ids(rows)
        else:
            texts = self.tokenizer.batch_decode(rows, skip_special_tokens=self.skip_special_tokens)
            rewards = self.reward_function([""] * len(texts), texts)
        missing = [i for i, r in enumerate(rewards) if r is None]
        if missing:
            if self.missing_reward is None:
                raise RewardFunctionError(
                    f"{self.name}: rows {missing} could not be scored (see the warning above) and PPO needs a "
                    "number for every row; pass truncate=True or missing_reward=<float> to as_trl_reward_model."
                )
            rewards = [self.missing_reward if r is None else r for r in rewards]
        return torch.tensor(rewards, dtype=torch.float32, device=input_ids.device)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any
    ) -> SequenceClassifierOutput:
        """``logits[:, 0]`` is the reward of each row (like a one-label sequence classifier)."""
        return SequenceClassifierOutput(logits=self.sequence_rewards(input_ids, attention_mask).unsqueeze(-1))


class _RewardBackbone(nn.Module):
    """The ``getattr(model, model.base_model_prefix)`` part of the contract."""

    def __init__(self, rewards_fn: Any) -> None:
        super().__init__()
        self._rewards_fn = rewards_fn  # a bound method: not registered as a submodule (no cycle)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        rewards = self._rewards_fn(input_ids, attention_mask)
        hidden = rewards[:, None, None].expand(input_ids.shape[0], input_ids.shape[1], 1)
        return BaseModelOutputWithPast(last_hidden_state=hidden, hidden_states=(hidden,))


def as_trl_reward_model(
    source: Any,
    *,
    tokenizer: Any = None,
    skip_special_tokens: bool = True,
    missing_reward: float | None = None,
    **reward_function_kwargs: Any,
) -> TRLRewardModel:
    """Wrap a reward model (path/id, ``LLM``, worker or ``RewardFunction``) as PPOTrainer's ``reward_model``.

    Args:
        source: Anything :class:`RewardFunction` accepts, or a ``RewardFunction`` (its settings are used).
        tokenizer: The policy's tokenizer, when it differs from the reward model's: each sequence is
            decoded with it and scored as text by the reward model's own tokenizer. Default ``None``: the
            policy shares the reward model's tokenizer and token ids are scored as they are.
        skip_special_tokens: When decoding with ``tokenizer``, drop special tokens. Default True.
        missing_reward: The reward of a sequence the model cannot score (e.g. over-long with
            ``truncate=False``). Default ``None``: raise, since PPO cannot skip a row.
        **reward_function_kwargs: Passed to :class:`RewardFunction`: a ``config``
            (:class:`~rlhf_rewards.reward.config.RewardFunctionConfig`) and/or its fields (``kind``,
            ``lora``, ``truncate``, ``reward_scale``, ``llm_kwargs``...). Outcome and token reward models only.

    Returns:
        A :class:`TRLRewardModel`; pass it as ``PPOTrainer(reward_model=...)``.
    """
    if isinstance(source, RewardFunction):
        if reward_function_kwargs:
            raise ValueError("pass RewardFunction settings either in the RewardFunction or here, not both.")
        rf = source
    else:
        rf = RewardFunction(source, **reward_function_kwargs)
    return TRLRewardModel(
        rf, tokenizer, skip_special_tokens=skip_special_tokens, missing_reward=missing_reward
    )


__all__ = ["TRLRewardModel", "as_trl_reward_model"]
