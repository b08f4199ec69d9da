"""``ColocatedWorker``: the engine in the trainer's own process and device.

The reward model shares the accelerator with the policy. :meth:`ColocatedWorker.sleep` moves its weights
to CPU and returns their accelerator memory to the driver between scoring phases, :meth:`~ColocatedWorker.wake_up`
brings them back (``RewardWorkerCallback`` does both around every scoring call during training). Under
DeepSpeed ZeRO-3 or FSDP the model is loaded whole on every rank (see :mod:`rlhf_rewards.workers.zero3`):
the trainer never wraps it.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import torch

from rlhf_rewards.contract import Conversations
from rlhf_rewards.entrypoints.generative_scoring import GenerativeScoringOutput
from rlhf_rewards.entrypoints.llm import LLM
from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.workers.base import ModelInfo, RewardWorker, WorkerHealth, WorkerStats
from rlhf_rewards.workers.calls import EncodeCall, GenerativeScoreCall
from rlhf_rewards.workers.zero3 import partitioned_parameters, unsharded_loading

logger = logging.getLogger(__name__)
_CPU = torch.device("cpu")


class ColocatedWorker(RewardWorker):
    """Runs an :class:`~rlhf_rewards.LLM` in this process.

    Args:
        llm_or_path: An ``LLM``, or a model path/id to load one from (with complete weights even under
            DeepSpeed ZeRO-3 or FSDP; an ``LLM`` passed in must not have been partitioned).
        device: Device for a model loaded from a path. Default ``None``: accelerate's
            ``PartialState().device`` (this rank's device), falling back to the engine's default.
        offload: Whether :meth:`sleep` moves the weights to CPU. With ``False`` the worker never sleeps
            (``sleep()`` does nothing). Default True.
        pin_memory: Keep the offloaded weights in pinned host memory, for faster transfers (CUDA only).
            Default True.
        **llm_kwargs: Passed to ``LLM`` when loading from a path (``dtype``, ``pooler_config``...).

    State: :attr:`is_sleeping`, :attr:`weight_device` (where the weights are now) and :attr:`device`
    (where they run). Scoring while asleep wakes the worker first; it then stays awake until the next
    :meth:`sleep`. Calls are serialized: one ``encode`` (or ``sleep``/``wake_up``) at a time.
    """

    def __init__(
        self,
        llm_or_path: LLM | str,
        device: Any = None,
        offload: bool = True,
        *,
        pin_memory: bool = True,
        **llm_kwargs: Any,
    ) -> None:
        if isinstance(llm_or_path, LLM):
            if device is not None or llm_kwargs:
                raise ValueError(
                    "device and LLM arguments only apply when loading from a path, not to an LLM."
                )
            partitioned = partitioned_parameters(llm_or_path.model)
            if partitioned:
                raise ValueError(
                    f"This LLM's weights were partitioned by DeepSpeed ZeRO-3 ({len(partitioned)} parameters, e.g. "
                    f"{partitioned[0]!r}), so it cannot score. Pass the model path to ColocatedWorker instead "
                    "(it loads the weights whole), or build the LLM inside "
                    "`with rlhf_rewards.workers.zero3.unsharded_loading():`."
                )
            self.llm = llm_or_path
            self._owns_llm = False
        else:
            if not isinstance(llm_or_path, (str, bytes)) and not hasattr(llm_or_path, "__fspath__"):
                raise ValueError(
                    f"llm_or_path must be an LLM or a model path/id, got {type(llm_or_path).__name__}."
                )
            if device is None:
                device = _rank_device()
            with unsharded_loading():
                self.llm = LLM(str(llm_or_path), device=device, **llm_kwargs)
            self._owns_llm = True
        self.offload = bool(offload)
        self.pin_memory = bool(pin_memory)
        self.stats = WorkerStats()
        self._info: ModelInfo | None = None
        self._sleeping = False
        self._closed = False
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        model = self.llm.model_name if self.llm is not None else "closed"
        return f"ColocatedWorker({model!r}, device={self._device}, sleeping={self._sleeping})"

    # ------------------------------------------------------------------ state
    @property
    def device(self) -> torch.device:
        """The device the model runs on (where :meth:`wake_up` puts the weights)."""
        return self._device

    @property
    def _device(self) -> torch.device:
        return self.llm.device if self.llm is not None else _CPU

    @property
    def is_sleeping(self) -> bool:
        """Whether the weights are offloaded to CPU (:meth:`sleep`) and must come back before scoring."""
        return self._sleeping

    @property
    def weight_device(self) -> torch.device:
        """Where the model's weights are right now: :attr:`device` when awake, CPU while asleep."""
        llm = self._require_open()
        for p in llm.model.parameters():
            return p.device
        return self._device

    def sleep(self) -> None:
        """Move the weights to CPU and free their accelerator memory (``torch.cuda.empty_cache()`` on CUDA).

        Does nothing if already asleep, or if the worker was built with ``offload=False``. On a CPU device
        the weights already are on CPU: the worker is only marked asleep. The engine's cross-call prefix cache
        is dropped either way (its memory is freed; the weights may change before the worker wakes).
        """
        with self._lock:
            llm = self._require_open()
            reset = getattr(llm, "reset_prefix_cache", None)
            if reset is not None:
                reset()
            if self._sleeping or not self.offload:
                return
            start = time.perf_counter()
            _move_module(llm.model, _CPU, pin=self.pin_memory and self._device.type == "cuda")
            self._sleeping = True
            _release_accelerator_memory(self._device)
            logger.debug("%r asleep after %.3fs", self, time.perf_counter() - start)

    def wake_up(self) -> None:
        """Move the weights back to :attr:`device`. Does nothing if awake."""
        with self._lock:
            llm = self._require_open()
            if not self._sleeping:
                return
            start = time.perf_counter()
            _move_module(llm.model, self._device, pin=False)
            self._sleeping = False
            logger.debug("%r awake after %.3fs", self, time.perf_counter() - start)

    # ------------------------------------------------------------------ RewardWorker
    def _encode(self, call: EncodeCall) -> list[PoolingRequestOutput]:
        """Pool the call's prompts (waking the worker first if it sleeps); see :meth:`rlhf_rewards.LLM.encode`."""
        return self._serve(call)

    def _generative_score(self, call: GenerativeScoreCall) -> list[GenerativeScoringOutput]:
        """:meth:`rlhf_rewards.LLM.generative_score` (waking the worker first if it sleeps); every output has
        ``label_probs`` whatever ``all_labels`` says (one forward gives them all)."""
        return self._serve(call)

    def _serve(self, call: EncodeCall | GenerativeScoreCall) -> list[Any]:
        """Run ``call`` on the engine, awake, one call at a time, and count it in :attr:`stats`."""
        with self._lock:
            llm = self._require_open()
            start = time.perf_counter()
            if self._sleeping:
                self.wake_up()
            outputs = call.run_on(llm)
            self.stats.record(outputs, time.perf_counter() - start)
            return outputs

    def tokenize(self, texts: Sequence[str], *, add_special_tokens: bool = False) -> list[list[int]]:
        """Token ids of each text with the model's tokenizer."""
        tok = self._require_open().get_tokenizer()
        return [list(ids) for ids in tok(list(texts), add_special_tokens=add_special_tokens)["input_ids"]]

    def model_info(self) -> ModelInfo:
        """The engine's :class:`ModelInfo` (asked once, then cached)."""
        if self._info is None:
            self._info = self._require_open().model_info()
        return self._info

    def _render_chat(
        self, conversations: Conversations, chat_template: str | None, add_generation_prompt: bool
    ) -> list[list[int]]:
        return self._require_open().render_chat(
            conversations, chat_template=chat_template, add_generation_prompt=add_generation_prompt
        )

    def health(self) -> WorkerHealth:
        """Always ok while open (a sleeping worker wakes on demand); details give the placement."""
        if self._closed:
            return WorkerHealth(ok=False, details={"error": "closed"}, down=[repr(self)])
        return WorkerHealth(
            ok=True,
            details={
                "device": str(self._device),
                "weight_device": str(self.weight_device),
                "sleeping": self._sleeping,
            },
        )

    def close(self) -> None:
        """Drop the model (one loaded from a path) and free its accelerator memory; later calls raise.

        An ``LLM`` passed in belongs to the caller and is left as it is (awake, on its device).
        """
        with self._lock:
            if self._closed:
                return
            if self._sleeping and not self._owns_llm:
                self.wake_up()  # hand the caller's LLM back as it came
            device = self._device
            self._closed = True
            self._sleeping = False
            self.llm = None  # type: ignore[assignment]
            gc.collect()
            _release_accelerator_memory(device)

    def _require_open(self) -> LLM:
        if self._closed:
            raise RuntimeError("This ColocatedWorker is closed.")
        return self.llm


def _move_module(module: torch.nn.Module, device: torch.device, *, pin: bool) -> None:
    """Move every parameter and buffer of ``module`` to ``device`` in place (Parameter objects are kept, so
    tied weights stay tied and references held elsewhere, e.g. by peft, stay valid)."""

    def move(t: torch.Tensor) -> torch.Tensor:
        if t.device == device:
            return t
        if pin and device.type == "cpu":
            out = torch.empty(t.shape, dtype=t.dtype, device="cpu", pin_memory=True)
            out.copy_(t, non_blocking=True)
            return out
        return t.to(device, non_blocking=t.device.type == "cpu" and t.is_pinned())

    sources = {t.device for t in (*module.parameters(), *module.buffers())}
    with torch.no_grad():
        module._apply(move)
    for dev in sources | {device}:  # copies were asynchronous: finish them before memory is released or used
        _synchronize(dev)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    else:
        backend = getattr(torch, device.type, None)
        if device.type != "cpu" and backend is not None and hasattr(backend, "synchronize"):
            backend.synchronize()


def _release_accelerator_memory(device: torch.device) -> None:
    """Return cached blocks of ``device`` to the driver, so other processes and the policy can use them."""
    if device.type == "cpu":
        return
    _synchronize(device)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.empty_cache()
        return
    backend = getattr(torch, device.type, None)
    if backend is not None and hasattr(backend, "empty_cache"):
        backend.empty_cache()


def _rank_device() -> Any:
    try:
        from accelerate import PartialState

        return PartialState().device
    except Exception:  # noqa: BLE001 - accelerate not initialised: let the engine choose
        return None


__all__ = ["ColocatedWorker"]
