"""``LLM``'s LoRA adapter registry, as vLLM names it: ``add_lora``, ``remove_lora``, ``list_loras``,
``get_lora``. The work is :class:`~rlhf_rewards.lora.manager.LoRAManager`'s; these methods hold the engine lock
and drop the prefix cache, whose keys and values belong to the adapters they were computed with."""

from __future__ import annotations

import threading
from typing import Any

from rlhf_rewards.lora.request import LoRARequest


class LoRAMethods:
    """Mixed into ``LLM``, which provides the lock, the manager (``None`` without ``enable_lora``) and
    ``reset_prefix_cache``."""

    _engine_lock: threading.RLock
    lora_manager: Any

    def add_lora(self, lora_request: LoRARequest) -> bool:
        """Register an adapter under its ``lora_name`` and load it now (a bad adapter raises ValueError here).

        Registered adapters are found by name with :meth:`get_lora` (the server's ``--lora-modules``). They
        are not pinned: with more than ``max_loras`` the least recently used are unloaded and come back on
        demand. Returns ``False`` if this exact adapter was already registered.
        """
        with self._engine_lock:  # loading changes the model's modules: never during another thread's forward
            self.reset_prefix_cache()  # cached keys/values of a re-registered name may be another adapter's
            return self._lora().add_lora(lora_request)

    def remove_lora(self, lora: int | str | LoRARequest) -> bool:
        """Unregister and unload an adapter (by ``lora_int_id``, name or request); ``False`` if unknown."""
        with self._engine_lock:
            self.reset_prefix_cache()
            return self._lora().remove_lora(lora)

    def list_loras(self) -> list[LoRARequest]:
        """Adapters registered with :meth:`add_lora`, in registration order."""
        return self._lora().list_loras()

    def get_lora(self, name: str) -> LoRARequest:
        """The registered adapter called ``name`` (ValueError listing the registered names otherwise)."""
        return self._lora().get_lora(name)

    def _lora(self) -> Any:
        if self.lora_manager is None:
            raise ValueError("LoRA adapters need LLM(..., enable_lora=True).")
        return self.lora_manager


__all__ = ["LoRAMethods"]
