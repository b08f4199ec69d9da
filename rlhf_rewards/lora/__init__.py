"""LoRA adapters served per request (built on peft).

- :class:`LoRARequest`: which adapter a prompt uses (vLLM's ``LoRARequest``).
- :class:`LoRAManager`: loads adapters into a model on demand (at most ``max_loras``, least recently used
  evicted), checks them, and routes each batch row through its adapter. ``LLM(..., enable_lora=True)``
  owns one.

peft itself is imported only when an adapter is first checked or loaded.
"""

from rlhf_rewards.lora.manager import LoRAManager
from rlhf_rewards.lora.request import LoRARequest

__all__ = ["LoRAManager", "LoRARequest"]
