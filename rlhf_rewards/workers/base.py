"""The one worker interface shared by the colocated, remote and Ray workers.

``RewardFunction`` and the trainer callbacks only ever talk to :class:`RewardWorker`, so they never need to
know where the model runs.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.pooling.params import PoolingParams


@dataclass
class ModelInfo:
    """What a reward function needs to know about the served model (JSON-serializable).

    Args:
        model: Served model name (path, hub id or ``--served-model-name``).
        architecture: ``architectures[0]`` of the checkpoint.
        kind: ``outcome``, ``token``, ``process`` or ``embedding``.
        tasks: Supported pooling tasks.
        default_task: The task a reward function uses.
        pooler_configs: Effective ``PoolerConfig`` per task, as dicts.
        num_labels: Width of the classification head.
        max_model_len: Longest prompt in tokens.
        step_tag: Text of the step tag (STEP pooling with ``step_tag_id``), else ``None``.
        step_tag_id: Its token id, else ``None``.
        reward_token: Text appended to a conversation before scoring (InternLM2's reward token), else ``None``.
        has_chat_template: Whether the model's tokenizer has a chat template.
        lora_modules: Names of adapters the worker can serve by name.
    """

    model: str
    architecture: str
    kind: str
    tasks: list[str]
    default_task: str
    pooler_configs: dict[str, dict[str, Any]]
    num_labels: int
    max_model_len: int
    step_tag: str | None = None
    step_tag_id: int | None = None
    reward_token: str | None = None
    has_chat_template: bool = False
    lora_modules: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """As a JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        """Inverse of :meth:`to_dict` (unknown keys are ignored, for forward compatibility)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class WorkerHealth:
    """Health of a worker. ``ok`` is False if it cannot serve; ``down`` names the endpoints that are down."""

    ok: bool
    details: dict[str, Any] = field(default_factory=dict)
    down: list[str] = field(default_factory=list)


@dataclass
class WorkerStats:
    """Counters a worker keeps for metrics (monotonic; callbacks report differences)."""

    requests: int = 0
    prompts: int = 0
    tokens: int = 0
    retries: int = 0
    failures: int = 0
    busy_seconds: float = 0.0


class RewardWorker(ABC):
    """Runs pooling requests somewhere. Same arguments and outputs as :meth:`rlhf_rewards.LLM.encode`."""

    stats: WorkerStats

    @abstractmethod
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
        """Pool ``prompts``; see :meth:`rlhf_rewards.LLM.encode`."""

    async def aencode(
        self,
        prompts: Any,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        pooling_task: str | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = False,
    ) -> list[PoolingRequestOutput]:
        """Async :meth:`encode`; the default runs it in a thread so the event loop stays free."""
        return await asyncio.to_thread(
            self.encode,
            prompts,
            pooling_params,
            pooling_task=pooling_task,
            lora_request=lora_request,
            truncate_prompt_tokens=truncate_prompt_tokens,
            use_tqdm=use_tqdm,
        )

    @abstractmethod
    def model_info(self) -> ModelInfo:
        """Facts about the served model (cached by implementations)."""

    @abstractmethod
    def render_chat(
        self,
        conversations: Sequence[Sequence[dict[str, Any]]],
        *,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
    ) -> list[list[int]]:
        """Token ids of each conversation rendered with the reward model's own chat template."""

    @abstractmethod
    def health(self) -> WorkerHealth:
        """Whether the worker can serve now."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (connections, actors, accelerator memory)."""

    def __enter__(self) -> RewardWorker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
