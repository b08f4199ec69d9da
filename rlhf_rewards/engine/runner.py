"""The model runner: forward micro-batches, gather only the positions poolers need, run heads in float32."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from rlhf_rewards.engine.request import EngineRequest
from rlhf_rewards.engine.scheduler import plan_micro_batches
from rlhf_rewards.models.base import PoolingModel
from rlhf_rewards.pooling import apply_score_transform, get_pooler
from rlhf_rewards.pooling.params import ResolvedPooling


class ModelRunner:
    """Runs :class:`EngineRequest` s through a :class:`PoolingModel`.

    Args:
        model: The loaded model (on ``device``).
        device: Where inputs are placed.
        max_num_batched_tokens: Padded-token budget of one forward pass.
        forward_kwargs: Optional hook returning extra keyword arguments for a micro-batch's forward and
            head calls (the LoRA manager uses it to pass per-row adapter names).
    """

    def __init__(
        self,
        model: PoolingModel,
        device: torch.device,
        max_num_batched_tokens: int,
        forward_kwargs: Callable[[list[EngineRequest]], dict[str, Any]] | None = None,
    ) -> None:
        self.model = model
        self.device = device
        self.max_num_batched_tokens = max_num_batched_tokens
        self.forward_kwargs = forward_kwargs

    @torch.inference_mode()
    def run(
        self, requests: list[EngineRequest], on_batch_done: Callable[[int], None] | None = None
    ) -> list[torch.Tensor]:
        """Pooled float32 CPU tensors, one per request, in the order of ``requests``."""
        results: list[torch.Tensor | None] = [None] * len(requests)
        for batch in plan_micro_batches([r.num_tokens for r in requests], self.max_num_batched_tokens):
            chunk = [requests[i] for i in batch]
            for i, tensor in zip(batch, self.run_batch(chunk), strict=True):
                results[i] = tensor
            if on_batch_done is not None:
                on_batch_done(len(batch))
        return [r for r in results if r is not None]

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
        reduced = [get_pooler(r.pooling.pooling_type).reduce(g).float() for r, g in zip(requests, gathered, strict=True)]
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
                kwargs["adapter_names"] = [kwargs["adapter_names"][i] for i, n in zip(members, sizes, strict=True) for _ in range(n)]
            logits = self.model.score(torch.cat(states, dim=0), columns, **kwargs)
            for i, part in zip(members, torch.split(logits, sizes), strict=True):
                r = requests[i]
                part = apply_score_transform(part, r.pooling, self.model.problem_type)
                outputs[i] = part if r.pooling.token_level else part.squeeze(0)
        for i, r in enumerate(requests):
            if not r.pooling.runs_head:
                outputs[i] = _embed_post(reduced[i], r.pooling)
        return [o.detach().to("cpu", torch.float32).contiguous() for o in outputs if o is not None]


def _embed_post(x: torch.Tensor, params: ResolvedPooling) -> torch.Tensor:
    if params.dimensions is not None:
        if params.dimensions > x.shape[-1]:
            raise ValueError(f"dimensions={params.dimensions} is over the model's hidden size {x.shape[-1]}.")
        x = x[..., : params.dimensions]
    if params.normalize:
        x = torch.nn.functional.normalize(x, p=2, dim=-1)
    return x
