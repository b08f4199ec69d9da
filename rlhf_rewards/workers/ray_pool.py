"""``RayWorkerPool``: replicas of the engine on Ray actors, behind the worker interface.

Each replica is a Ray actor holding one :class:`~rlhf_rewards.LLM`. A call is cut into chunks of at most
``max_batch_size`` prompts; every chunk goes to the least-loaded live replica (fewest prompts in flight),
at most ``max_inflight_per_replica`` chunks per replica at a time, and the outputs are put back in input
order. Actors are created with ``max_restarts``, so Ray restarts a replica whose process died. Chunks are
sent through the pool of :mod:`rlhf_rewards.workers.retry`, whose policy applies: a chunk whose replica
died is sent again, to another replica when there is one, and that replica is passed over for
``down_for`` seconds. Every chunk fills its own slots of the result exactly once, so nothing is lost and
nothing is duplicated (scoring has no side effects, so running a chunk twice is harmless).

A replica's own errors travel structured (see :mod:`rlhf_rewards.workers.ray_replica`, the actor side).

``ray`` is an optional dependency (``pip install rlhf-rewards[ray]``); it is imported only by the workers.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from dataclasses import replace
from typing import Any

from rlhf_rewards.checks import check_int, check_number
from rlhf_rewards.contract import ModelInfo
from rlhf_rewards.entrypoints.generative_scoring import GenerativeScoringOutput
from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.workers.base import WorkerHealth
from rlhf_rewards.workers.calls import EncodeCall, GenerativeScoreCall
from rlhf_rewards.workers.endpoint_pool import EndpointPool
from rlhf_rewards.workers.loop import CheckedEncode, Conversation, LoopThreadWorker, gather_or_raise
from rlhf_rewards.workers.ray_replica import (
    ACTOR_NAMESPACE,
    RayWorkerPoolError,
    ReplicaActor,
    call_replica,
    import_ray,
    wait_until_loaded,
)
from rlhf_rewards.workers.retry import RetryPolicy


class RayWorkerPool(LoopThreadWorker):
    """``num_replicas`` copies of the engine on Ray actors; same arguments and outputs as ``LLM.encode``.

    Args:
        model: Model folder or hub id, loaded by every replica (the folder must be readable on every node).
        num_replicas: Number of actors. Default 1.
        num_gpus_per_replica: GPUs reserved per actor (fractions share a GPU). With 0 the replicas run on
            CPU; with more they run on the GPU Ray assigns them. Above 1 (a whole number) one replica spans
            that many GPUs: ``tensor_parallel_size`` defaults to it (pass ``tensor_parallel_size`` /
            ``pipeline_parallel_size`` to choose the split; on CPU they work with 0 GPUs). Default 0.
        num_cpus_per_replica: CPUs reserved per actor. Default 1.
        max_restarts: How many times Ray restarts a replica whose process died (``-1``: forever). Default 3.
        max_retries: How many times a chunk is sent again after its replica died. Default 4.
        max_batch_size: Most prompts per chunk (one actor call). Default 64.
        max_inflight_per_replica: Most chunks queued on one replica at a time. Default 2.
        down_for: Seconds a replica that failed is passed over (doubling while it keeps failing; it is used
            again afterwards, once Ray has restarted it). Default 1.
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

        ray = import_ray()
        if isinstance(model, os.PathLike):
            model = os.fspath(model)
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a model folder or hub id string, got {model!r}.")
        check_int("num_replicas", num_replicas, minimum=1)
        check_int("max_restarts", max_restarts, minimum=-1)
        check_int("max_retries", max_retries, minimum=0)
        check_int("max_batch_size", max_batch_size, minimum=1)
        check_int("max_inflight_per_replica", max_inflight_per_replica, minimum=1)
        for name, value in (
            ("num_gpus_per_replica", num_gpus_per_replica),
            ("num_cpus_per_replica", num_cpus_per_replica),
            ("down_for", down_for),
            ("ready_timeout", ready_timeout),
        ):
            check_number(name, value, minimum=0)
        if num_gpus_per_replica > 1 and num_gpus_per_replica != int(num_gpus_per_replica):
            raise ValueError(
                f"num_gpus_per_replica must be a whole number above 1 (one replica spans that many GPUs), "
                f"got {num_gpus_per_replica!r}."
            )
        self.model = model
        self.num_replicas = num_replicas
        self.max_retries = max_retries
        self.max_batch_size = max_batch_size
        self.max_inflight_per_replica = max_inflight_per_replica
        self.down_for = float(down_for)
        self.policy = RetryPolicy(max_retries=max_retries)
        self._owns_ray = False
        self.pool: EndpointPool | None = None
        super().__init__("ray-worker-pool")
        try:
            if not ray.is_initialized():
                ray.init(**(ray_init_kwargs or {}))
                self._owns_ray = True
            kwargs = dict(llm_kwargs)
            kwargs.setdefault("device", "cuda" if num_gpus_per_replica > 0 else "cpu")
            if num_gpus_per_replica > 1 and not {"tensor_parallel_size", "pipeline_parallel_size"} & set(
                kwargs
            ):
                # One replica spans its GPUs, as in vLLM: the model is split over them (rlhf_rewards.parallel).
                kwargs["tensor_parallel_size"] = int(num_gpus_per_replica)
            actor_cls = ray.remote(ReplicaActor)
            # Named in a fixed namespace, so a pickled pool (TRL's AsyncGRPOTrainer spawns its scorer) finds
            # the same replicas again from another process connected to this cluster.
            self._actor_names = [
                f"rlhf-rewards-{uuid.uuid4().hex[:12]}-replica-{i}" for i in range(num_replicas)
            ]
            options = {
                "num_cpus": num_cpus_per_replica,
                "num_gpus": num_gpus_per_replica,
                "max_restarts": max_restarts,
                "max_task_retries": 0,
                "namespace": ACTOR_NAMESPACE,
                **(actor_options or {}),
            }
            # max_task_retries=0: the pool, not Ray, resends a dead replica's chunks, to a replica that is alive.
            # A replica is down after one failure: a dead process fails every chunk it holds.
            self.pool = EndpointPool(
                {
                    f"replica-{i}": actor_cls.options(**options, name=self._actor_names[i]).remote(
                        model, kwargs
                    )
                    for i in range(num_replicas)
                },
                down_after=1,
                down_for=self.down_for,
                max_in_flight=max_inflight_per_replica,
            )
            self._info = wait_until_loaded(
                ray, self.actors, model, ready_timeout, num_cpus_per_replica, num_gpus_per_replica
            )
        except BaseException:
            self.close()
            raise

    def __repr__(self) -> str:
        return f"RayWorkerPool({self.model!r}, num_replicas={self.num_replicas})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as a way back to the same replicas: unpickled in another process, the pool connects to this
        Ray cluster (``ray.init(address=...)`` unless Ray is up there) and finds its actors by name. The
        unpickled copy never kills them; the pool that started them does, on ``close()``."""
        ray = import_ray()
        if self._closed or self.pool is None:
            raise TypeError(f"{self!r} is closed and cannot be pickled.")
        state = {
            "address": ray.get_runtime_context().gcs_address,
            "names": list(self._actor_names),
            "model": self.model,
            "num_replicas": self.num_replicas,
            "max_retries": self.max_retries,
            "max_batch_size": self.max_batch_size,
            "max_inflight_per_replica": self.max_inflight_per_replica,
            "down_for": self.down_for,
            "info": self._info,
        }
        return _reconnect_pool, (state,)

    @property
    def actors(self) -> list[Any]:
        """The replicas' actor handles, in order (for placement checks and fault-injection tests)."""
        return [e.target for e in self.pool.endpoints] if self.pool is not None else []

    def load(self) -> list[dict[str, Any]]:
        """Per replica: chunks and prompts in flight, calls done, failures, whether it is set aside now."""
        assert self.pool is not None
        now = self.pool.clock()
        return [
            {
                "replica": i,
                "inflight_chunks": e.in_flight,
                "inflight_prompts": e.in_flight_units,
                "chunks_done": e.successes,
                "failures": e.failures,
                "down": e.down_until > now,
                "last_error": e.last_error,
            }
            for i, e in enumerate(self.pool.endpoints)
        ]

    # ------------------------------------------------------------------ RewardWorker
    def health(self, timeout: float = 10.0) -> WorkerHealth:
        """Pings every replica (waiting up to ``timeout`` seconds); ``ok`` while at least one answers."""
        if self._closed:
            return WorkerHealth(ok=False, details={"error": "closed"}, down=[repr(self)])
        return self._run(self._health(timeout))

    def close(self) -> None:
        """Kill the actors (and shut Ray down if this pool started it); later calls raise."""
        super().close()

    def _close_resources(self) -> None:
        ray = import_ray()
        if not getattr(self, "_owns_actors", True):
            return  # an unpickled copy: the replicas belong to the pool that started them
        for handle in self.actors:
            try:
                ray.kill(handle, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()

    # ------------------------------------------------------------------ scheduling
    async def _send_render_chat(
        self, conversations: list[Conversation], chat_template: str | None, add_generation_prompt: bool
    ) -> list[list[int]]:
        return await self._call_any("render_chat", conversations, chat_template, add_generation_prompt)

    async def _fetch_model_info(self) -> ModelInfo:
        return await self._call_any("model_info")  # normally cached by the constructor

    async def _send_encode(self, call: CheckedEncode) -> list[PoolingRequestOutput]:
        n = len(call.prompts)
        items = [value if kind == "text" else {"prompt_token_ids": value} for kind, value in call.prompts]
        size = self._chunk_size(n)
        chunks = [
            (
                lo,
                EncodeCall(
                    items[lo : lo + size],
                    call.params[lo : lo + size],
                    pooling_task=call.task,
                    lora_request=call.loras[lo : lo + size],
                    truncate_prompt_tokens=call.truncate_prompt_tokens,
                    add_special_tokens=call.add_special_tokens,
                ),
            )
            for lo in range(0, n, size)
        ]
        results: list[PoolingRequestOutput | None] = [None] * n
        await gather_or_raise([self._run_chunk(lo, chunk, results) for lo, chunk in chunks])
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:  # every chunk fills its slots or raises; this guards the invariant
            raise RayWorkerPoolError(f"No result for prompts {missing[:10]}.")
        return [r for r in results if r is not None]

    async def _run_chunk(
        self, start: int, chunk: EncodeCall, results: list[PoolingRequestOutput | None]
    ) -> None:
        count = len(chunk.prompts)
        outputs = await self._call_chunk(
            "encode", chunk, start, count, f"prompts {start}..{start + count - 1}"
        )
        if len(outputs) != count:
            raise RayWorkerPoolError(f"a replica returned {len(outputs)} outputs for {count} prompts.")
        for j, out in enumerate(outputs):
            results[start + j] = out

    async def _send_generative_score(self, call: GenerativeScoreCall) -> list[GenerativeScoringOutput]:
        """Items spread over the replicas in chunks (each chunk's query runs once on its replica)."""
        items = list(call.items)
        size = self._chunk_size(len(items))
        spans = [(lo, items[lo : lo + size]) for lo in range(0, len(items), size)] or [(0, [])]

        async def run(lo: int, chunk: list[Any]) -> list[GenerativeScoringOutput]:
            what = f"items {lo}..{lo + len(chunk) - 1}"
            outputs = await self._call_chunk(
                "generative_score", replace(call, items=chunk), lo, len(chunk), what
            )
            for out in outputs:
                out.index += lo
            return outputs

        parts = await gather_or_raise([run(lo, chunk) for lo, chunk in spans])
        return [o for part in parts for o in part]

    def _chunk_size(self, n: int) -> int:
        """Spread even a small call over the live replicas, but never beyond ``max_batch_size`` per chunk."""
        assert self.pool is not None
        live = max(1, len(self.pool.endpoints) - len(self.pool.down()))
        return min(self.max_batch_size, max(1, math.ceil(n / live)))

    async def _call_chunk(self, method: str, chunk: Any, start: int, count: int, what: str) -> Any:
        """``method`` on one chunk (``count`` prompts or items from ``start``), on the least-loaded replica."""
        assert self.pool is not None
        return await self.pool.call(
            lambda endpoint: call_replica(endpoint, method, (chunk,), offset=start),
            self.policy,
            units=max(1, count),
            what=what,
            error=RayWorkerPoolError,
            stats=self.stats,
        )

    async def _call_any(self, method: str, *args: Any) -> Any:
        """Call ``method`` on a live replica, moving on to the next if one has died."""
        assert self.pool is not None
        return await self.pool.call(
            lambda endpoint: call_replica(endpoint, method, args),
            self.policy,
            units=0,
            what=method,
            error=RayWorkerPoolError,
            stats=self.stats,
        )

    async def _health(self, timeout: float) -> WorkerHealth:
        async def probe(handle: Any) -> dict[str, Any]:
            try:
                return {"ok": True, **await asyncio.wait_for(handle.ping.remote(), timeout)}
            except Exception as exc:  # noqa: BLE001 - any failure means "not serving now"
                return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}

        answers = await asyncio.gather(*(probe(h) for h in self.actors))
        details = {
            f"replica-{i}": {**answers[i], **{k: v for k, v in load.items() if k != "replica"}}
            for i, load in enumerate(self.load())
        }
        down = [f"replica-{i}" for i, a in enumerate(answers) if not a["ok"]]
        return WorkerHealth(ok=len(down) < len(answers), details=details, down=down)


__all__ = ["RayWorkerPool"]


def _reconnect_pool(state: dict[str, Any]) -> RayWorkerPool:
    """A :class:`RayWorkerPool` unpickled: connected to the replicas the original pool started (by name)."""
    ray = import_ray()
    if not ray.is_initialized():
        ray.init(address=state["address"], namespace=ACTOR_NAMESPACE, log_to_driver=False)
    pool = RayWorkerPool.__new__(RayWorkerPool)
    LoopThreadWorker.__init__(pool, "ray-worker-pool")
    for name in (
        "model",
        "num_replicas",
        "max_retries",
        "max_batch_size",
        "max_inflight_per_replica",
        "down_for",
    ):
        setattr(pool, name, state[name])
    pool.policy = RetryPolicy(max_retries=pool.max_retries)
    pool._owns_ray = False
    pool._owns_actors = False
    pool._actor_names = list(state["names"])
    handles = [ray.get_actor(name, namespace=ACTOR_NAMESPACE) for name in pool._actor_names]
    pool.pool = EndpointPool(
        {f"replica-{i}": h for i, h in enumerate(handles)},
        down_after=1,
        down_for=pool.down_for,
        max_in_flight=pool.max_inflight_per_replica,
    )
    pool._info = state["info"]
    return pool
