"""Label reads in the server's batcher: ``/generative_scoring`` items as engine items of their own task.

A ``/generative_scoring`` request becomes one :class:`~rlhf_rewards.server.batcher.EngineItem` per item,
queued under the task :data:`GENERATIVE_SCORING_TASK`, so concurrent requests merge into one engine call
(sharing their queries' forward when they share a prefix). Each item carries its labels and softmax mode in
``params.extra_kwargs``; :func:`encode_label_reads` runs a merged batch and answers, per item, a
``PoolingRequestOutput`` whose data is the ``[k]`` label probabilities (float32) and whose ``error`` is set
for a non-finite result (the batcher then re-runs the members alone, as for every task).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from rlhf_rewards.entrypoints.generative_scoring import run_label_reads
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import PoolingOutput, PoolingRequestOutput
from rlhf_rewards.pooling.params import PoolingParams
from rlhf_rewards.server.batcher import EngineItem

#: The batcher's task name of label reads (never a pooling task a client can name).
GENERATIVE_SCORING_TASK = "generative_scoring"


def label_item(
    token_ids: list[int],
    label_token_ids: Sequence[int],
    apply_softmax: bool,
    lora: LoRARequest | None,
    cache_salt: str | None = None,
) -> EngineItem:
    """The engine item of one ``query + item`` prompt (``cache_salt``: its prefix-cache namespace)."""
    params = PoolingParams(
        extra_kwargs={"label_token_ids": list(label_token_ids), "apply_softmax": apply_softmax}
    )
    return EngineItem(token_ids, params, lora, cache_salt=cache_salt)


def encode_label_reads(llm: Any, items: list[EngineItem]) -> list[PoolingRequestOutput]:
    """Run merged label-read items in one engine call (the batcher's encode function for this task)."""
    extras = [i.params.extra_kwargs or {} for i in items]
    reads = run_label_reads(
        llm,
        [i.token_ids for i in items],
        [e["label_token_ids"] for e in extras],
        [bool(e["apply_softmax"]) for e in extras],
        [i.lora for i in items],
        cache_salt=[i.cache_salt for i in items],
    )
    return [
        PoolingRequestOutput(
            request_id=f"generative-scoring-{n}",
            outputs=PoolingOutput(data=probs.to(torch.float64)),
            prompt_token_ids=list(item.token_ids),
            error=error,
        )
        for n, (item, (probs, error)) in enumerate(zip(items, reads, strict=True))
    ]


__all__ = ["GENERATIVE_SCORING_TASK", "encode_label_reads", "label_item"]
