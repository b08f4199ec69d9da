"""A direct decoder loop for the Llama/Qwen2/Qwen3/Mistral families that skips work the poolers never read.

The backbone's own modules run (embedding, rotary embedding, decoder layers, final norm), so weights,
peft-wrapped linears and numerics are the model's. Two things differ from ``backbone(...)``:

- Attention goes through the active :class:`~rlhf_rewards.engine.segment_attention.SegmentPlan`.
- **Last-layer pruning.** In the final decoder layer only the keys and values of every token are needed;
  queries, the attention output projection, the MLP and the final norm run only on the rows the poolers
  read (the last token for LAST, step tags for STEP). For a GRPO batch that is one row per completion.

Families whose decoder layer does anything else are not listed and take the backbone's ``forward``.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

#: Backbone classes whose forward is exactly: embed -> rotary -> decoder layers -> norm, and whose decoder
#: layer is: x + attn(norm(x)), then x + mlp(norm(x)).
DIRECT_FAMILIES: dict[str, str] = {
    "LlamaModel": "LlamaDecoderLayer",
    "Qwen2Model": "Qwen2DecoderLayer",
    "Qwen3Model": "Qwen3DecoderLayer",
    "MistralModel": "MistralDecoderLayer",
}
#: Attention classes whose forward is q/k/v projections (+ optional q_norm/k_norm) -> RoPE -> attention -> o_proj.
_ATTENTION_CLASSES = {"LlamaAttention", "Qwen2Attention", "Qwen3Attention", "MistralAttention"}


def supports_direct(backbone: nn.Module) -> bool:
    """Whether :func:`direct_forward` reproduces ``backbone.forward`` for this model."""
    name = type(backbone).__name__
    layer_name = DIRECT_FAMILIES.get(name)
    if layer_name is None or not type(backbone).__module__.startswith("transformers.models."):
        return False
    config = getattr(backbone, "config", None)
    layers = getattr(backbone, "layers", None)
    if config is None or layers is None or len(layers) == 0:
        return False
    layer_types = getattr(config, "layer_types", None)
    if layer_types is not None and any(t != "full_attention" for t in layer_types):
        return False
    for attr in ("embed_tokens", "rotary_emb", "norm"):
        if not hasattr(backbone, attr):
            return False
    for layer in layers:
        if type(layer).__name__ != layer_name:
            return False
        if type(layer.self_attn).__name__ not in _ATTENTION_CLASSES:
            return False
    return True


def direct_forward(
    backbone: nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Final hidden states ``[T, hidden]`` of a packed row, or only ``rows`` of them (``[len(rows), hidden]``).

    The active segment plan must name the last layer as its ``prune_layer`` when ``rows`` is given.
    """
    hidden = backbone.embed_tokens(input_ids)
    position_embeddings = backbone.rotary_emb(hidden, position_ids)
    layers = backbone.layers[: backbone.config.num_hidden_layers]
    last = len(layers) - 1 if rows is not None else len(layers)
    for layer in layers[:last]:
        hidden = layer(
            hidden,
            attention_mask=None,
            position_ids=position_ids,
            position_embeddings=position_embeddings,
        )
    if rows is None:
        return backbone.norm(hidden)[0]
    layer = layers[last]
    residual = hidden[0].index_select(0, rows)
    attn = _attention_rows(layer.self_attn, layer.input_layernorm(hidden), position_embeddings, rows)
    hidden = residual + attn
    hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    return backbone.norm(hidden)


def _attention_rows(attn: nn.Module, x: torch.Tensor, position_embeddings, rows: torch.Tensor) -> torch.Tensor:
    """The attention block of a Llama-family layer with queries and output projection on ``rows`` only."""
    from rlhf_rewards.engine.segment_attention import segment_attention_forward

    rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
    head_dim = attn.head_dim
    total = x.shape[1]
    k = attn.k_proj(x).view(1, total, -1, head_dim)
    v = attn.v_proj(x).view(1, total, -1, head_dim)
    x_rows = x.index_select(1, rows)
    q = attn.q_proj(x_rows).view(1, rows.numel(), -1, head_dim)
    if hasattr(attn, "q_norm"):
        q = attn.q_norm(q)
        k = attn.k_norm(k)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    cos, sin = position_embeddings
    # Rotate all keys, and the kept queries at their own positions.
    _, k = rope(k, k, cos, sin)
    q, _ = rope(q, q, cos.index_select(1, rows), sin.index_select(1, rows))
    # Scatter the kept queries back to full length so the plan's row bookkeeping applies unchanged.
    full_q = q.new_zeros((1, q.shape[1], total, head_dim))
    full_q[:, :, rows] = q
    out, _ = segment_attention_forward(attn, full_q, k, v, None, scaling=attn.scaling)
    out = out[0].index_select(0, rows).reshape(rows.numel(), -1)
    return attn.o_proj(out)


__all__ = ["DIRECT_FAMILIES", "direct_forward", "supports_direct"]
