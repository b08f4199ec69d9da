"""``RayWorkerPool``: replicas of the engine on Ray actors, behind the worker interface.

Each replica is a Ray actor holding one :class:`~rlhf_rewards.LLM`. A call is cut into chunks of at most
``max_batch_size`` prompts; every chunk goes to the least-loaded live replica (fewest prompts in flight),
at most ``max_inflight_per_replica`` chunks per replica at a time, and the outputs are put back in input
order. Actors are created with ``max_restarts``, so Ray restarts a replica whose process died. A chunk
whose replica died is sent again, to another replica when there is one: every chunk fills its own slots
of the result exactly once, so nothing is lost and nothing is duplicated (scoring has no side effects, so
running a chunk twice is harmless). A replica that failed is set aside for ``down_for`` seconds.

``ray`` is an optional dependency (``pip install rlhf-rewards[ray]``); it is imported only here.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
import threading
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from rlhf_rewards.engine.inputs import normalize_prompts
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.pooling.params import PoolingParams
from rlhf_rewards.workers.base import ModelInfo, RewardWorker, WorkerHealth, WorkerStats

T = TypeVar("T")
_INSTALL_HINT = "RayWorkerPool needs Ray: pip install rlhf-rewards[ray]"


class RayWorkerPoolError(RuntimeError):
    """A chunk could not be scored by any replica within the retry budget."""


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - exercised by a test that hides ray
        raise ImportError(f"{_INSTALL_HINT} (import failed: {exc}).") from exc
    return ray


class ReplicaActor:
    """The body of one replica actor: an ``LLM`` built in the actor's process (wrapped by ``ray.remote``)."""

    def __init__(self, model: str, llm_kwargs: dict[str, Any]) -> None:
        import os

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from rlhf_rewards.entrypoints.llm import LLM

        self.llm = LLM(model, **llm_kwargs)
        self.pid = os.getpid()

    def encode(self, prompts: list[Any], pooling_params: Any, pooling_task: str | None, lora_request: Any,
               truncate_prompt_tokens: int | None) -> list[PoolingRequestOutput]:
        """``LLM.encode`` on one chunk."""
        return self.llm.encode(prompts, pooling_params, pooling_task=pooling_task, lora_request=lora_request,
                               truncate_prompt_tokens=truncate_prompt_tokens, use_tqdm=False)

    def model_info(self) -> ModelInfo:
        """``LLM.model_info()``."""
        return self.llm.model_info()

    def render_chat(self, conversations: Any, chat_template: str | None, add_generation_prompt: bool) -> list[list[int]]:
        """``LLM.render_chat``."""
        return self.llm.render_chat(conversations, chat_template=chat_template,
                                    add_generation_prompt=add_generation_prompt)

    def ping(self) -> dict[str, Any]:
        """Liveness and placement."""
        return {"pid": self.pid, "device": str(self.llm.device)}


@dataclass
class _Replica:
    """What the pool knows about one actor."""

    index: int
    handle: Any
    inflight_chunks: int = 0
    inflight_prompts: int = 0
    chunks_done: int = 0
    failures: int = 0
    down_until: float = 0.0
    last_error: str | None = None


@dataclass
class _Chunk:
    start: int
    prompts: list[Any]
    params: list[PoolingParams | None] | PoolingParams | None
    loras: list[LoRARequest | None] | LoRARequest | None


class RayWorkerPool(RewardWorker):
    """``num_replicas`` copies of the engine on Ray actors; same arguments and outputs as ``LLM.encode``.

    Args:
        model: Model folder or hub id, loaded by every replica (the folder must be readable on every node).
        num_replicas: Number of actors. Default 1.
        num_gpus_per_replica: GPUs reserved per actor (fractions share a GPU). With 0 the replicas run on
            CPU; with more they run on the GPU Ray assigns them. Default 0.
        num_cpus_per_replica: CPUs reserved per actor. Default 1.
        max_restarts: How many times Ray restarts a replica whose process died (``-1``: forever). Default 3.
        max_retries: How many times a chunk is sent again after its replica died. Default 4.
        max_batch_size: Most prompts per chunk (one actor call). Default 64.
        max_inflight_per_replica: Most chunks queued on one replica at a time. Default 2.
        down_for: Seconds a replica that failed is passed over (it is used again afterwards, once Ray has
            restarted it). Default 1.
        ray_init_kwargs: Passed to ``ray.init`` if Ray is not initialised yet (then :meth:`close` shuts
            it down again). Default: ``ray.init()`` (a local cluster, or the one ``RAY_ADDRESS`` names).
        actor_options: Extra ``.options(...)`` for the actors (``runtime_env``, ``scheduling_strategy``...).
        ready_timeout: Seconds to wait for every replica to be placed and to load the model. Default 600.
        **llm_kwargs: Passed to ``LLM`` in every replica (``dtype``, ``pooler_config``, ``enable_lora``...).
            ``device`` defaults to ``"cuda"`` with GPUs and ``"cpu"`` without.

    The constructor waits until every replica has loaded the model, so loading errors surface here.
    """

    def __init__(
        self,
        model: str,
        num_replicas: int = 1,
        *,
        num_gpus_per_replica: float = 0,
        num_cpus_per_replica: float = 1,
        max_restarts: int = 3,
        max_retries: int = 4,
        max_batch_size: int = 64,
        max_inflight_per_replica: int = 2,
        down_for: float = 1.0,
        ray_init_kwargs: dict[str, Any] | None = None,
        actor_options: dict[str, Any] | None = None,
        ready_timeout: float = 600.0,
        **llm_kwargs: Any,
    ) -> None:
        import os

        ray = _import_ray()
        if isinstance(model, os.PathLike):
            model = os.fspath(model)
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a model folder or hub id string, got {model!r}.")
        _check_int("num_replicas", num_replicas, 1)
        _check_int("max_restarts", max_restarts, -1)
        _check_int("max_retries", max_retries, 0)
        _check_int("max_batch_size", max_batch_size, 1)
        _check_int("max_inflight_per_replica", max_inflight_per_replica, 1)
        for name, value in (("num_gpus_per_replica", num_gpus_per_replica),
                            ("num_cpus_per_replica", num_cpus_per_replica), ("down_for", down_for),
                            ("ready_timeout", ready_timeout)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{name} must be a number >= 0, got {value!r}.")
        self.model = model
        self.num_replicas = num_replicas
        self.max_retries = max_retries
        self.max_batch_size = max_batch_size
        self.max_inflight_per_replica = max_inflight_per_replica
        self.down_for = float(down_for)
        self.stats = WorkerStats()
        self._info: ModelInfo | None = None
        self._closed = False
        self._owns_ray = False
        if not ray.is_initialized():
            ray.init(**(ray_init_kwargs or {}))
            self._owns_ray = True
        kwargs = dict(llm_kwargs)
        kwargs.setdefault("device", "cuda" if num_gpus_per_replica > 0 else "cpu")
        actor_cls = ray.remote(ReplicaActor)
        options = {"num_cpus": num_cpus_per_replica, "num_gpus": num_gpus_per_replica,
                   "max_restarts": max_restarts, "max_task_retries": 0, **(actor_options or {})}
        # max_task_retries=0: the pool, not Ray, resends a dead replica's chunks, to a replica that is alive.
        self._replicas = [_Replica(i, actor_cls.options(**options).remote(model, kwargs))
                          for i in range(num_replicas)]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="ray-worker-pool", daemon=True)
        self._thread.start()
        self._changed: asyncio.Condition = self._run(_make_condition())
        self._turn = itertools.count()
        try:
            ray.get([r.handle.ping.remote() for r in self._replicas], timeout=ready_timeout)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise RuntimeError(
                f"RayWorkerPool: the {num_replicas} replicas were not ready within ready_timeout={ready_timeout}s. "
                f"Each needs num_cpus_per_replica={num_cpus_per_replica} and num_gpus_per_replica="
                f"{num_gpus_per_replica}; the cluster has {ray.cluster_resources()} "
                f"({ray.available_resources()} free)."
            ) from None
        except ray.exceptions.RayActorError as exc:
            self.close()
            # The actor's constructor failed (bad model path, bad LLM argument): the LLM's own message is the
            # last line of Ray's report; a ValueError stays a ValueError, as when the LLM is built in-process.
            last = next((ln.strip() for ln in reversed(str(exc).splitlines()) if ln.strip()), str(exc))
            if last.startswith("ValueError: "):
                raise ValueError(last[len("ValueError: "):]) from None
            raise RuntimeError(f"RayWorkerPool: a replica failed to load {model!r}: {last}\n{exc}") from None
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"RayWorkerPool({self.model!r}, num_replicas={self.num_replicas})"

    @property
    def actors(self) -> list[Any]:
        """The replicas' actor handles, in order (for placement checks and fault-injection tests)."""
        return [r.handle for r in self._replicas]

    def load(self) -> list[dict[str, Any]]:
        """Per replica: chunks and prompts in flight, chunks done, failures, whether it is set aside now."""
        now = time.monotonic()
        return [{"replica": r.index, "inflight_chunks": r.inflight_chunks, "inflight_prompts": r.inflight_prompts,
                 "chunks_done": r.chunks_done, "failures": r.failures, "down": r.down_until > now,
                 "last_error": r.last_error} for r in self._replicas]

    # ------------------------------------------------------------------ plumbing
    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the pool's loop and wait for it (from any thread but the loop's)."""
        if self._closed:
            coro.close()
            raise RuntimeError("This RayWorkerPool is closed.")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("RayWorkerPool's blocking methods cannot run on its own event loop; use aencode.")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _arun(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise RuntimeError("This RayWorkerPool is closed.")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    # ------------------------------------------------------------------ RewardWorker
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
        """Pool ``prompts`` over the replicas; see :meth:`rlhf_rewards.LLM.encode`."""
        return self._run(self._encode(prompts, pooling_params, pooling_task, lora_request, truncate_prompt_tokens))

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
        """Async :meth:`encode` (awaits the actors; no thread is blocked)."""
        return await self._arun(self._encode(prompts, pooling_params, pooling_task, lora_request,
                                             truncate_prompt_tokens))

    def model_info(self) -> ModelInfo:
        if self._info is None:
            self._info = self._run(self._call_any("model_info"))
        return self._info

    def render_chat(
        self,
        conversations: Sequence[Sequence[dict[str, Any]]],
        *,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
    ) -> list[list[int]]:
        return self._run(self._call_any("render_chat", [list(c) for c in conversations], chat_template,
                                        add_generation_prompt))

    def health(self, timeout: float = 10.0) -> WorkerHealth:
        """Pings every replica (waiting up to ``timeout`` seconds); ``ok`` while at least one answers."""
        if self._closed:
            return WorkerHealth(ok=False, details={"error": "closed"}, down=[repr(self)])
        return self._run(self._health(timeout))

    def close(self) -> None:
        """Kill the actors (and shut Ray down if this pool started it); later calls raise."""
        if self._closed:
            return
        self._closed = True
        ray = _import_ray()
        for r in self._replicas:
            try:
                ray.kill(r.handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    # ------------------------------------------------------------------ scheduling
    async def _encode(self, prompts: Any, pooling_params: Any, pooling_task: str | None, lora_request: Any,
                      truncate_prompt_tokens: int | None) -> list[PoolingRequestOutput]:
        from rlhf_rewards.entrypoints.llm import LLM

        start = time.perf_counter()
        items = normalize_prompts(prompts)
        if not items:
            raise ValueError("prompts is empty: pass at least one prompt.")
        n = len(items)
        # Per-prompt lists are checked here (errors name the caller's index) and sliced with the prompts.
        params = pooling_params if pooling_params is None or isinstance(pooling_params, PoolingParams) else \
            LLM._per_prompt("pooling_params", pooling_params, n, PoolingParams)
        loras = lora_request if lora_request is None or isinstance(lora_request, LoRARequest) else \
            LLM._per_prompt("lora_request", lora_request, n, LoRARequest)
        live = max(1, sum(1 for r in self._replicas if r.down_until <= time.monotonic()))
        # Spread even a small call over the replicas, but never beyond max_batch_size per chunk.
        size = min(self.max_batch_size, max(1, math.ceil(n / live)))
        chunks = [_Chunk(lo, items[lo: lo + size], _slice(params, lo, size), _slice(loras, lo, size))
                  for lo in range(0, n, size)]
        results: list[PoolingRequestOutput | None] = [None] * n
        args = (pooling_task, truncate_prompt_tokens)
        await _gather_or_raise([self._run_chunk(c, results, *args) for c in chunks])
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:  # every chunk fills its slots or raises; this guards the invariant
            raise RayWorkerPoolError(f"No result for prompts {missing[:10]}.")
        outputs = [r for r in results if r is not None]
        self.stats.requests += 1
        self.stats.prompts += n
        self.stats.tokens += sum(len(o.prompt_token_ids) for o in outputs)
        self.stats.busy_seconds += time.perf_counter() - start
        return outputs

    async def _run_chunk(self, chunk: _Chunk, results: list[PoolingRequestOutput | None],
                         pooling_task: str | None, truncate_prompt_tokens: int | None) -> None:
        ray = _import_ray()
        tried: set[int] = set()
        attempt = 0
        while True:
            replica = await self._acquire(len(chunk.prompts), tried)
            try:
                ref = replica.handle.encode.remote(chunk.prompts, chunk.params, pooling_task, chunk.loras,
                                                   truncate_prompt_tokens)
                outputs = await ref
            except ray.exceptions.RayTaskError as exc:
                # The replica is fine; the request is not (a ValueError from LLM.encode, like in-process).
                self._release(replica, len(chunk.prompts), ok=True)
                cause = getattr(exc, "cause", None)
                if isinstance(cause, ValueError):
                    raise ValueError(_shift_indices(str(cause), chunk.start)) from None
                raise RayWorkerPoolError(f"replica {replica.index} failed on prompts {chunk.start}.."
                                         f"{chunk.start + len(chunk.prompts) - 1}: {cause or exc}") from exc
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError, ray.exceptions.RaySystemError,
                    ray.exceptions.WorkerCrashedError) as exc:
                self._release(replica, len(chunk.prompts), ok=False, error=f"{type(exc).__name__}: {exc}")
                tried.add(replica.index)
                attempt += 1
                self.stats.failures += 1
                if attempt > self.max_retries:
                    raise RayWorkerPoolError(
                        f"prompts {chunk.start}..{chunk.start + len(chunk.prompts) - 1} failed on {attempt} "
                        f"replica attempts (max_retries={self.max_retries}); last: {type(exc).__name__}: {exc}"
                    ) from exc
                self.stats.retries += 1
                continue
            except BaseException:
                self._release(replica, len(chunk.prompts), ok=True)
                raise
            self._release(replica, len(chunk.prompts), ok=True)
            if len(outputs) != len(chunk.prompts):
                raise RayWorkerPoolError(f"replica {replica.index} returned {len(outputs)} outputs for "
                                         f"{len(chunk.prompts)} prompts.")
            for j, out in enumerate(outputs):
                results[chunk.start + j] = out
            return

    async def _acquire(self, n_prompts: int, avoid: set[int]) -> _Replica:
        """The least-loaded live replica with a free slot (not in ``avoid`` if another is free); waits if none."""
        async with self._changed:
            while True:
                now = time.monotonic()
                free = [r for r in self._replicas
                        if r.down_until <= now and r.inflight_chunks < self.max_inflight_per_replica]
                group = [r for r in free if r.index not in avoid] or free
                if group:
                    turn = next(self._turn)
                    best = min(group, key=lambda r: (r.inflight_prompts, (r.index - turn) % len(self._replicas)))
                    best.inflight_chunks += 1
                    best.inflight_prompts += n_prompts
                    return best
                # Every replica is busy or set aside: wait for a release, or until one is back.
                wake = [r.down_until - now for r in self._replicas if r.down_until > now]
                try:
                    await asyncio.wait_for(self._changed.wait(), timeout=min(wake) if wake else None)
                except asyncio.TimeoutError:
                    pass

    def _release(self, replica: _Replica, n_prompts: int, *, ok: bool, error: str | None = None) -> None:
        replica.inflight_chunks -= 1
        replica.inflight_prompts -= n_prompts
        if ok:
            replica.chunks_done += 1
        else:
            replica.failures += 1
            replica.last_error = error
            replica.down_until = time.monotonic() + self.down_for
        self._loop.create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _call_any(self, method: str, *args: Any) -> Any:
        """Call ``method`` on a live replica, moving on to the next if one has died."""
        ray = _import_ray()
        last: Exception | None = None
        tried: set[int] = set()
        for _ in range(self.max_retries + 1):
            replica = await self._acquire(0, tried)
            try:
                result = await getattr(replica.handle, method).remote(*args)
            except ray.exceptions.RayTaskError as exc:
                self._release(replica, 0, ok=True)
                cause = getattr(exc, "cause", None)
                if isinstance(cause, ValueError):
                    raise ValueError(str(cause)) from None
                raise
            except (ray.exceptions.RayActorError, ray.exceptions.RaySystemError) as exc:
                self._release(replica, 0, ok=False, error=f"{type(exc).__name__}: {exc}")
                tried.add(replica.index)
                last = exc
                self.stats.failures += 1
                continue
            self._release(replica, 0, ok=True)
            return result
        raise RayWorkerPoolError(f"{method} failed on every attempt: {last}") from last

    async def _health(self, timeout: float) -> WorkerHealth:
        async def probe(r: _Replica) -> tuple[int, dict[str, Any]]:
            try:
                info = await asyncio.wait_for(r.handle.ping.remote(), timeout)
                return r.index, {"ok": True, **info}
            except Exception as exc:  # noqa: BLE001 - any failure means "not serving now"
                return r.index, {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}

        answers = dict(await asyncio.gather(*(probe(r) for r in self._replicas)))
        details = {f"replica-{i}": {**answers[i], **{k: v for k, v in load.items() if k != "replica"}}
                   for i, load in enumerate(self.load())}
        down = [f"replica-{i}" for i in range(len(self._replicas)) if not answers[i]["ok"]]
        return WorkerHealth(ok=len(down) < len(self._replicas), details=details, down=down)


async def _make_condition() -> asyncio.Condition:
    return asyncio.Condition()  # created on the pool's loop, which it belongs to


def _slice(value: Any, lo: int, size: int) -> Any:
    return value[lo: lo + size] if isinstance(value, list) else value


def _shift_indices(message: str, offset: int) -> str:
    """A replica names prompts by their index in its chunk; name the caller's index instead."""
    return re.sub(r"\b(prompts|pooling_params|lora_request)\[(\d+)\]",
                  lambda m: f"{m.group(1)}[{int(m.group(2)) + offset}]", message)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")


async def _gather_or_raise(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently; on the first exception cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        return [t.result() for t in tasks]
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["RayWorkerPool", "RayWorkerPoolError", "ReplicaActor"]
