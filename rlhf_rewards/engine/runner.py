"""The model runner: forward micro-batches, gather only the positions poolers need, run heads in float32.

Two execution paths, chosen per model:

- **Packed** (any model with causal attention that routes through transformers' attention interface):
  requests are arranged in a prefix tree (shared prompts and duplicates run once), laid out without
  padding in one row per forward within the token budget, and attended segment by segment
  (:mod:`~rlhf_rewards.engine.attention`). For the Llama/Qwen2/Qwen3/Mistral families the
  decoder loop is driven directly and the last layer runs only on the rows the poolers read
  (:mod:`~rlhf_rewards.engine.decoder`). Requests with different LoRA adapters never share a forward.
- **Padded**: length-sorted micro-batches under the padded-token budget; used for models that cannot be
  packed (SSM/hybrid such as Jamba) or whose attention does not accept segment plans.

**Cross-call prefix cache** (``prefix_cache``, :mod:`~rlhf_rewards.engine.kv_cache`): on the packed path each
request first looks up its longest cached prefix and the forwards' new keys and values are copied into the
cache (:mod:`~rlhf_rewards.engine.kv_reuse`).

Both return the same numbers up to float rounding; ``tests/engine`` checks every path against plain
transformers.

**Deterministic mode** (``deterministic=True``, :mod:`~rlhf_rewards.engine.deterministic`): a request's
numbers are bit-identical whatever else runs with it. The same packed path runs for the direct families,
with packing, prefix sharing and pruning, every row-wise call on fixed row tiles, blocked attention, tiled
heads, and one adapter per packed forward (calls mixing adapters are split by adapter instead of sharing
padded batches). Every other model takes the padded path with one request per forward (no padding, no
neighbours), which is exact but gives up batching.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any

import torch

from rlhf_rewards.engine import packed_linear
from rlhf_rewards.engine.attention.interface import segment_attention
from rlhf_rewards.engine.attention.plan import ExternalKV, SegmentAttentionUnsupported, SegmentPlan, Workspace
from rlhf_rewards.engine.decoder import direct_forward, supports_direct
from rlhf_rewards.engine.deterministic import rope_is_static, tiled_score
from rlhf_rewards.engine.kv_cache import PrefixKVCache, weights_fingerprint
from rlhf_rewards.engine.kv_reuse import KVCapture, cached_forest
from rlhf_rewards.engine.packed_linear import PackedWeights
from rlhf_rewards.engine.packing import PackedForward, bin_pack, build_packed_forward, work_units
from rlhf_rewards.engine.prefix_tree import DEFAULT_MIN_SHARED_TOKENS, build_prefix_forest
from rlhf_rewards.engine.request import EngineRequest
from rlhf_rewards.engine.scheduler import plan_micro_batches
from rlhf_rewards.engine.stats import RunStats
from rlhf_rewards.engine.threads import SMALL_FORWARD_FLOPS, dense_parameters, threads_for
from rlhf_rewards.lora.routing import BASE, active_adapter
from rlhf_rewards.models.base import PoolingModel
from rlhf_rewards.pooling.head import pool_and_score, pooled_positions

logger = logging.getLogger(__name__)

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
        packed_weights: Projection weights packed for the CPU GEMM (:mod:`~rlhf_rewards.engine.packed_linear`),
            used by the direct decoder loop; ignored with ``compile`` or ``deterministic``. Default ``None``.
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
        packed_weights: PackedWeights | None = None,
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
        # Compiled graphs and the deterministic row tiles keep the modules' own kernels.
        self.packed_weights = None if compile or deterministic else packed_weights
        #: The deterministic attention's scratch buffers, kept between forwards (empty until first used).
        self._workspace = Workspace()
        self._dense_params: int | None = None
        #: Why packing was turned off for this model at run time (``None`` while it works).
        self.packing_disabled_reason: str | None = None
        self._direct: bool | None = None
        self._attention_layers: int | None = None
        #: What the last :meth:`run` ran, for benchmarks and logs.
        self.last_stats = RunStats()

    # ------------------------------------------------------------------ dispatch
    @torch.inference_mode()
    def run(
        self, requests: list[EngineRequest], on_batch_done: Callable[[int], None] | None = None
    ) -> list[torch.Tensor]:
        """Pooled float32 CPU tensors, one per request, in the order of ``requests``."""
        if not requests:
            return []
        requested = sum(r.num_tokens for r in requests)
        self.last_stats = RunStats(tokens_requested=requested)
        if self._packs(requests):
            try:
                return self._run_packed(requests, on_batch_done)
            except SegmentAttentionUnsupported as exc:
                self.packing_disabled_reason = str(exc)
                logger.warning(
                    "Packed execution is not available for this model (%s); %s.",
                    exc,
                    "deterministic mode runs one request per forward"
                    if self.deterministic
                    else "using padded batches",
                )
                self.last_stats = RunStats(tokens_requested=requested)
        if self.deterministic:  # one unpadded forward per request: its kernels' shapes depend on it alone
            batches = [[i] for i in range(len(requests))]
        else:
            batches = plan_micro_batches([r.num_tokens for r in requests], self.max_num_batched_tokens)
        return self._run_padded(requests, batches, on_batch_done)

    def _packs(self, requests: list[EngineRequest]) -> bool:
        """Whether this call takes the packed path."""
        if not self.packing or self.packing_disabled_reason is not None:
            return False
        if self.deterministic:
            return self.deterministic_packing()  # a call mixing adapters is split by adapter
        # A call that mixes adapters (or adapters and the base model) runs in shared padded batches with peft's
        # per-row adapter routing: a packed forward is one row, so it could only hold one adapter at a time.
        return len({r.lora for r in requests}) == 1

    def deterministic_packing(self) -> bool:
        """Whether deterministic mode keeps packing for this model (the direct families with a static RoPE)."""
        return self._uses_direct() and rope_is_static(self.model.backbone.rotary_emb)

    # ------------------------------------------------------------------ padded path
    def _run_padded(
        self,
        requests: list[EngineRequest],
        batches: list[list[int]],
        on_batch_done: Callable[[int], None] | None,
    ) -> list[torch.Tensor]:
        results: list[torch.Tensor | None] = [None] * len(requests)
        for batch in batches:
            chunk = [requests[i] for i in batch]
            width = max(r.num_tokens for r in chunk)
            with self._threads(len(chunk) * width):
                outputs = self.run_batch(chunk)
            for i, tensor in zip(batch, outputs, strict=True):
                results[i] = tensor
            self.last_stats.add_padded(len(chunk), width)
            if on_batch_done is not None:
                on_batch_done(len(batch))
        return [r for r in results if r is not None]

    def run_batch(self, requests: list[EngineRequest]) -> list[torch.Tensor]:
        """One padded forward over ``requests``, then pooling and heads."""
        extra = self._extra(requests)
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
        gathered = [
            hidden[row].index_select(0, pooled_positions(r.pooling, r.token_ids).to(hidden.device))
            for row, r in enumerate(requests)
        ]
        return self.pool(requests, gathered, head_kwargs=extra.get("head", {}))

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
        min_shared = self.min_shared_tokens if self.prefix_sharing else 0
        cache = self.prefix_cache
        if cache is not None:
            cache.check_weights(weights_fingerprint(self.model.backbone))
        with cache.session() if cache is not None else contextlib.nullcontext() as session:
            for members in groups.values():
                group = [requests[i] for i in members]
                if session is not None:
                    forest = cached_forest(session, group, min_shared)
                else:
                    forest = build_prefix_forest([r.token_ids for r in group], min_shared)
                inserted: dict[int, bool] = {}
                for units in bin_pack(work_units(forest, budget), budget):
                    packed = build_packed_forward(units, forest, self.device)
                    chunk = [group[s] for s in packed.sequences]
                    capture = (
                        KVCapture(packed, inserted, self._expected_attention_calls())
                        if session is not None
                        else None
                    )
                    packed.capture = capture
                    with self._threads(packed.num_tokens):
                        outputs = self.run_packed(packed, chunk)
                    if capture is not None:
                        capture.commit(session, group, forest)
                    for s, tensor in zip(packed.sequences, outputs, strict=True):
                        results[members[s]] = tensor
                    self.last_stats.forwards += 1
                    self.last_stats.tokens_run += packed.num_tokens
                    if on_batch_done is not None:
                        on_batch_done(len(chunk))
            if session is not None:
                self.last_stats.cached_tokens += session.hit_tokens
        return [r for r in results if r is not None]

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
        extra = self._extra(requests)
        head_kwargs = extra.get("head", {})
        rows = []
        offsets = packed.row_offsets or [0] * len(requests)
        for r, row_map, offset in zip(requests, packed.row_maps, offsets, strict=True):
            positions = pooled_positions(r.pooling, r.token_ids)
            rows.append(row_map.index_select(0, positions - offset if offset else positions))
        needed = torch.unique(torch.cat(rows)) if rows else torch.empty(0, dtype=torch.long)
        if needed.numel() == 0:
            # Nothing is read (STEP pooling over texts without a step tag): every result is [0, k], as in
            # vLLM, and the forward would be wasted work.
            empty = torch.empty((0, self.model.hidden_size), dtype=torch.float32, device=self.device)
            return self.pool(requests, [empty] * len(requests), head_kwargs=head_kwargs)
        expected = self._expected_attention_calls()
        if expected == 0:
            raise SegmentAttentionUnsupported("no attention modules found in the backbone")
        # The direct loop runs without per-row forward arguments, except in deterministic mode, where the
        # group's one adapter is made active instead.
        if self._uses_direct() and (self.deterministic or not extra.get("forward")):
            hidden, plan = self._direct_forward(packed, needed, external, extra.get("forward", {}))
            if plan.prune_layer is not None:  # ``hidden`` holds the needed rows only
                lookup = torch.full((packed.num_tokens,), -1, dtype=torch.long)
                lookup[needed] = torch.arange(needed.numel())
                rows = [lookup[r] for r in rows]
        else:
            row_kwargs = self._extra(requests[:1]).get("forward", {})  # the packed row is one request's
            plan = packed.plan(external=external)
            with segment_attention(self.model.hf_model, plan):
                hidden = self.model.hidden_states(
                    packed.input_ids, attention_mask=None, position_ids=packed.position_ids, **row_kwargs
                )[0]
        self.last_stats.add_packed_attention(packed.segments, packed.num_tokens, plan.prune_layer is not None)
        if plan.calls != expected:
            raise SegmentAttentionUnsupported(
                f"the model ran {plan.calls} segment-attention calls for {expected} attention layers"
            )
        gathered = [hidden.index_select(0, r.to(hidden.device)) for r in rows]
        return self.pool(requests, gathered, head_kwargs=head_kwargs)

    def _direct_forward(
        self,
        packed: PackedForward,
        needed: torch.Tensor,
        external: ExternalKV | None,
        forward: dict[str, Any],
    ) -> tuple[torch.Tensor, SegmentPlan]:
        """The direct decoder loop over a packed row, its last layer pruned to the ``needed`` rows when they
        are few; the group's adapter (if any, named in ``forward``) is made active. The final hidden states
        and the plan that ran."""
        total = packed.num_tokens
        prune = self.prune_last_layer and needed.numel() <= PRUNE_MAX_FRACTION * total
        kept = needed.to(self.device) if prune else None
        layers = self.model.backbone.config.num_hidden_layers
        plan = packed.plan(
            kept,
            prune_layer=layers - 1 if prune else None,
            deterministic=self.deterministic,
            workspace=self._workspace,
            external=external,
        )
        names = set(forward.get("adapter_names", ())) - {BASE}
        if len(names) > 1:
            raise RuntimeError(f"one packed forward holds one adapter, got {sorted(names)}")
        adapter = active_adapter(self.model.backbone, names.pop()) if names else contextlib.nullcontext()
        with adapter, segment_attention(self.model.hf_model, plan), packed_linear.active(self.packed_weights):
            hidden = direct_forward(
                self.model.backbone,
                packed.input_ids,
                packed.position_ids,
                kept,
                compile=self.compile,
                deterministic=self.deterministic,
            )
        return hidden, plan

    # ------------------------------------------------------------------ shared
    def pool(
        self,
        requests: list[EngineRequest],
        gathered: list[torch.Tensor],
        head_kwargs: dict[str, Any] | None = None,
    ) -> list[torch.Tensor]:
        """Reduce gathered states per request, run the head (on fixed tiles in deterministic mode), and
        post-process (:func:`~rlhf_rewards.pooling.head.pool_and_score`)."""
        score = functools.partial(tiled_score, self.model.score) if self.deterministic else self.model.score
        return pool_and_score(
            [r.pooling for r in requests], gathered, score, self.model.problem_type, head_kwargs
        )

    def _extra(self, requests: list[EngineRequest]) -> dict[str, Any]:
        """The ``forward_kwargs`` hook's arguments for ``requests`` (none without a hook)."""
        return self.forward_kwargs(requests) if self.forward_kwargs is not None else {}

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


__all__ = ["PRUNE_MAX_FRACTION", "ModelRunner"]
