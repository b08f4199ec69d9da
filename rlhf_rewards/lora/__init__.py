"""LoRA adapters served per request (built on peft).

- :class:`LoRARequest`: which adapter a prompt uses (vLLM's ``LoRARequest``).
- :class:`LoRAManager`: loads adapters into a model on demand (at most ``max_loras``, least recently used
  evicted), checks them, and routes each batch row through its adapter. ``LLM(..., enable_lora=True)``
  owns one.
- :func:`build_adapter`, :func:`build_merged`: tiny random adapters and their ``merge_and_unload``
  reference, for tests and demos.

peft itself is imported only when an adapter is first checked or loaded.
"""

from rlhf_rewards.lora.manager import LoRAManager
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.lora.testing import build_adapter, build_merged

__all__ = ["LoRAManager", "LoRARequest", "build_adapter", "build_merged"]
