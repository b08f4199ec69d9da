"""``LoRARequest``: which adapter a request uses (vLLM's ``LoRARequest``)."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_rewards.checks import check_positive_int


@dataclass(frozen=True)
class LoRARequest:
    """A LoRA adapter to apply to one request.

    Args:
        lora_name: Human-readable adapter name; also the ``model`` name clients use on the server.
        lora_int_id: Unique positive integer id of the adapter (vLLM's convention).
        lora_path: Local folder or hub id of a peft adapter (``adapter_config.json`` + weights).
    """

    lora_name: str
    lora_int_id: int
    lora_path: str

    def __post_init__(self) -> None:
        if not isinstance(self.lora_name, str) or not self.lora_name:
            raise ValueError(f"LoRARequest.lora_name must be a non-empty string, got {self.lora_name!r}.")
        check_positive_int("LoRARequest.lora_int_id", self.lora_int_id)
        if not isinstance(self.lora_path, str) or not self.lora_path:
            raise ValueError(f"LoRARequest.lora_path must be a non-empty string, got {self.lora_path!r}.")

    @property
    def adapter_name(self) -> str:
        """The peft adapter name it is loaded under (unique per ``lora_int_id``)."""
        return f"lora_{self.lora_int_id}"
