"""The model runner: forward micro-batches, gather only the positions poolers need, run heads in float32.

Two execution paths, chosen per model:

- **Packed** (any model with causal attention that routes through transformers' attention interface):
  requests are arranged in a prefix tree (shared prompts and duplicates run once), laid out without
  padding in one row per forward within the token budget, and attended segment by segment
  (:mod:`~rlhf_rewards.engine.segment_attention`). For the Llama/Qwen2/Qwen3/Mistral families the
  decoder loop is driven directly and the last layer runs only on the rows the poolers read
  (:mod:`~rlhf_rewards.engine.decoder`). Requests with different LoRA adapters never share a forward.
- **Padded**: length-sorted micro-batches under the padded-token budget; used for models that cannot be
  packed (SSM/hybrid such as Jamba) or whose attention does not accept segment plans.

**Cross-call prefix cache** (``prefix_cache``, :mod:`~rlhf_rewards.engine.kv_cache`): on the packed path each
request first looks up its longest cached prefix (per adapter and ``cache_salt``, ending before the first
position its pooler reads); requests with the same hit share one tree over their remaining tokens, whose roots
read the hit's keys and values as ancestors outside the row. Every forward's new nodes are copied into the
cache as they are computed (:class:`_Capture`).

Both return the same numbers up to float rounding; ``tests/engine`` checks every path against plain
transformers.

**Deterministic mode** (``deterministic=True``, :mod:`~rlhf_rewards.engine.deterministic`): a request's
numbers are bit-identical whatever else runs with it. The direct families keep packing, prefix sharing and
pruning, with every row-wise call on fixed row tiles, blocked attention, tiled heads, and one adapter per
packed forward (calls mixing adapters are split by adapter instead of sharing padded batches). Every other
model runs one request per forward (no padding, no neighbours), which is exact but gives up batching.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import Any

import torch

from rlhf_rewards.engine.decoder import direct_forward, supports_direct
from rlhf_rewards.engine.deterministic import Workspace
from rlhf_rewards.engine.kv_cache import CacheSession, PrefixKVCache, weights_fingerprint
from rlhf_rewards.engine.packing import PackedForward, bin_pack, build_packed_forward, work_units
from rlhf_rewards.engine.prefix_cache import (
    DEFAULT_MIN_SHARED_TOKENS,
    PrefixForest,
    PrefixNode,
    build_prefix_forest,
)
from rlhf_rewards.engine.request import EngineRequest
from rlhf_rewards.engine.scheduler import plan_micro_batches
from rlhf_rewards.engine.segment_attention import ExternalKV, SegmentAttentionUnsupported, segment_attention
from rlhf_rewards.engine.threads import SMALL_FORWARD_FLOPS, dense_parameters, threads_for
from rlhf_rewards.models.base import PoolingModel
from rlhf_rewards.pooling import apply_score_transform, get_pooler
from rlhf_rewards.pooling.params import ResolvedPooling

logger = logging.getLogger(__name__)

_STAT_KEYS = (
    "forwards",
    "tokens_requested",
    "tokens_run",
    "last_layer_rows",
    "attention_pairs",
    "last_layer_attention_pairs",
    "cached_tokens",
)
#: The last layer is pruned when the poolers read at most this fraction of a forward's rows.
PRUNE_MAX_FRACTION = 0.5


class ModelRunner:
    """Runs :class:`EngineRequest` s through a :class:`PoolingModel`.

    Args:
        model: The loaded model (on ``device``).
        device: Where inputs are placed.
        max_num_batched_tokens: Token budget of one forward pass (padded tokens on the padded path,
            packed tokens on the packed path).
        forward_kwargs: Optional hook returning extra keyword arguments for a micro-batch's forward and
            head calls (the LoRA manager uses it to pass per-row adapter names). On the packed path it is
            called with one request per packed row for ``"forward"``, and with all requests for ``"head"``.
        packing: ``None`` (default): pack when the model supports it; ``False``: always pad.
        prefix_sharing: Run shared token prefixes (and duplicates) once. Default ``True``.
        min_shared_tokens: Shortest shared run split off into its own tree node. Default 8.
        prune_last_layer: Run the last layer only on the rows poolers read (direct families). Default ``True``.
        small_forward_flops: CPU forwards estimated below this many FLOPs run on one thread
            (:mod:`~rlhf_rewards.engine.threads`); ``0`` turns this off.
        compile: Run the row-wise halves of each decoder layer through ``torch.compile`` (direct families
            only; attention stays eager). Default ``False``.
        deterministic: Batch-invariant execution (see the module docs). Default ``False``; not with ``compile``.
        prefix_cache: Keys and values of prefixes kept across calls (:mod:`~rlhf_rewards.engine.kv_cache`),
            used by the packed path; ``None`` (default) keeps nothing between calls.
    """

    def __init__(
        self,
        model: PoolingModel,
        device: torch.device,
        max_num_batched_tokens: int,
        forward_kwargs: Callable[[list[EngineRequest]], dict[str, Any]] | None = None,
        *,
        packing: bool | None = None,
        prefix_sharing: bool = True,
        min_shared_tokens: int = DEFAULT_MIN_SHARED_TOKENS,
        prune_last_layer: bool = True,
        small_forward_flops: float = SMALL_FORWARD_FLOPS,
        compile: bool = False,
        deterministic: bool = False,
        prefix_cache: PrefixKVCache | None = None,
    ) -> None:
        if deterministic and compile:
            raise ValueError(
                "deterministic=True runs eagerly: it cannot be combined with compile=True (enforce_eager=False)."
            )
        self.model = model
        self.device = device
        self.max_num_batched_tokens = max_num_batched_tokens
        self.forward_kwargs = forward_kwargs
        self.packing = (
            bool(model.supports_packing) if packing is None else bool(packing and model.supports_packing)
        )
        self.prefix_sharing = prefix_sharing
        self.min_shared_tokens = min_shared_tokens
        self.prune_last_layer = prune_last_layer
        self.small_forward_flops = small_forward_flops
        self.compile = compile
        self.deterministic = deterministic
        self.prefix_cache = prefix_cache
        #: The deterministic attention's scratch buffers, kept between forwards (empty until first used).
        self._workspace = Workspace()
        self._dense_params: int | None = None
        #: Why packing was turned off for this model at run time (``None`` while it works).
        self.packing_disabled_reason: str | None = None
        self._direct: bool | None = None
        self._attention_layers: int | None = None
        #: Counters of the last :meth:`run`, for benchmarks and logs: ``forwards``, ``tokens_requested``,
        #: ``tokens_run`` (rows through every layer but the last), ``last_layer_rows``, and the query-key
        #: pairs attention evaluates per layer (``attention_pairs``) and in the last layer.
        self.last_stats: dict[str, int] = {}

    # ------------------------------------------------------------------ dispatch
    @torch.inference_mode()
    def run(
        self, requests: list[EngineRequest], on_batch_done: Callable[[int], None] | None = None
    ) -> list[torch.Tensor]:
        """Pooled float32 CPU tensors, one per request, in the order of ``requests``."""
        if not requests:
            return []
        self.last_stats = dict.fromkeys(_STAT_KEYS, 0)
        self.last_stats["tokens_requested"] = sum(r.num_tokens for r in requests)
        # A call that mixes adapters (or adapters and the base model) runs in shared padded batches with peft's
        # per-row adapter routing: a packed forward is one row, so it could only hold one adapter at a time.
        mixed_adapters = len({r.lora for r in requests}) > 1
        if self.deterministic:
            return self._run_deterministic(requests, on_batch_done)
        if self.packing and self.packing_disabled_reason is None and not mixed_adapters:
            try:
                return self._run_packed(requests, on_batch_done)
            except SegmentAttentionUnsupported as exc:
                self.packing_disabled_reason = str(exc)
                logger.warning(
                    "Packed execution is not available for this model (%s); using padded batches.", exc
                )
                self.last_stats.update({k: 0 for k in _STAT_KEYS if k != "tokens_requested"})
        return self._run_padded(requests, on_batch_done)

    # ------------------------------------------------------------------ deterministic
    def _run_deterministic(
        self, requests: list[EngineRequest], on_batch_done: Callable[[int], None] | None
    ) -> list[torch.Tensor]:
        """Packed with batch-invariant kernels where the model allows it, else one request per forward."""
        if self.packing and self.packing_disabled_reason is None and self.deterministic_packing():
            try:
                return self._run_packed(requests, on_batch_done)
            except SegmentAttentionUnsupported as exc:
                self.packing_disabled_reason = str(exc)
                logger.warning(
                    "Packed execution is not available for this model (%s); deterministic mode runs "
                    "one request per forward.",
                    exc,
                )
                self.last_stats.update({k: 0 for k in _STAT_KEYS if k != "tokens_requested"})
        return self._run_alone(requests, on_batch_done)

    def deterministic_packing(self) -> bool:
        """Whether deterministic mode keeps packing for this model (the direct families with a static RoPE)."""
        from rlhf_rewards.engine.deterministic import rope_is_static

        return self._uses_direct() and rope_is_static(self.model.backbone.rotary_emb)

    def _run_alone(
        self, requests: list[EngineRequest], on_batch_done: Callable[[int], None] | None
    ) -> list[torch.Tensor]:
        """One unpadded forward per request: its kernels' shapes depend on that request alone."""
        results = []
        for r in requests:
            with self._threads(r.num_tokens):
                results.extend(self.run_batch([r]))
            stats = self.last_stats
            stats["forwards"] += 1
            stats["tokens_run"] += r.num_tokens
            stats["last_layer_rows"] += r.num_tokens
            stats["attention_pairs"] += r.num_tokens * (r.num_tokens + 1) // 2
            stats["last_layer_attention_pairs"] += r.num_tokens * (r.num_tokens + 1) // 2
            if on_batch_done is not None:
                on_batch_done(1)
        return results

    # ------------------------------------------------------------------ padded path
    def _run_padded(
        self, requests: list[EngineRequest], on_batch_done: Callable[[int], None] | None
    ) -> list[torch.Tensor]:
        results: list[torch.Tensor | None] = [None] * len(requests)
        for batch in plan_micro_batches([r.num_tokens for r in requests], self.max_num_batched_tokens):
            chunk = [requests[i] for i in batch]
            width = max(r.num_tokens for r in chunk)
            with self._threads(len(chunk) * width):
                outputs = self.run_batch(chunk)
            for i, tensor in zip(batch, outputs, strict=True):
                results[i] = tensor
            stats = self.last_stats
            stats["forwards"] += 1
            stats["tokens_run"] += len(chunk) * width
            stats["last_layer_rows"] += len(chunk) * width
            stats["attention_pairs"] += len(chunk) * width * (width + 1) // 2
            stats["last_layer_attention_pairs"] += len(chunk) * width * (width + 1) // 2
            if on_batch_done is not None:
                on_batch_done(len(batch))
        return [r for r in results if r is not None]

    # ------------------------------------------------------------------ packed path
    def _run_packed(
        self, requests: list[EngineRequest], on_batch_done: Callable[[int], None] | None
    ) -> list[torch.Tensor]:
        results: list[torch.Tensor | None] = [None] * len(requests)
        # Requests with different adapters never share a forward (one packed row has one adapter).
        groups: dict[Any, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault(r.lora, []).append(i)
        budget = self.max_num_batched_tokens
        cache = self.prefix_cache
        if cache is not None:
            cache.check_weights(weights_fingerprint(self.model.backbone))
        with cache.session() if cache is not None else contextlib.nullcontext() as session:
            for members in groups.values():
                group = [requests[i] for i in members]
                if session is not None:
                    forest = self._cached_forest(session, group)
                else:
                    forest = build_prefix_forest(
                        [r.token_ids for r in group], self.min_shared_tokens if self.prefix_sharing else 0
                    )
                inserted: dict[int, bool] = {}
                for units in bin_pack(work_units(forest, budget), budget):
                    packed = build_packed_forward(units, forest, self.device)
                    chunk = [group[s] for s in packed.sequences]
                    capture = (
                        _Capture(packed, inserted, self._expected_attention_calls()) if session else None
                    )
                    packed.capture = capture
                    with self._threads(packed.num_tokens):
                        outputs = self.run_packed(packed, chunk)
                    if capture is not None:
                        capture.commit(session, group, forest)
                    for s, tensor in zip(packed.sequences, outputs, strict=True):
                        results[members[s]] = tensor
                    self.last_stats["forwards"] += 1
                    self.last_stats["tokens_run"] += packed.num_tokens
                    if on_batch_done is not None:
                        on_batch_done(len(chunk))
            if session is not None:
                self.last_stats["cached_tokens"] += session.hit_tokens
        return [r for r in results if r is not None]

    def _cached_forest(self, session: CacheSession, group: list[EngineRequest]) -> PrefixForest:
        """The prefix forest of one adapter's requests, each starting after its cross-call cache hit.

        A hit ends before the first position the request's pooler reads (and before its last token), so
        every position an output comes from is computed. Requests with the same hit (and namespace: adapter
        and ``cache_salt``) share one tree over their remaining tokens; the tree's roots read the hit's keys
        and values as ancestors.
        """
        lora = group[0].lora
        adapter = None if lora is None else (lora.lora_name, lora.lora_int_id, lora.lora_path)
        by_hit: dict[Any, list[int]] = {}
        hits = []
        for i, r in enumerate(group):
            positions = get_pooler(r.pooling.pooling_type).positions(torch.tensor(r.token_ids), r.pooling)
            limit = r.num_tokens - 1
            if positions.numel():
                limit = min(limit, int(positions.min()))
            hit = session.lookup((adapter, r.cache_salt), r.token_ids, limit)
            hits.append(hit)
            by_hit.setdefault(hit.key, []).append(i)
        roots: list[PrefixNode] = []
        end_node: list[PrefixNode | None] = [None] * len(group)
        min_shared = self.min_shared_tokens if self.prefix_sharing else 0
        for idxs in by_hit.values():
            hit = hits[idxs[0]]
            h = hit.length
            sub = build_prefix_forest([group[i].token_ids[h:] for i in idxs], min_shared)
            for root in sub.roots:
                root.cached = hit
                for node in root.subtree():
                    node.start += h
                    node.ends = [idxs[j] for j in node.ends]  # the sub-forest's indices -> the group's
            roots.extend(sub.roots)
            for j, i in enumerate(idxs):
                end_node[i] = sub.end_node[j]
        return PrefixForest(roots=roots, end_node=end_node)  # type: ignore[arg-type]

    def _threads(self, tokens: int):
        """One intra-op thread for a small CPU forward of ``tokens`` rows (see :mod:`~rlhf_rewards.engine.threads`)."""
        if self._dense_params is None:
            self._dense_params = dense_parameters(self.model.backbone)
        return threads_for(self.device, 2.0 * self._dense_params * tokens, self.small_forward_flops)

    def _uses_direct(self) -> bool:
        if self._direct is None:
            self._direct = type(self.model).hidden_states is PoolingModel.hidden_states and supports_direct(
                self.model.backbone
            )
        return self._direct

    def _expected_attention_calls(self) -> int:
        if self._attention_layers is None:
            self._attention_layers = sum(
                1
                for m in self.model.backbone.modules()
                if type(m).__name__.endswith("Attention") and hasattr(m, "layer_idx")
            )
        return self._attention_layers

    def run_packed(self, packed: PackedForward, requests: list[EngineRequest]) -> list[torch.Tensor]:
        """One packed forward; ``requests[i]`` owns ``packed.row_maps[i]``. All share one adapter.

        Cached keys and values the row reads (``packed.external``) and the capture of its own
        (``packed.capture``) serve the cross-call prefix cache.
        """
        external = (
            ExternalKV(pieces=packed.external, capture=packed.capture)
            if (packed.external or packed.capture is not None)
            else None
        )
        extra = self.forward_kwargs(requests) if self.forward_kwargs is not None else {}
        rows = []
        offsets = packed.row_offsets or [0] * len(requests)
        for r, row_map, offset in zip(requests, packed.row_maps, offsets, strict=True):
            positions = get_pooler(r.pooling.pooling_type).positions(torch.tensor(r.token_ids), r.pooling)
            rows.append(row_map.index_select(0, positions - offset if offset else positions))
        needed = torch.unique(torch.cat(rows)) if rows else torch.empty(0, dtype=torch.long)
        if needed.numel() == 0:
            # Nothing is read (STEP pooling over texts without a step tag): every result is [0, k], as in
            # vLLM, and the forward would be wasted work.
            empty = torch.empty((0, self.model.hidden_size), dtype=torch.float32, device=self.device)
            return self.pool(requests, [empty] * len(requests), head_kwargs=extra.get("head", {}))
        total = packed.num_tokens
        expected = self._expected_attention_calls()
        if expected == 0:
            raise SegmentAttentionUnsupported("no attention modules found in the backbone")
        hf_model = self.model.hf_model
        if self.deterministic:
            hidden, rows = self._deterministic_packed(packed, extra, needed, rows, external)
            return self.pool(
                requests,
                [hidden.index_select(0, r.to(hidden.device)) for r in rows],
                head_kwargs=extra.get("head", {}),
            )
        if self._uses_direct() and not extra.get("forward"):
            prune = self.prune_last_layer and needed.numel() <= PRUNE_MAX_FRACTION * total
            layers = self.model.backbone.config.num_hidden_layers
            plan = packed.plan(
                needed.to(self.device) if prune else None,
                prune_layer=layers - 1 if prune else None,
                external=external,
            )
            with segment_attention(hf_model, plan):
                hidden = direct_forward(
                    self.model.backbone,
                    packed.input_ids,
                    packed.position_ids,
                    needed.to(self.device) if prune else None,
                    compile=self.compile,
                )
            if prune:
                lookup = torch.full((total,), -1, dtype=torch.long)
                lookup[needed] = torch.arange(needed.numel())
                rows = [lookup[r] for r in rows]
        else:
            row_kwargs = (
                self.forward_kwargs(requests[:1]).get("forward", {})
                if self.forward_kwargs is not None
                else {}
            )
            plan = packed.plan(external=external)
            with segment_attention(hf_model, plan):
                hidden = self.model.hidden_states(
                    packed.input_ids, attention_mask=None, position_ids=packed.position_ids, **row_kwargs
                )[0]
        self._record(packed, plan)
        if plan.calls != expected:
            raise SegmentAttentionUnsupported(
                f"the model ran {plan.calls} segment-attention calls for {expected} attention layers"
            )
        gathered = [hidden.index_select(0, r.to(hidden.device)) for r in rows]
        return self.pool(requests, gathered, head_kwargs=extra.get("head", {}))

    def _deterministic_packed(
        self,
        packed: PackedForward,
        extra: dict[str, Any],
        needed: torch.Tensor,
        rows: list,
        external: ExternalKV | None = None,
    ):
        """The direct loop on fixed tiles with blocked attention; the group's adapter (if any) is made active."""
        from rlhf_rewards.lora.routing import BASE, active_adapter

        total = packed.num_tokens
        prune = self.prune_last_layer and needed.numel() <= PRUNE_MAX_FRACTION * total
        layers = self.model.backbone.config.num_hidden_layers
        kept = needed.to(self.device) if prune else None
        plan = packed.plan(
            kept,
            prune_layer=layers - 1 if prune else None,
            deterministic=True,
            workspace=self._workspace,
            external=external,
        )
        names = set(extra.get("forward", {}).get("adapter_names", ())) - {BASE}
        if len(names) > 1:
            raise RuntimeError(f"one packed forward holds one adapter, got {sorted(names)}")
        adapter = active_adapter(self.model.backbone, names.pop()) if names else contextlib.nullcontext()
        with adapter, segment_attention(self.model.hf_model, plan):
            hidden = direct_forward(
                self.model.backbone, packed.input_ids, packed.position_ids, kept, deterministic=True
            )
        self._record(packed, plan)
        if plan.calls != self._expected_attention_calls():
            raise SegmentAttentionUnsupported(
                f"the model ran {plan.calls} segment-attention calls for {self._expected_attention_calls()} attention layers"
            )
        if prune:
            lookup = torch.full((total,), -1, dtype=torch.long)
            lookup[needed] = torch.arange(needed.numel())
            rows = [lookup[r] for r in rows]
        return hidden, rows

    def _record(self, packed: PackedForward, plan) -> None:
        """Work counters of a packed forward (rows through the last layer, query-key pairs per layer)."""
        stats = self.last_stats
        pairs = sum(
            seg.length * seg.prefix_length + seg.length * (seg.length + 1) // 2 for seg in packed.segments
        )
        stats["attention_pairs"] += pairs
        if plan.prune_layer is None:
            stats["last_layer_rows"] += packed.num_tokens
            stats["last_layer_attention_pairs"] += pairs
            return
        for seg in packed.segments:
            rows = seg.rows if seg.rows is not None else torch.arange(seg.length)
            stats["last_layer_rows"] += int(rows.numel())
            stats["last_layer_attention_pairs"] += (
                int((rows + 1).sum()) + int(rows.numel()) * seg.prefix_length
            )

    # ------------------------------------------------------------------ shared
    def run_batch(self, requests: list[EngineRequest]) -> list[torch.Tensor]:
        """One padded forward over ``requests``, then pooling and heads."""
        extra = self.forward_kwargs(requests) if self.forward_kwargs is not None else {}
        longest = max(r.num_tokens for r in requests)
        input_ids = torch.zeros((len(requests), longest), dtype=torch.long)
        attention_mask = torch.zeros((len(requests), longest), dtype=torch.long)
        for row, r in enumerate(requests):
            input_ids[row, : r.num_tokens] = torch.tensor(r.token_ids, dtype=torch.long)
            attention_mask[row, : r.num_tokens] = 1
        position_ids = torch.arange(longest, dtype=torch.long).unsqueeze(0).expand(len(requests), -1)
        # An all-ones mask lets attention take its fast causal path.
        mask = None if bool(attention_mask.all()) else attention_mask.to(self.device)
        hidden = self.model.hidden_states(
            input_ids.to(self.device),
            attention_mask=mask,
            position_ids=position_ids.to(self.device),
            **extra.get("forward", {}),
        )
        gathered = []
        for row, r in enumerate(requests):
            pooler = get_pooler(r.pooling.pooling_type)
            positions = pooler.positions(torch.tensor(r.token_ids), r.pooling).to(hidden.device)
            gathered.append(hidden[row].index_select(0, positions))
        return self.pool(requests, gathered, head_kwargs=extra.get("head", {}))

    def pool(
        self,
        requests: list[EngineRequest],
        gathered: list[torch.Tensor],
        head_kwargs: dict[str, Any] | None = None,
    ) -> list[torch.Tensor]:
        """Reduce gathered states per request, run the head once per column set, and post-process."""
        reduced = [
            get_pooler(r.pooling.pooling_type).reduce(g).float()
            for r, g in zip(requests, gathered, strict=True)
        ]
        outputs: list[torch.Tensor | None] = [None] * len(requests)
        head_rows = [i for i, r in enumerate(requests) if r.pooling.runs_head]
        # Group head calls by their column selection so each group is one matmul.
        groups: dict[tuple[int, ...] | None, list[int]] = {}
        for i in head_rows:
            groups.setdefault(requests[i].pooling.returned_token_ids, []).append(i)
        for columns, members in groups.items():
            states = [reduced[i] if reduced[i].dim() == 2 else reduced[i].unsqueeze(0) for i in members]
            sizes = [s.shape[0] for s in states]
            kwargs = dict(head_kwargs or {})
            if "adapter_names" in kwargs:  # expand per-request adapter names to per-row
                kwargs["adapter_names"] = [
                    kwargs["adapter_names"][i] for i, n in zip(members, sizes, strict=True) for _ in range(n)
                ]
            if self.deterministic:
                logits = self._tiled_score(torch.cat(states, dim=0), columns, kwargs)
            else:
                logits = self.model.score(torch.cat(states, dim=0), columns, **kwargs)
            for i, part in zip(members, torch.split(logits, sizes), strict=True):
                r = requests[i]
                part = apply_score_transform(part, r.pooling, self.model.problem_type)
                outputs[i] = part if r.pooling.token_level else part.squeeze(0)
        for i, r in enumerate(requests):
            if not r.pooling.runs_head:
                outputs[i] = _embed_post(reduced[i], r.pooling)
        return [o.detach().to("cpu", torch.float32).contiguous() for o in outputs if o is not None]

    def _tiled_score(
        self, states: torch.Tensor, columns: tuple[int, ...] | None, kwargs: dict[str, Any]
    ) -> torch.Tensor:
        """``model.score`` on fixed tiles of ``HEAD_TILE`` rows (padding rows take the tile's first adapter)."""
        from rlhf_rewards.engine.deterministic import HEAD_TILE, tile_rows, tiles

        if states.shape[0] == 0:
            return self.model.score(states, columns, **kwargs)
        names = kwargs.get("adapter_names")
        parts = []
        for s, e in tiles(states.shape[0], HEAD_TILE):
            extra = dict(kwargs)
            if names is not None:
                extra["adapter_names"] = list(names[s:e]) + [names[s]] * (HEAD_TILE - (e - s))
            parts.append(
                self.model.score(tile_rows(states, s, e, HEAD_TILE, dim=0), columns, **extra)[: e - s]
            )
        return torch.cat(parts) if len(parts) > 1 else parts[0]


class _Capture:
    """Copies the keys and values of a forward's new tree nodes out of every layer, then inserts them into
    the cross-call cache (:meth:`commit`). ``inserted`` maps a node (by id) to whether it is cached; nodes
    already tried (a tree re-run in several forwards) are not captured again."""

    def __init__(self, packed: PackedForward, inserted: dict[int, bool], layers: int) -> None:
        self.inserted = inserted
        self.layers = layers
        seen: set[int] = set()
        self.todo: list[tuple[PrefixNode, int, int]] = []
        for node, seg in zip(packed.nodes, packed.segments, strict=True):
            if id(node) not in inserted and id(node) not in seen:
                seen.add(id(node))
                self.todo.append((node, seg.start, seg.end))
        self.buffers: list[torch.Tensor] = []
        self.layers_seen: set[int] = set()

    def __call__(self, layer: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        if not self.todo:
            return
        if not self.buffers:
            kv_heads, head_dim = keys.shape[0], keys.shape[-1]
            self.buffers = [
                keys.new_empty((self.layers, 2, kv_heads, e - s, head_dim)) for _, s, e in self.todo
            ]
        for (_, s, e), buf in zip(self.todo, self.buffers, strict=True):
            buf[layer, 0].copy_(keys[:, s:e])
            buf[layer, 1].copy_(values[:, s:e])
        self.layers_seen.add(layer)

    def commit(self, session: CacheSession, requests: list[EngineRequest], forest: PrefixForest) -> None:
        if not self.todo or len(self.layers_seen) != self.layers:
            return  # the forward did not run (nothing to pool) or ran another path
        first_seq: dict[int, int] = {}
        for i, end in enumerate(forest.end_node):
            for node in end.path():
                first_seq.setdefault(id(node), i)
        for (node, _, _), buf in zip(self.todo, self.buffers, strict=True):
            if node.parent is not None and not self.inserted.get(id(node.parent), False):
                self.inserted[id(node)] = False
                continue
            root = node.path()[0]
            seq = requests[first_seq[id(node)]]
            self.inserted[id(node)] = session.extend(
                root.cached.namespace, seq.token_ids, node.start, node.end, buf, pin=bool(node.children)
            )
        self.buffers = []
        session.evict()


def _embed_post(x: torch.Tensor, params: ResolvedPooling) -> torch.Tensor:
    if params.dimensions is not None:
        if params.dimensions > x.shape[-1]:
            raise ValueError(f"dimensions={params.dimensions} is over the model's hidden size {x.shape[-1]}.")
        x = x[..., : params.dimensions]
    if params.normalize:
        x = torch.nn.functional.normalize(x, p=2, dim=-1)
    return x
