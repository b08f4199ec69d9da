"""A direct decoder loop for the Llama/Qwen2/Qwen3/Mistral families that skips work the poolers never read.

The backbone's own modules run (embedding, rotary embedding, projections), so weights and peft-wrapped
linears are the model's; the families' RMSNorm, RoPE and gated MLP run as the same formulas, bit for bit,
in place (:mod:`~rlhf_rewards.engine.rowwise`). The loop drives each decoder layer by
hand, as the family's ``DecoderLayer.forward`` does (``x + attn(norm(x))``, then ``x + mlp(norm(x))``), and
differs from ``backbone(...)`` in three ways:

- Attention goes through the active :class:`~rlhf_rewards.engine.attention.plan.SegmentPlan`.
- **Row chunks on CPU.** Norms, projections, RoPE and the MLP are row-wise, so they run in chunks of
  :data:`CPU_ROW_CHUNK` rows whose activations stay in cache; only attention sees the whole packed row.
- **Last-layer pruning.** In the final decoder layer only the keys and values of every token are needed;
  queries, the attention output projection, the MLP and the final norm run only on the rows the poolers
  read (the last token for LAST, step tags for STEP). For a GRPO batch that is one row per completion.

- **Deterministic mode** (``deterministic=True``): every row-wise call runs on fixed tiles of
  :data:`~rlhf_rewards.engine.deterministic.ROW_TILE` rows (the last one zero-padded), RoPE angles come
  from a fixed table, and the embedding too is looked up per tile (a LoRA'd embedding multiplies), so a
  row's numbers never depend on the other rows of the forward (:mod:`~rlhf_rewards.engine.deterministic`).

Families whose decoder layer does anything else are not listed and take the backbone's ``forward``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from rlhf_rewards.engine import deterministic as det
from rlhf_rewards.engine import rowwise
from rlhf_rewards.engine.attention.blocked import BlockedLayout, deterministic_layout
from rlhf_rewards.engine.attention.interface import segment_attention_forward
from rlhf_rewards.engine.attention.plan import SegmentAttentionUnsupported
from rlhf_rewards.engine.packed_linear import project, project_qkv

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


#: On CPU the row-wise work of a layer (norms, projections, RoPE, MLP) runs in chunks of this many rows.
#: A packed row of 16k tokens has MLP activations of ``16k x intermediate`` floats, far larger than the
#: caches, so the element-wise kernels between the matmuls run at memory speed; 2048-row chunks keep them
#: in cache, which is what makes them fast on a CPU. GPUs take whole rows.
CPU_ROW_CHUNK = 2048


def _chunks(total: int, device: torch.device) -> list[tuple[int, int]]:
    if device.type != "cpu" or total <= CPU_ROW_CHUNK:
        return [(0, total)]
    return [(s, min(s + CPU_ROW_CHUNK, total)) for s in range(0, total, CPU_ROW_CHUNK)]


def _sliding_window(attn: nn.Module) -> int | None:
    """The window the model's own attention forward would pass (segment attention rejects one)."""
    if type(attn).__name__ == "MistralAttention":
        return getattr(attn.config, "sliding_window", None)
    return getattr(attn, "sliding_window", None)


def _heads(attn: nn.Module, projected: torch.Tensor) -> torch.Tensor:
    """``[1, n, heads * head_dim]`` -> ``[1, n, heads, head_dim]`` (a view)."""
    return projected.view(1, projected.shape[1], -1, attn.head_dim)


def _rotated(attn: nn.Module, projected: torch.Tensor, norm: str, cos, sin) -> torch.Tensor:
    """Queries or keys ``[1, heads, n, head_dim]`` of a projection: its per-head norm (Qwen3's ``q_norm`` /
    ``k_norm``) if the attention has one, then RoPE (``sin`` signed)."""
    x = _heads(attn, projected)
    if hasattr(attn, norm):
        x = rowwise.rms_norm(getattr(attn, norm), x)
    return rowwise.rotate(x.transpose(1, 2), cos, sin)


def _keys_values(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """Rotated keys and values of ``x [1, n, hidden]``: ``[1, kv_heads, n, head_dim]`` (``sin`` signed)."""
    k = _rotated(attn, project(attn.k_proj, x), "k_norm", cos, sin)
    return k, _heads(attn, project(attn.v_proj, x)).transpose(1, 2)


def _queries(attn: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotated queries of ``x [1, n, hidden]``: ``[1, heads, n, head_dim]`` (``sin`` signed)."""
    return _rotated(attn, project(attn.q_proj, x), "q_norm", cos, sin)


def _layer(
    layer: nn.Module,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    chunks,
    compile: bool = False,
) -> torch.Tensor:
    """One decoder layer over the packed row: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""
    attn = layer.self_attn
    total = hidden.shape[1]
    pre, post = _block_functions(compile)
    parts = [pre(layer, hidden[:, s:e], cos[:, s:e], sin[:, s:e]) for s, e in chunks]
    q, k, v = (torch.cat(t, dim=2) if len(parts) > 1 else t[0] for t in zip(*parts, strict=True))
    del parts
    out, _ = segment_attention_forward(
        attn, q, k, v, None, scaling=attn.scaling, sliding_window=_sliding_window(attn)
    )
    out = out.reshape(1, total, -1)
    del q, k, v
    if len(chunks) == 1:
        return post(layer, hidden, out)
    result = torch.empty_like(hidden)
    for s, e in chunks:
        result[:, s:e] = post(layer, hidden[:, s:e], out[:, s:e])
    return result


def _pre_attention(layer: nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    attn = layer.self_attn
    qk, v, q_width = project_qkv(attn, rowwise.rms_norm(layer.input_layernorm, x))
    values = _heads(attn, v).transpose(1, 2)
    # Queries and keys go through their norms and RoPE as one tensor: half the kernel calls, same numbers.
    q_heads = q_width // attn.head_dim
    both = _heads(attn, qk)
    if hasattr(attn, "q_norm") or hasattr(attn, "k_norm"):
        normed = (
            rowwise.head_norms(attn.q_norm, attn.k_norm, both, q_heads)
            if hasattr(attn, "q_norm") and hasattr(attn, "k_norm")
            else None
        )
        if normed is None:
            q, k = qk[..., :q_width], qk[..., q_width:]
            return _rotated(attn, q, "q_norm", cos, sin), _rotated(attn, k, "k_norm", cos, sin), values
        both = normed
    both = rowwise.rotate(both.transpose(1, 2), cos, sin)
    return both[:, :q_heads], both[:, q_heads:], values


def _post_attention(layer: nn.Module, residual: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
    # The projections' outputs are fresh tensors, so the residual adds go in place (same sums).
    x = project(layer.self_attn.o_proj, attn_out).add_(residual)
    return rowwise.gated_mlp(layer.mlp, rowwise.rms_norm(layer.post_attention_layernorm, x)).add_(x)


_COMPILED: dict[str, Any] = {}


def _block_functions(compile: bool):
    """The row-wise halves of a layer, eager or through ``torch.compile`` (one graph serves every layer)."""
    if not compile:
        return _pre_attention, _post_attention
    if not _COMPILED:
        # Row counts vary with every call: mark them dynamic up front instead of recompiling per shape.
        _COMPILED["pre"] = torch.compile(_pre_attention, dynamic=True)
        _COMPILED["post"] = torch.compile(_post_attention, dynamic=True)
    return _COMPILED["pre"], _COMPILED["post"]


def direct_forward(
    backbone: nn.Module,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    rows: torch.Tensor | None = None,
    compile: bool = False,
    deterministic: bool = False,
) -> torch.Tensor:
    """Final hidden states ``[T, hidden]`` of a packed row, or only ``rows`` of them (``[len(rows), hidden]``).

    The active segment plan must name the last layer as its ``prune_layer`` when ``rows`` is given. With
    ``compile``, the row-wise halves of each layer run through ``torch.compile`` (attention stays eager).
    With ``deterministic``, every row-wise call runs on fixed row tiles (``compile`` is not allowed; the
    active plan should be deterministic too, so attention is blocked).
    """
    if deterministic:
        if compile:
            raise ValueError("direct_forward: deterministic=True runs eagerly; compile must be False.")
        return _deterministic_forward(backbone, input_ids, position_ids, rows)
    hidden = backbone.embed_tokens(input_ids)
    cos, sin = backbone.rotary_emb(hidden, position_ids)
    sin = rowwise.signed_sin(sin)
    chunks = _chunks(hidden.shape[1], hidden.device)
    layers = backbone.layers[: backbone.config.num_hidden_layers]
    last = len(layers) - 1 if rows is not None else len(layers)
    for layer in layers[:last]:
        hidden = _layer(layer, hidden, cos, sin, chunks, compile)
    if rows is None:
        return rowwise.rms_norm(backbone.norm, hidden)[0]
    layer = layers[last]
    residual = hidden[0].index_select(0, rows)
    hidden = _attention_rows(layer, hidden, cos, sin, rows, chunks).add_(residual)
    hidden = rowwise.gated_mlp(layer.mlp, rowwise.rms_norm(layer.post_attention_layernorm, hidden)).add_(
        hidden
    )
    return rowwise.rms_norm(backbone.norm, hidden)


def _attention_rows(
    layer: nn.Module, hidden: torch.Tensor, cos, sin, rows: torch.Tensor, chunks
) -> torch.Tensor:
    """The attention block of a Llama-family layer with queries and output projection on ``rows`` only."""
    attn = layer.self_attn
    total = hidden.shape[1]
    # Keys and values of every token; queries only for the kept rows, rotated at their own positions.
    parts = [
        _keys_values(attn, rowwise.rms_norm(layer.input_layernorm, hidden[:, s:e]), cos[:, s:e], sin[:, s:e])
        for s, e in chunks
    ]
    k, v = (torch.cat(t, dim=2) if len(parts) > 1 else t[0] for t in zip(*parts, strict=True))
    del parts
    x_rows = rowwise.rms_norm(layer.input_layernorm, hidden.index_select(1, rows))
    q = _queries(attn, x_rows, cos.index_select(1, rows), sin.index_select(1, rows))
    # Scatter the kept queries back to full length so the plan's row bookkeeping applies unchanged.
    full_q = q.new_zeros((1, q.shape[1], total, attn.head_dim))
    full_q[:, :, rows] = q
    out, _ = segment_attention_forward(
        attn, full_q, k, v, None, scaling=attn.scaling, sliding_window=_sliding_window(attn)
    )
    out = out[0].index_select(0, rows).reshape(rows.numel(), -1)
    return project(attn.o_proj, out)


def _deterministic_forward(
    backbone: nn.Module, input_ids: torch.Tensor, position_ids: torch.Tensor, rows: torch.Tensor | None
) -> torch.Tensor:
    """:func:`direct_forward` with every row-wise call on tiles of exactly ``ROW_TILE`` rows."""
    tile = det.ROW_TILE
    total = input_ids.shape[1]
    spans = det.tiles(total, tile)
    # Padding tokens of the last tile are id 0: their rows are discarded, and a lookup is a lookup.
    hidden = det.tiled_rows(backbone.embed_tokens, input_ids, tile, dim=1)
    cos, sin = det.rope_lookup(backbone.rotary_emb, hidden, position_ids)
    sin = rowwise.signed_sin(sin)
    layers = backbone.layers[: backbone.config.num_hidden_layers]
    last = len(layers) - 1 if rows is not None else len(layers)
    for layer in layers[:last]:
        hidden = _deterministic_layer(layer, hidden, cos, sin, spans)
    if rows is None:
        return _tiled_norm(backbone.norm, hidden, spans)[0]
    layer = layers[last]
    attn = layer.self_attn
    layout = _blocked_layout(attn, hidden.device)
    for s, e in spans:  # keys and values of every row
        h = rowwise.rms_norm(layer.input_layernorm, det.tile_rows(hidden, s, e, tile))
        k, v = _keys_values(attn, h, det.tile_rows(cos, s, e, tile), det.tile_rows(sin, s, e, tile))
        layout.write_keys(s, k[0, :, : e - s].transpose(0, 1), v[0, :, : e - s].transpose(0, 1))
    kept = hidden.index_select(1, rows)
    cos_r, sin_r = cos.index_select(1, rows), sin.index_select(1, rows)
    kept_spans = det.tiles(rows.numel(), tile)
    for s, e in kept_spans:  # queries of the kept rows only
        x = rowwise.rms_norm(layer.input_layernorm, det.tile_rows(kept, s, e, tile))
        q = _queries(attn, x, det.tile_rows(cos_r, s, e, tile), det.tile_rows(sin_r, s, e, tile))
        layout.write_queries(q[0, :, : e - s].transpose(0, 1), rows=rows[s:e])
    out = layout.attend(attn.scaling).view(total, -1).index_select(0, rows).unsqueeze(0)
    result = torch.empty_like(kept)
    for s, e in kept_spans:
        y = _post_attention(layer, det.tile_rows(kept, s, e, tile), det.tile_rows(out, s, e, tile))
        result[:, s:e] = y[:, : e - s]
    return _tiled_norm(backbone.norm, result, kept_spans)[0]


def _blocked_layout(attn: nn.Module, device: torch.device) -> BlockedLayout:
    """The active deterministic plan's layout for this attention layer (counted as its attention call)."""
    if _sliding_window(attn) is not None:
        raise SegmentAttentionUnsupported("segment attention does not implement `sliding_window`")
    return deterministic_layout(attn, device)


def _tiled_norm(norm: nn.Module, hidden: torch.Tensor, spans) -> torch.Tensor:
    result = torch.empty_like(hidden)
    for s, e in spans:
        result[:, s:e] = rowwise.rms_norm(norm, det.tile_rows(hidden, s, e, det.ROW_TILE))[:, : e - s]
    return result


def _deterministic_layer(layer: nn.Module, hidden: torch.Tensor, cos, sin, spans) -> torch.Tensor:
    """:func:`_layer` on fixed row tiles, with queries/keys/values written straight into the blocked layout."""
    tile = det.ROW_TILE
    attn = layer.self_attn
    total = hidden.shape[1]
    layout = _blocked_layout(attn, hidden.device)
    for s, e in spans:
        q, k, v = _pre_attention(
            layer,
            det.tile_rows(hidden, s, e, tile),
            det.tile_rows(cos, s, e, tile),
            det.tile_rows(sin, s, e, tile),
        )
        n = e - s
        layout.write_keys(s, k[0, :, :n].transpose(0, 1), v[0, :, :n].transpose(0, 1))
        layout.write_queries(q[0, :, :n].transpose(0, 1), start=s)
    out = layout.attend(attn.scaling).view(1, total, -1)
    result = torch.empty_like(hidden)
    for s, e in spans:
        y = _post_attention(layer, det.tile_rows(hidden, s, e, tile), det.tile_rows(out, s, e, tile))
        result[:, s:e] = y[:, : e - s]
    return result


__all__ = ["DIRECT_FAMILIES", "direct_forward", "supports_direct"]
