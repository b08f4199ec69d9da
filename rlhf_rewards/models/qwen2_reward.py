"""Qwen2.5-Math reward models, loaded natively: ``Qwen2ForRewardModel`` (RM) and ``Qwen2ForProcessRewardModel`` (PRM).

The hub checkpoints (``Qwen/Qwen2.5-Math-RM-72B``, ``Qwen/Qwen2.5-Math-PRM-7B``) have ``"model_type":
"qwen2"`` and an ``auto_map`` pointing at remote modeling code. These classes replace that code: the backbone
is transformers' ``Qwen2Model`` under ``model.`` and the head is ``score = Sequential(Linear(h, h), ReLU(),
Linear(h, num_labels))`` (weights ``score.0.*``, ``score.2.*``), 1 label for the RM and 2 for the PRM.
``from_pretrained`` loads the checkpoints as they are, without ``trust_remote_code``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn
from transformers import Qwen2Config, Qwen2Model, Qwen2PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutputWithPast, TokenClassifierOutput

from rlhf_rewards.models.base import LoadContext, PoolingModel
from rlhf_rewards.models.defaults import embed_defaults
from rlhf_rewards.models.registry import ModelSpec, register
from rlhf_rewards.pooling.config import PoolerConfig

#: The step separator of Qwen2.5-Math-PRM (id 151651 in its tokenizer).
QWEN_PRM_STEP_TAG = "<extra_0>"


class _Qwen2ScoreModel(Qwen2PreTrainedModel):
    """``Qwen2Model`` plus the two-layer ``score`` head of the Qwen2.5-Math reward models."""

    config_class = Qwen2Config
    # Heads load (and stay) in float32 even when the backbone is bf16/fp16.
    _keep_in_fp32_modules_strict: ClassVar[list[str]] = ["score"]
    head_labels: ClassVar[int]

    def __init__(self, config: Qwen2Config) -> None:
        super().__init__(config)
        self.num_labels = self.head_labels
        self.model = Qwen2Model(config)
        h = config.hidden_size
        self.score = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, self.head_labels))
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def token_logits(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        """Head logits for every token, ``[batch, seq, num_labels]``."""
        hidden = self.model(input_ids=input_ids, **kwargs).last_hidden_state
        return self.score(hidden.to(self.score[0].weight.dtype))


class Qwen2ForRewardModel(_Qwen2ScoreModel):
    """Qwen2.5-Math-RM: one reward per token; the reward of a conversation is the last token's.

    ``forward`` returns the last real token's score (``logits`` ``[batch, 1]``), as the remote code does, so
    the model also works where a transformers sequence classifier is expected (TRL ``reward_funcs``).
    """

    head_labels: ClassVar[int] = 1

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> SequenceClassifierOutputWithPast:
        """The reward head's score at every token."""
        logits = self.token_logits(input_ids, attention_mask=attention_mask, **kwargs)
        rows = torch.arange(logits.shape[0], device=logits.device)
        if attention_mask is not None:
            positions = torch.arange(logits.shape[1], device=logits.device)
            last = (positions * attention_mask.to(logits.device, torch.long)).argmax(-1)
        elif input_ids is not None and self.config.pad_token_id is not None:
            positions = torch.arange(logits.shape[1], device=logits.device)
            last = (positions * (input_ids != self.config.pad_token_id).to(logits.device, torch.long)).argmax(
                -1
            )
        else:
            last = torch.full_like(rows, logits.shape[1] - 1)
        return SequenceClassifierOutputWithPast(logits=logits[rows, last])


class Qwen2ForProcessRewardModel(_Qwen2ScoreModel):
    """Qwen2.5-Math-PRM: two logits per token; a step's reward is ``softmax(logits)[1]`` at its ``<extra_0>``.

    ``forward`` returns the per-token logits ``[batch, seq, 2]``, as the remote code does.
    """

    head_labels: ClassVar[int] = 2

    def forward(self, input_ids: torch.Tensor | None = None, **kwargs: Any) -> TokenClassifierOutput:
        """The two-label head's logits at every token."""
        return TokenClassifierOutput(logits=self.token_logits(input_ids, **kwargs))


def load_qwen2_reward(ctx: LoadContext, spec: ModelSpec) -> PoolingModel:
    """Load either Qwen2 reward class with ``from_pretrained`` (no remote code)."""
    cls = _CLASSES[spec.architecture]
    hf_model = ctx.from_pretrained(cls, head="score")
    return PoolingModel(hf_model, spec, backbone_name="model", head_name="score", num_labels=cls.head_labels)


_CLASSES: dict[str, type[_Qwen2ScoreModel]] = {
    "Qwen2ForRewardModel": Qwen2ForRewardModel,
    "Qwen2ForProcessRewardModel": Qwen2ForProcessRewardModel,
}

register(
    ModelSpec(
        architecture="Qwen2ForRewardModel",
        loader=load_qwen2_reward,
        kind="token",
        # vLLM's Qwen2ForRewardModelConfig sets use_activation=False when the user's pooler config leaves it
        # unset: this model's default token_classify output is the raw score (InternLM2's is its sigmoid).
        task_defaults={
            "token_classify": PoolerConfig(pooling_type="ALL", use_activation=False),
            **embed_defaults(),
        },
        description="token reward model (Qwen2.5-Math-RM): raw score per token, the last one is the reward",
    )
)
register(
    ModelSpec(
        architecture="Qwen2ForProcessRewardModel",
        loader=load_qwen2_reward,
        kind="process",
        task_defaults={
            "token_classify": PoolerConfig(pooling_type="STEP", use_activation=True),
            **embed_defaults(),
        },
        default_step_tag=QWEN_PRM_STEP_TAG,
        description="process reward model (Qwen2.5-Math-PRM): softmax over 2 labels at each <extra_0>",
    )
)

__all__ = ["QWEN_PRM_STEP_TAG", "Qwen2ForProcessRewardModel", "Qwen2ForRewardModel", "load_qwen2_reward"]
