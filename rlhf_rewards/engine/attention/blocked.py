"""The blocked backend of segment attention: batch-invariant, for deterministic mode.

Queries are grouped in tiles of :data:`KEY_BLOCK` sequence positions, aligned to position 0 of their
sequence; the tile at block ``b`` attends to the keys at sequence positions ``[0, (b + 1) * KEY_BLOCK)`` of
its own sequence under a fixed mask that hides the keys after each query. Each sequence's keys (a shared
prefix's read from the prefix's rows) are gathered once per layer into one zero-padded context, and a tile's
keys are a view of it. The call is PyTorch's CPU flash kernel, whose work is split per ``(batch item, head,
query chunk)`` and whose loop over keys runs in blocks anchored at key 0: the sum a query sees is a function
of its position and its own keys only, whether its prefix is shared or not, and whatever else is in the call.
Masked keys contribute exact zeros, so what sits in masked slots (zero padding) is never read into a result,
and a query row never mixes with the other rows of its tile (the kernel's matmuls are row-independent), so a
tile is a window of the packed queries. On the CPU each tile is its own call on views; elsewhere tiles with
the same ``b`` run as one batched call (a launch costs more than a gather there); the numbers are the same
(``tests/engine/test_deterministic.py``). The buffers live in the engine's
:class:`~rlhf_rewards.engine.attention.plan.Workspace`, reused by every layer and forward.

The rest of deterministic mode (row tiles, the RoPE table, tiled heads) is :mod:`~rlhf_rewards.engine.deterministic`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from rlhf_rewards.engine.attention.plan import (
    Segment,
    SegmentAttentionUnsupported,
    SegmentPlan,
    Workspace,
    current_plan,
    layer_index,
)

#: Keys per attention block; also the query positions per attention tile.
KEY_BLOCK = 32
#: Most gathered key rows per batched attention call (bounds the transient copy of keys/values).
MAX_CALL_KEYS = 32768


@dataclass(eq=False)
class _Call:
    block: int  # b: the tiles attend to keys [0, (b + 1) * KEY_BLOCK) of their sequences
    tiles: int
    q_index: torch.Tensor  # [tiles * KEY_BLOCK] rows of the query buffer
    k_index: torch.Tensor  # [tiles * (b + 1) * KEY_BLOCK] rows of the key buffer (``total``: the zero row)
    out_rows: torch.Tensor  # packed row of every slot (``total``: the trash row)


class BlockedLayout:
    """The attention tiles of one packed row (built once per forward, reused by every layer).

    A *tile* is the :data:`KEY_BLOCK` query positions ``[b * KEY_BLOCK, (b + 1) * KEY_BLOCK)`` of one
    sequence; it attends to that sequence's keys at positions ``[0, (b + 1) * KEY_BLOCK)``. Each sequence's
    context (shared prefix + own rows, zero-padded to whole blocks) is gathered once per layer into one
    buffer; a tile's keys are a view of it. The caller writes token-major queries, keys and values into the
    layout's buffers (:meth:`write_queries`, :meth:`write_keys`), then :meth:`attend`.

    A query tile is a window of the token-major query buffer (the sequence's rows around it are other texts'
    queries, or zero padding): a query's result depends only on its own row, its keys and its mask row, since
    the kernel's matmuls treat query rows independently. How tiles reach the kernel depends on the device,
    never the numbers:

    - **CPU**: one call per tile, on views (no copies per tile).
    - **Elsewhere** (``batched``): tiles with the same block run as one call on gathered rows, because a
      kernel launch costs more there than a gather.

    Args:
        segments: The plan's segments.
        total: Rows in the packed row.
        pruned: Use each segment's ``rows`` (the only queries a pruned layer needs).
        device: Where the index tensors live.
        batched: Batch tiles by block (default: on every device but the CPU).
        workspace: Scratch buffers to share with the forward's other layouts.
        external_rows: Key rows held outside the packed row (cross-call cached prefixes), written with
            :meth:`write_external` at buffer rows ``total + 1 ...``; segments' ``prefix`` ranges address them
            there.
    """

    def __init__(
        self,
        segments: list[Segment],
        total: int,
        pruned: bool,
        device: torch.device,
        batched: bool | None = None,
        workspace: Workspace | None = None,
        external_rows: int = 0,
    ) -> None:
        block = KEY_BLOCK
        self.total = total
        self.external_rows = external_rows
        #: Called by :meth:`attend` (then cleared) with this layer's keys and values ``[kv_heads, total, d]``.
        self.capture = None
        self.pruned = pruned
        self.batched = device.type != "cpu" if batched is None else batched
        self.workspace = workspace if workspace is not None else Workspace()
        k_parts: list[np.ndarray] = []
        owned: list[np.ndarray] = []
        #: ``(query buffer row, context offset, b, first owned slot, end owned slot, first packed row)``.
        self.tiles: list[tuple[int, int, int, int, int, int]] = []
        k_off = 0
        for seg in segments:
            if pruned and seg.rows is not None:
                offsets = seg.rows.cpu().numpy().astype(np.int64)
                if offsets.size == 0:
                    continue
            else:
                offsets = np.arange(seg.length, dtype=np.int64)
            context = np.concatenate(
                [np.arange(s, e, dtype=np.int64) for s, e in seg.prefix]
                + [np.arange(seg.start, seg.end, dtype=np.int64)]
            )
            prefix = seg.prefix_length
            positions = prefix + offsets
            owned.append(seg.start + offsets)
            blocks = positions // block
            n_keys = int(blocks.max() + 1) * block
            keys = np.arange(n_keys)
            k_parts.append(np.where(keys < context.size, context[np.minimum(keys, context.size - 1)], total))
            for b in np.unique(blocks).tolist():
                here = positions[blocks == b]
                lo, hi = int(here.min()) - b * block, int(here.max()) + 1 - b * block
                # Query buffer row of the tile's slot 0 (the buffer has KEY_BLOCK zero rows before row 0).
                self.tiles.append(
                    (
                        block + seg.start + b * block - prefix,
                        k_off,
                        b,
                        lo,
                        hi,
                        seg.start + b * block + lo - prefix,
                    )
                )
            k_off += n_keys
        self.k_index = torch.from_numpy(np.concatenate(k_parts) if k_parts else np.zeros(0, np.int64)).to(
            device
        )
        self._owned = np.concatenate(owned) if owned else np.zeros(0, np.int64)
        self._calls: list[_Call] | None = None
        self._views: list | None = None
        self._views_on: tuple[int, ...] = ()
        self._masks: dict[tuple[int, torch.dtype], torch.Tensor] = {}
        self._q = self._k = self._v = None

    # ------------------------------------------------------------------ buffers
    def write_queries(self, queries: torch.Tensor, start: int = 0, rows: torch.Tensor | None = None) -> None:
        """Token-major ``queries [n, heads, d]`` of packed rows ``start..start+n``, or of ``rows`` when given."""
        shape = (self.total + 2 * KEY_BLOCK, *queries.shape[1:])
        q = self._q
        if q is None or q.shape != shape or q.dtype != queries.dtype or q.device != queries.device:
            # KEY_BLOCK rows on each side, so every tile is a window of the buffer. What a window holds beyond
            # its sequence's rows is never read into a result (finite: zeros or earlier queries).
            q = self._q = self.workspace.get("q", shape, queries, zero_new=True)
        if rows is None:
            q[KEY_BLOCK + start : KEY_BLOCK + start + queries.shape[0]].copy_(queries)
        else:
            q.index_copy_(0, rows + KEY_BLOCK, queries)

    def write_keys(self, start: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Token-major ``keys/values [n, kv_heads, d]`` of packed rows ``start..start+n``."""
        self._key_buffers(keys, values)
        self._k[start : start + keys.shape[0]].copy_(keys)
        self._v[start : start + keys.shape[0]].copy_(values)

    def write_external(self, address: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Token-major cached ``keys/values [n, kv_heads, d]`` at buffer rows ``address..address+n``
        (``address > total``)."""
        self._key_buffers(keys, values)
        self._k[address : address + keys.shape[0]].copy_(keys)
        self._v[address : address + keys.shape[0]].copy_(values)

    def _key_buffers(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        shape = (self.total + 1 + self.external_rows, *keys.shape[1:])
        if (
            self._k is None
            or self._k.shape != shape
            or self._k.dtype != keys.dtype
            or self._k.device != keys.device
        ):
            self._k = self.workspace.get("k", shape, keys)
            self._v = self.workspace.get("v", shape, values)
            self._k[self.total].zero_()  # row ``total``: the zero row of padded contexts
            self._v[self.total].zero_()

    def mask(self, b: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Additive ``[1, 1, KEY_BLOCK, (b + 1) * KEY_BLOCK]`` mask: slot ``i`` sees keys ``<= b * KEY_BLOCK + i``."""
        key = (b, dtype)
        if key not in self._masks:
            self._masks[key] = causal_block_mask(b, dtype, device)
        return self._masks[key]

    # ------------------------------------------------------------------ attention
    def attend(self, scale: float | None) -> torch.Tensor:
        """Attention of every tile from the written buffers: ``[total, heads, d]`` token-major.

        Rows no tile owns (the rows a pruned layer skips) hold unspecified values.
        """
        q, k, v = self._q, self._k, self._v
        if q is None or k is None or v is None:
            raise RuntimeError(
                "BlockedLayout.attend: write the queries (write_queries) and keys (write_keys) first"
            )
        heads, kv_heads, head_dim = q.shape[1], k.shape[1], q.shape[2]
        total, block, ws = self.total, KEY_BLOCK, self.workspace
        if self.capture is not None:
            capture, self.capture = self.capture, None
            capture(k[:total].transpose(0, 1), v[:total].transpose(0, 1))
        n_k = self.k_index.numel()
        ks = torch.index_select(k, 0, self.k_index, out=ws.get("ks", (n_k, kv_heads, head_dim), k))
        vs = torch.index_select(v, 0, self.k_index, out=ws.get("vs", (n_k, kv_heads, head_dim), v))
        out = ws.get(
            "out", (total + 1, heads, head_dim), q
        )  # +1: the trash row of batched calls' empty slots
        if self.batched:
            for call in self.calls(q.device):
                n, keys = call.tiles, (call.block + 1) * block
                qc = q.index_select(0, call.q_index).view(n, block, heads, head_dim).transpose(1, 2)
                kc = ks.index_select(0, call.k_index).view(n, keys, kv_heads, head_dim).transpose(1, 2)
                vc = vs.index_select(0, call.k_index).view(n, keys, kv_heads, head_dim).transpose(1, 2)
                res = _kernel(qc, kc, vc, self.mask(call.block, q.dtype, q.device), scale)
                out.index_copy_(0, call.out_rows, res.transpose(1, 2).reshape(n * block, heads, head_dim))
            return out[:total]
        on = (q.data_ptr(), ks.data_ptr(), vs.data_ptr(), out.data_ptr())
        if self._views is None or self._views_on != on:
            # Views stay valid for every layer: the buffers are written in place (and rebuilt here if another
            # layout of the forward grew a shared buffer).
            self._views_on = on
            self._views = []
            for q_row, k_off, b, lo, hi, row in self.tiles:
                keys = (b + 1) * block
                self._views.append(
                    (
                        q[q_row : q_row + block].unsqueeze(0).transpose(1, 2),
                        ks[k_off : k_off + keys].unsqueeze(0).transpose(1, 2),
                        vs[k_off : k_off + keys].unsqueeze(0).transpose(1, 2),
                        self.mask(b, q.dtype, q.device),
                        lo,
                        hi,
                        out[row : row + hi - lo],
                    )
                )
        for qt, kt, vt, mask, lo, hi, dst in self._views:
            dst.copy_(_kernel(qt, kt, vt, mask, scale)[0, :, lo:hi].transpose(0, 1))
        return out[:total]

    def owned_rows(self, device: torch.device) -> torch.Tensor:
        """The packed rows whose attention is computed (every row, or a pruned layer's kept rows)."""
        return torch.from_numpy(self._owned).to(device)

    def calls(self, device: torch.device) -> list[_Call]:
        """The batched calls (tiles grouped by block, at most :data:`MAX_CALL_KEYS` gathered keys each)."""
        if self._calls is None:
            block = KEY_BLOCK
            by_block: dict[int, list[tuple[int, int, int, int, int]]] = {}
            for q_row, k_off, b, lo, hi, row in self.tiles:
                by_block.setdefault(b, []).append((q_row, k_off, lo, hi, row))
            self._calls = []
            slots = np.arange(block)
            for b in sorted(by_block):
                items = by_block[b]
                keys = (b + 1) * block
                per_call = max(1, MAX_CALL_KEYS // keys)
                for i in range(0, len(items), per_call):
                    chunk = items[i : i + per_call]
                    q_index = np.concatenate([q_row + slots for q_row, *_ in chunk])
                    k_index = np.concatenate([k_off + np.arange(keys) for _, k_off, *_ in chunk])
                    out_rows = np.concatenate(
                        [
                            np.where((slots >= lo) & (slots < hi), row - lo + slots, self.total)
                            for _, _, lo, hi, row in chunk
                        ]
                    )
                    self._calls.append(
                        _Call(
                            b,
                            len(chunk),
                            *(torch.from_numpy(a).to(device) for a in (q_index, k_index, out_rows)),
                        )
                    )
        return self._calls


def causal_block_mask(b: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The mask of a query tile at block ``b`` (see :meth:`BlockedLayout.mask`)."""
    slot = torch.arange(KEY_BLOCK, device=device).unsqueeze(1)
    keys = torch.arange((b + 1) * KEY_BLOCK, device=device).unsqueeze(0)
    mask = torch.zeros((KEY_BLOCK, (b + 1) * KEY_BLOCK), dtype=dtype, device=device)
    return mask.masked_fill_(keys > b * KEY_BLOCK + slot, float("-inf")).view(1, 1, KEY_BLOCK, -1)


def _kernel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor, scale: float | None
) -> torch.Tensor:
    """Masked attention whose per-query result depends only on that query, its keys and its mask row."""
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, False, attn_mask=mask, scale=scale
        )[0]
    # On CUDA: memory-efficient attention, one thread block per (item, head, query tile) and a fixed loop over
    # key tiles; pinned so the backend choice cannot change with the batch.
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
        return torch.nn.functional.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask.expand(q.shape[0], q.shape[1], -1, -1),
            scale=scale,
            enable_gqa=q.shape[1] != k.shape[1],
        )


def blocked_attention(
    layout: BlockedLayout, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float | None
) -> torch.Tensor:
    """Attention of a packed row: ``query [1, H, T, d]``, ``key/value [1, Hkv, T, d]`` -> ``[1, T, H, d]``.

    The attention-interface form of :meth:`BlockedLayout.attend` (the direct decoder loop writes its
    buffers itself). In a pruned layer only the rows the poolers need are meaningful (the others are zero).
    """
    layout.write_keys(0, key[0].transpose(0, 1), value[0].transpose(0, 1))
    layout.write_queries(query[0].transpose(0, 1))
    out = layout.attend(scale)
    if layout.pruned:
        kept = torch.zeros_like(out)
        rows = layout.owned_rows(out.device)
        kept[rows] = out[rows]
        return kept.unsqueeze(0)
    return out.clone().unsqueeze(0)  # the layout's buffer is the next layer's too


def plan_layout(plan: SegmentPlan, pruned: bool, device: torch.device) -> BlockedLayout:
    """The plan's tiles for a (pruned or full) layer; built once per forward."""

    def build() -> BlockedLayout:
        if plan.workspace is None:
            plan.workspace = Workspace()  # one set of scratch buffers for the full and pruned layers
        external_rows = plan.external.rows if plan.external else 0
        return BlockedLayout(
            plan.segments, plan.total, pruned, device, workspace=plan.workspace, external_rows=external_rows
        )

    return plan.layout(("blocked", pruned), build)


def deterministic_layout(module: nn.Module, device: torch.device) -> BlockedLayout:
    """The active deterministic plan's :class:`BlockedLayout` for ``module``'s layer (pruned or not), counted
    as one attention call of the forward. The direct decoder loop writes its queries, keys and values straight
    into it."""
    plan = current_plan()
    if plan is None or not plan.deterministic:
        raise SegmentAttentionUnsupported(
            "deterministic attention needs an active SegmentPlan(deterministic=True)"
        )
    plan.calls += 1
    layout = plan_layout(plan, plan.pruned(module), device)
    ext = plan.external
    if ext is not None:
        layer = layer_index(module)
        for address, piece in ext.pieces.items():
            layout.write_external(address, piece[layer, 0].transpose(0, 1), piece[layer, 1].transpose(0, 1))
        if ext.capture is not None:
            capture = ext.capture
            layout.capture = lambda k, v: capture(layer, k, v)
    return layout


__all__ = [
    "KEY_BLOCK",
    "MAX_CALL_KEYS",
    "BlockedLayout",
    "blocked_attention",
    "causal_block_mask",
    "deterministic_layout",
    "plan_layout",
]
