"""``ModelInfo``: what a reward function needs to know about a served model, on any worker and on the wire."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


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


__all__ = ["ModelInfo"]
