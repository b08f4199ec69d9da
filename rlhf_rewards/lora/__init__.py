"""LoRA adapters served per request (built on peft)."""

from rlhf_rewards.lora.request import LoRARequest

__all__ = ["LoRARequest"]
