"""Output types of ``LLM.encode``, shaped like vLLM's."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PoolingOutput:
    """The pooled result of one request.

    Args:
        data: A float32 CPU tensor: ``[num_labels]`` for classify, ``[n_rows, k]`` for token_classify,
            ``[hidden]`` for embed, ``[n_tokens, hidden]`` for token_embed.
    """

    data: torch.Tensor


@dataclass
class PoolingRequestOutput:
    """One ``encode`` result, in the order of the prompts.

    Args:
        request_id: Unique id of the request.
        outputs: The pooled data.
        prompt_token_ids: The token ids that were scored (after truncation).
        finished: Always True: pooling finishes in one pass.
    """

    request_id: str
    outputs: PoolingOutput
    prompt_token_ids: list[int]
    finished: bool = True
