"""InternLM2 reward models (``internlm/internlm2-*-reward``), loaded natively with their original weight names.

transformers has no InternLM2 (the checkpoints' ``model_type`` is ``internlm2`` and their ``auto_map`` points
at remote code). This module is a native implementation built from transformers' Llama pieces (RMSNorm,
rotary embedding, attention functions, ``create_causal_mask``) that keeps the checkpoint's module names:
``model.tok_embeddings``, ``model.layers.N.attention.wqkv`` / ``.wo``, ``model.layers.N.feed_forward.w1``
(gate) / ``w3`` (up) / ``w2`` (down), ``attention_norm``, ``ffn_norm``, ``model.norm`` and the reward head
``v_head``. peft adapters trained on the real model (``target_modules=["wqkv", "wo", "w1", ...]``) therefore
load onto it unchanged.

``wqkv`` packs queries, keys and values per KV head: its output rows are laid out as ``[num_kv_heads,
groups + 2, head_dim]`` (the KV head's ``groups`` query heads, then its key, then its value).

The model card appends the reward token (``config.reward_token_id``, 92527 in the real tokenizer) to the
conversation and reads the score at that last token.
"""

import inspect
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig, PreTrainedModel
from transformers.activations import ACT2FN
from transformers.masking_utils import create_causal_mask
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPast, SequenceClassifierOutputWithPast
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.llama.modeling_llama import (
    LlamaRMSNorm,
    LlamaRotaryEmbedding,
    apply_rotary_pos_emb,
    eager_attention_forward,
)

from rlhf_rewards.models.base import LoadContext, PoolingModel
from rlhf_rewards.models.defaults import embed_defaults
from rlhf_rewards.models.registry import ModelSpec, register
from rlhf_rewards.pooling.config import PoolerConfig


class InternLM2Config(PretrainedConfig):
    """Configuration of InternLM2 models (``model_type="internlm2"``), with the fields of the hub ``config.json``.

    Legacy ``rope_theta`` / ``rope_scaling`` (``{"type": "dynamic", "factor": 2.0}``) are converted to
    transformers' ``rope_parameters``. ``bias`` switches the biases of ``wqkv``/``wo``; ``reward_token_id`` is
    the token the reward model card appends before scoring.
    """

    model_type = "internlm2"
    keys_to_ignore_at_inference = ["past_key_values"]
    # transformers' tensor-parallel plan (``DistributedConfig(tp_size=N)``): ``wqkv`` rows are laid out per KV
    # head, so a contiguous column split gives each rank whole KV groups with their query heads.
    base_model_tp_plan = {  # noqa: RUF012 - transformers reads the class attribute
        "tok_embeddings": "embedding_rowwise",
        "layers.*.attention.wqkv": "colwise",
        "layers.*.attention.wo": "rowwise",
        "layers.*.feed_forward.w1": "colwise",
        "layers.*.feed_forward.w3": "colwise",
        "layers.*.feed_forward.w2": "rowwise",
    }

    vocab_size: int = 103168
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    bias: bool = True
    rope_parameters: dict | None = None
    attention_dropout: float = 0.0
    head_dim: int | None = None
    reward_token_id: int | None = None

    def __post_init__(self, **kwargs: Any) -> None:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        super().__post_init__(**kwargs)


class InternLM2MLP(nn.Module):
    """SwiGLU feed-forward: ``w2(act(w1(x)) * w3(x))``."""

    def __init__(self, config: InternLM2Config) -> None:
        super().__init__()
        self.w1 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w3 = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.w2 = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)
        self.act_fn = ACT2FN[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The gated MLP: ``w2(act(w1 x) * w3 x)``."""
        return self.w2(self.act_fn(self.w1(x)) * self.w3(x))


class InternLM2Attention(nn.Module):
    """Grouped-query attention with the packed ``wqkv`` projection and ``wo`` output."""

    def __init__(self, config: InternLM2Config, layer_idx: int) -> None:
        super().__init__()
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        self.num_key_value_groups = self.num_heads // self.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        self.wqkv = nn.Linear(
            config.hidden_size,
            (self.num_heads + 2 * self.num_key_value_heads) * self.head_dim,
            bias=config.bias,
        )
        self.wo = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=config.bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Self-attention over ``hidden_states`` (fused ``wqkv`` projection, rotary positions)."""
        batch, q_len = hidden_states.shape[:2]
        # -1 KV heads: under tensor parallelism ``wqkv`` holds only this rank's KV groups (whole ones, as the
        # rows are laid out per KV head), so the local head counts are read from the shapes.
        qkv = self.wqkv(hidden_states).view(batch, q_len, -1, self.num_key_value_groups + 2, self.head_dim)
        # Query head h * groups + g belongs to KV head h, which is the order repeat_kv expects.
        query = qkv[..., : self.num_key_value_groups, :].reshape(batch, q_len, -1, self.head_dim)
        query = query.transpose(1, 2)
        key = qkv[..., -2, :].transpose(1, 2)
        value = qkv[..., -1, :].transpose(1, 2)
        cos, sin = position_embeddings
        query, key = apply_rotary_pos_emb(query, key, cos, sin)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        out, weights = attention(
            self,
            query,
            key,
            value,
            attention_mask,
            dropout=0.0 if not self.training else self.attention_dropout,
            scaling=self.scaling,
            **kwargs,
        )
        return self.wo(out.reshape(batch, q_len, -1).contiguous()), weights


class InternLM2DecoderLayer(GradientCheckpointingLayer):
    """Pre-norm block: ``attention_norm`` -> ``attention`` -> residual, ``ffn_norm`` -> ``feed_forward`` -> residual."""

    def __init__(self, config: InternLM2Config, layer_idx: int) -> None:
        super().__init__()
        self.attention = InternLM2Attention(config, layer_idx)
        self.feed_forward = InternLM2MLP(config)
        self.attention_norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.ffn_norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        position_embeddings: tuple[torch.Tensor, torch.Tensor],
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """One pre-norm decoder layer: attention, then the MLP, each with a residual."""
        attn, _ = self.attention(
            self.attention_norm(hidden_states), position_embeddings, attention_mask, **kwargs
        )
        hidden_states = hidden_states + attn
        return hidden_states + self.feed_forward(self.ffn_norm(hidden_states))


class InternLM2PreTrainedModel(PreTrainedModel):
    """Shared loading behaviour of the InternLM2 models."""

    config_class = InternLM2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["InternLM2DecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    # The hub checkpoints may carry the unused LM head ``output``.
    _keys_to_ignore_on_load_unexpected = [r"^output\."]


class InternLM2Model(InternLM2PreTrainedModel):
    """The InternLM2 decoder: ``tok_embeddings``, ``layers`` and the final ``norm``."""

    def __init__(self, config: InternLM2Config) -> None:
        super().__init__(config)
        self.padding_idx = config.pad_token_id
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, self.padding_idx)
        self.layers = nn.ModuleList(InternLM2DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config=config)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The token embedding (``tok_embeddings``)."""
        return self.tok_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replace the token embedding."""
        self.tok_embeddings = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs: Any,
    ) -> BaseModelOutputWithPast:
        """Final hidden states. No KV cache: reward models score whole sequences in one pass."""
        if use_cache:
            raise ValueError("InternLM2Model here scores whole sequences; use_cache=True is not supported.")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids or inputs_embeds.")
        if inputs_embeds is None:
            inputs_embeds = self.tok_embeddings(input_ids)
        if position_ids is None:
            position_ids = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device).unsqueeze(0)
        mask = _causal_mask(self.config, inputs_embeds, attention_mask, position_ids)
        hidden_states = inputs_embeds
        position_embeddings = self.rotary_emb(hidden_states, position_ids=position_ids)
        for layer in self.layers:
            hidden_states = layer(
                hidden_states, position_embeddings, mask, position_ids=position_ids, **kwargs
            )
        return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden_states))


class InternLM2ForRewardModel(InternLM2PreTrainedModel):
    """``InternLM2Model`` plus the scalar reward head ``v_head`` (``Linear(h, 1, bias=False)``).

    ``forward`` returns the score at the last position (``logits`` ``[batch, 1]``), as the model card's
    remote code does; inputs should end with ``config.reward_token_id``.
    """

    # The head loads (and stays) in float32 even when the backbone is bf16/fp16.
    _keep_in_fp32_modules_strict = ["v_head"]

    def __init__(self, config: InternLM2Config) -> None:
        super().__init__(config)
        self.model = InternLM2Model(config)
        self.v_head = nn.Linear(config.hidden_size, 1, bias=False)
        self.reward_token_id = config.reward_token_id
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        """The backbone's token embedding."""
        return self.model.tok_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replace the backbone's token embedding."""
        self.model.tok_embeddings = value

    def forward(
        self, input_ids: torch.Tensor | None = None, **kwargs: Any
    ) -> SequenceClassifierOutputWithPast:
        """The reward head's score at every token."""
        hidden = self.model(input_ids=input_ids, **kwargs).last_hidden_state
        scores = self.v_head(hidden[:, -1].to(self.v_head.weight.dtype))
        return SequenceClassifierOutputWithPast(logits=scores)


def _causal_mask(
    config: InternLM2Config,
    embeds: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor,
) -> Any:
    """``create_causal_mask`` across transformers 5.x, whose keyword names changed between releases."""
    values = {
        "config": config,
        "inputs_embeds": embeds,
        "input_embeds": embeds,
        "attention_mask": attention_mask,
        "cache": None,
        "past_key_values": None,
        "position_ids": position_ids,
        "cache_position": torch.arange(embeds.shape[1], device=embeds.device),
    }
    return create_causal_mask(**{name: values[name] for name in _MASK_PARAMS if name in values})


_MASK_PARAMS = tuple(inspect.signature(create_causal_mask).parameters)


def load_internlm2_config(model: str, config_dict: dict, kwargs: dict) -> InternLM2Config:
    """Build the config from the raw ``config.json`` (``auto_map`` and remote code are ignored)."""
    data = {k: v for k, v in config_dict.items() if k not in ("auto_map", "model_type")}
    if data.get("attn_implementation") == "eager":
        # The remote code's name for its plain attention; let transformers pick SDPA (same math, faster).
        data.pop("attn_implementation")
    return InternLM2Config(**data)


def load_internlm2_reward(ctx: LoadContext, spec: ModelSpec) -> PoolingModel:
    """Load ``InternLM2ForRewardModel`` with ``from_pretrained`` (no remote code)."""
    hf_model = ctx.from_pretrained(InternLM2ForRewardModel, head="v_head")
    return PoolingModel(hf_model, spec, backbone_name="model", head_name="v_head", num_labels=1)


# transformers' Auto classes learn the model type too, so AutoConfig works on these checkpoints without
# trust_remote_code (the checkpoints' own auto_map is only used when trust_remote_code=True).
AutoConfig.register("internlm2", InternLM2Config, exist_ok=True)

register(
    ModelSpec(
        architecture="InternLM2ForRewardModel",
        loader=load_internlm2_reward,
        kind="token",
        task_defaults={
            "token_classify": PoolerConfig(pooling_type="ALL", use_activation=True),
            **embed_defaults(),
        },
        config_loader=load_internlm2_config,
        description="token reward model (InternLM2-Reward): raw score per token; append reward_token_id",
    )
)

__all__ = [
    "InternLM2Config",
    "InternLM2ForRewardModel",
    "InternLM2Model",
    "InternLM2PreTrainedModel",
    "load_internlm2_config",
    "load_internlm2_reward",
]
