"""``LoRAManager``: which adapters are loaded, which are known by name, and what each batch row uses.

At most ``max_loras`` adapters are in the model at once; the least recently used is evicted when another
is needed and is loaded again when asked for. A call that needs more adapters than that (or adapters that
peft cannot hold together) runs in waves (:meth:`LoRAManager.run_in_waves`), each with its adapters loaded.
Within a wave, rows of different adapters and of the base model share padded forwards (peft's
mixed-adapter batch, see :mod:`rlhf_rewards.lora.routing`). The runner's packed path puts one adapter in
each packed forward instead: peft routes by batch row, and a packed forward is one row (routing it per
token would cost peft a Python pass over every token in every LoRA layer).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import torch

from rlhf_rewards.checks import check_positive_int, is_int
from rlhf_rewards.lora.config import AdapterInfo, ModuleIndex, describe, read_adapter_config
from rlhf_rewards.lora.loading import load_adapter, unload_adapter
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.lora.routing import BASE, PeftAdapterRouter

if TYPE_CHECKING:
    from rlhf_rewards.models.base import PoolingModel


class HasLoRA(Protocol):
    """Anything that names the adapter it runs with (the engine's requests)."""

    lora: LoRARequest | None


R = TypeVar("R", bound=HasLoRA)


class LoRAManager:
    """Loads peft LoRA adapters into a :class:`~rlhf_rewards.models.base.PoolingModel` on demand.

    Args:
        model: The model adapters are injected into (in place; ``model.hf_model`` stays the transformers model).
        max_loras: Most adapters loaded at once (least recently used are evicted). Default 4.
        max_lora_rank: Largest rank accepted (``r`` and every ``rank_pattern`` value). Default 64.

    Adapters are identified by ``lora_int_id``: one id is one adapter folder. Named adapters registered
    with :meth:`add_lora` (the server's ``--lora-modules``) are found again with :meth:`get_lora`.
    """

    def __init__(self, model: PoolingModel, *, max_loras: int = 4, max_lora_rank: int = 64) -> None:
        check_positive_int("max_loras", max_loras)
        check_positive_int("max_lora_rank", max_lora_rank)
        self.model = model
        model.adapter_router = PeftAdapterRouter()
        self.max_loras = max_loras
        self.max_lora_rank = max_lora_rank
        self._index = ModuleIndex(model.hf_model)
        #: Loaded adapters by ``lora_int_id``, least recently used first.
        self._loaded: OrderedDict[int, AdapterInfo] = OrderedDict()
        #: Adapters registered by name (:meth:`add_lora`), in registration order.
        self._registered: dict[str, LoRARequest] = {}
        #: Checked configs, so an adapter's config is read once.
        self._infos: dict[LoRARequest, AdapterInfo] = {}
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ registry (server: --lora-modules)
    def add_lora(self, lora_request: LoRARequest) -> bool:
        """Register ``lora_request`` under its ``lora_name`` and load it now, so a bad adapter fails here.

        Returns ``False`` if this exact request was already registered. Raises :class:`ValueError` if the
        adapter cannot be served, or if its name or id is taken by a different adapter.
        """
        request = _check_request(lora_request)
        with self._lock:
            known = self._registered.get(request.lora_name)
            if known == request:
                return False
            if known is not None:
                raise ValueError(
                    f"A LoRA adapter named {request.lora_name!r} is already registered ({describe(known)}); "
                    "remove it first or pick another name."
                )
            self._check_id(request)
            self.prepare([request])
            self._registered[request.lora_name] = request
            return True

    def remove_lora(self, lora: int | str | LoRARequest) -> bool:
        """Unregister and unload an adapter, by ``lora_int_id``, name or request. ``False`` if unknown."""
        with self._lock:
            request = self._find(lora)
            if request is None:
                return False
            self._registered = {n: r for n, r in self._registered.items() if r != request}
            if request.lora_int_id in self._loaded:
                self._evict(request.lora_int_id)
            self._infos.pop(request, None)
            return True

    def list_loras(self) -> list[LoRARequest]:
        """Registered adapters, in registration order (loaded or not)."""
        with self._lock:
            return list(self._registered.values())

    def get_lora(self, name: str) -> LoRARequest:
        """The registered adapter called ``name``; :class:`ValueError` listing the known names if none is."""
        with self._lock:
            if name in self._registered:
                return self._registered[name]
            raise ValueError(
                f"Unknown LoRA adapter {name!r}; registered adapters: {sorted(self._registered)}."
            )

    @property
    def loaded_loras(self) -> list[LoRARequest]:
        """Adapters in the model now, least recently used first."""
        with self._lock:
            return [info.request for info in self._loaded.values()]

    # ------------------------------------------------------------------ checking and loading
    def check(self, requests: Sequence[LoRARequest | None]) -> None:
        """Check every adapter of ``requests`` without loading it (config, rank, target modules, ids)."""
        with self._lock:
            for request in _distinct(requests):
                self._check_id(request)
                self._info(request)

    def prepare(self, requests: Sequence[LoRARequest | None]) -> None:
        """Load every adapter of ``requests`` (``None`` entries are the base model), evicting others if needed.

        Raises :class:`ValueError` if they are more than ``max_loras``, cannot be loaded together, or one
        cannot be loaded (the model is then left without it, as before the call).
        """
        with self._lock:
            needed = _distinct(requests)
            if len(needed) > self.max_loras:
                raise ValueError(
                    f"{len(needed)} LoRA adapters are needed at once but max_loras={self.max_loras}; "
                    "raise max_loras or use LLM.encode, which runs them in turns."
                )
            infos = []
            for request in needed:
                self._check_id(request)
                infos.append(self._info(request))
            for i, a in enumerate(infos):
                for b in infos[i + 1 :]:
                    if a.footprint.conflicts_with(b.footprint):
                        raise ValueError(_conflict_message(a, b))
            wanted = {r.lora_int_id for r in needed}
            for request in needed:  # most recently used now: evicted last
                if request.lora_int_id in self._loaded:
                    self._loaded.move_to_end(request.lora_int_id)
            for info in infos:
                lora_id = info.request.lora_int_id
                if lora_id in self._loaded:
                    continue
                for other_id, other in list(self._loaded.items()):
                    if other_id not in wanted and other.footprint.conflicts_with(info.footprint):
                        self._evict(other_id)
                while len(self._loaded) >= self.max_loras:
                    self._evict(next(i for i in self._loaded if i not in wanted))
                load_adapter(self.model, info)
                self._loaded[lora_id] = info

    def _evict(self, lora_id: int) -> None:
        info = self._loaded.pop(lora_id)
        unload_adapter(self.model, info.request.adapter_name)

    def _info(self, request: LoRARequest) -> AdapterInfo:
        info = self._infos.get(request)
        if info is None:
            info = read_adapter_config(request, self._index, self.max_lora_rank)
            self._infos[request] = info
        return info

    def _check_id(self, request: LoRARequest) -> None:
        _check_request(request)
        taken = self._loaded.get(request.lora_int_id)
        others = [taken.request] if taken is not None else []
        others += [r for r in self._registered.values() if r.lora_int_id == request.lora_int_id]
        for other in others:
            if other != request:
                raise ValueError(
                    f"lora_int_id={request.lora_int_id} of {describe(request)} is already used by {describe(other)}; "
                    "every adapter needs its own lora_int_id."
                )

    def _find(self, lora: int | str | LoRARequest) -> LoRARequest | None:
        candidates = [*self._registered.values(), *(i.request for i in self._loaded.values())]
        for request in candidates:
            if (
                (isinstance(lora, LoRARequest) and request == lora)
                or (isinstance(lora, str) and request.lora_name == lora)
                or (is_int(lora) and request.lora_int_id == lora)
            ):
                return request
        return None

    # ------------------------------------------------------------------ running
    def plan(self, loras: Sequence[LoRARequest | None]) -> list[list[int]]:
        """Split positions of ``loras`` into waves whose adapters can be loaded together.

        Each wave has at most ``max_loras`` adapters and no two that conflict; base-model entries join the
        first wave. Adapters already loaded go first, so fewer are reloaded.
        """
        with self._lock:
            distinct = _distinct(loras)
            distinct.sort(key=lambda r: r.lora_int_id not in self._loaded)
            waves: list[list[AdapterInfo]] = []
            for request in distinct:
                info = self._info(request)
                for wave in waves:
                    if len(wave) < self.max_loras and not any(
                        info.footprint.conflicts_with(o.footprint) for o in wave
                    ):
                        wave.append(info)
                        break
                else:
                    waves.append([info])
            wave_of = {info.request: w for w, wave in enumerate(waves) for info in wave}
            positions: list[list[int]] = [[] for _ in range(max(len(waves), 1))]
            for i, lora in enumerate(loras):
                positions[wave_of[lora] if lora is not None else 0].append(i)
            return [p for p in positions if p]

    def run_in_waves(
        self, requests: list[R], run: Callable[[list[R]], list[torch.Tensor]]
    ) -> list[torch.Tensor]:
        """``run(requests)`` with each request's adapter loaded, in as few waves as :meth:`plan` allows."""
        with self._lock:
            waves = self.plan([r.lora for r in requests])
            if len(waves) == 1:
                self.prepare([r.lora for r in requests])
                return run(requests)
            results: list[torch.Tensor | None] = [None] * len(requests)
            for wave in waves:
                chunk = [requests[i] for i in wave]
                self.prepare([r.lora for r in chunk])
                for i, tensor in zip(wave, run(chunk), strict=True):
                    results[i] = tensor
            return [r for r in results if r is not None]

    def forward_kwargs(self, requests: Sequence[HasLoRA]) -> dict[str, dict[str, Any]]:
        """The ModelRunner hook: per-row ``adapter_names`` for the backbone and head of one batch.

        Empty when every request is the base model's (the runner's fastest path then applies).
        """
        if all(r.lora is None for r in requests):
            return {}
        names = []
        for r in requests:
            if r.lora is None:
                names.append(BASE)
                continue
            info = self._loaded.get(r.lora.lora_int_id)
            if info is None or info.request != r.lora:
                raise RuntimeError(
                    f"{describe(r.lora)} is not loaded; call LoRAManager.prepare (LLM.encode does) before running it."
                )
            names.append(r.lora.adapter_name)
        return {"forward": {"adapter_names": names}, "head": {"adapter_names": list(names)}}


def _check_request(request: Any) -> LoRARequest:
    if not isinstance(request, LoRARequest):
        raise ValueError(f"Expected a LoRARequest, got {type(request).__name__}.")
    return request


def _distinct(requests: Sequence[LoRARequest | None]) -> list[LoRARequest]:
    """The different adapters of ``requests``; :class:`ValueError` if two of them share a ``lora_int_id``."""
    seen: dict[LoRARequest, None] = {}
    by_id: dict[int, LoRARequest] = {}
    for request in requests:
        if request is None:
            continue
        request = _check_request(request)
        other = by_id.setdefault(request.lora_int_id, request)
        if other != request:
            raise ValueError(
                f"lora_int_id={request.lora_int_id} of {describe(request)} is already used by {describe(other)}; "
                "every adapter needs its own lora_int_id."
            )
        seen.setdefault(request, None)
    return list(seen)


def _conflict_message(a: AdapterInfo, b: AdapterInfo) -> str:
    return (
        f"{describe(a.request)} and {describe(b.request)} cannot be loaded together: one replaces a module "
        f"(modules_to_save) that the other puts LoRA layers in. LLM.encode runs such adapters in turns."
    )


__all__ = ["LoRAManager"]
