"""``ColocatedWorker``: the engine in the trainer's own process and device."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from rlhf_rewards.entrypoints.llm import LLM
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.pooling.params import PoolingParams
from rlhf_rewards.workers.base import ModelInfo, RewardWorker, WorkerHealth, WorkerStats


class ColocatedWorker(RewardWorker):
    """Runs an :class:`~rlhf_rewards.LLM` in this process.

    Args:
        llm_or_path: An ``LLM``, or a model path/id to load one from.
        device: Device for a model loaded from a path. Default ``None``: accelerate's
            ``PartialState().device`` (this rank's device), falling back to the engine's default.
        offload: Whether ``sleep()`` may move weights to CPU between scoring phases. Default True.
        **llm_kwargs: Passed to ``LLM`` when loading from a path.
    """

    def __init__(self, llm_or_path: LLM | str, device: Any = None, offload: bool = True, **llm_kwargs: Any) -> None:
        if isinstance(llm_or_path, LLM):
            self.llm = llm_or_path
        else:
            if device is None:
                device = _rank_device()
            self.llm = LLM(str(llm_or_path), device=device, **llm_kwargs)
        self.offload = offload
        self.stats = WorkerStats()
        self._info: ModelInfo | None = None

    def encode(
        self,
        prompts: Any,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        pooling_task: str | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = False,
    ) -> list[PoolingRequestOutput]:
        start = time.perf_counter()
        outputs = self.llm.encode(
            prompts,
            pooling_params,
            pooling_task=pooling_task,
            lora_request=lora_request,
            truncate_prompt_tokens=truncate_prompt_tokens,
            use_tqdm=use_tqdm,
        )
        self.stats.requests += 1
        self.stats.prompts += len(outputs)
        self.stats.tokens += sum(len(o.prompt_token_ids) for o in outputs)
        self.stats.busy_seconds += time.perf_counter() - start
        return outputs

    def model_info(self) -> ModelInfo:
        if self._info is None:
            self._info = self.llm.model_info()
        return self._info

    def render_chat(
        self,
        conversations: Sequence[Sequence[dict[str, Any]]],
        *,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
    ) -> list[list[int]]:
        return self.llm.render_chat(conversations, chat_template=chat_template, add_generation_prompt=add_generation_prompt)

    def health(self) -> WorkerHealth:
        return WorkerHealth(ok=True, details={"device": str(self.llm.device)})


def _rank_device() -> Any:
    try:
        from accelerate import PartialState

        return PartialState().device
    except Exception:  # noqa: BLE001 - accelerate not initialised: let the engine choose
        return None
