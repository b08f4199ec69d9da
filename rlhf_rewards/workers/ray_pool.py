"""``RayWorkerPool``: replicas of the engine on Ray actors, behind the worker interface.

Each replica is a Ray actor holding one :class:`~rlhf_rewards.LLM`. A call is cut into chunks of at most
``max_batch_size`` prompts; every chunk goes to the least-loaded live replica (fewest prompts in flight),
at most ``max_inflight_per_replica`` chunks per replica at a time, and the outputs are put back in input
order. Actors are created with ``max_restarts``, so Ray restarts a replica whose process died. Chunks are
sent through the pool of :mod:`rlhf_rewards.workers.retry`, whose policy applies: a chunk whose replica
died is sent again, to another replica when there is one, and that replica is passed over for
``down_for`` seconds. Every chunk fills its own slots of the result exactly once, so nothing is lost and
nothing is duplicated (scoring has no side effects, so running a chunk twice is harmless).

A replica's own errors travel structured: a :class:`~rlhf_rewards.errors.RequestError` raised by its
``LLM`` is Ray's ``RayTaskError.cause``, moved from the chunk's index to the caller's with
:meth:`~rlhf_rewards.errors.RequestError.located`; a model that fails to load is kept by the actor and
reported by its first call (Ray would keep only the text of a constructor's exception).

``ray`` is an optional dependency (``pip install rlhf-rewards[ray]``); it is imported only here.
"""

from __future__ import annotations

import asyncio
import math
import pickle
import uuid
from dataclasses import dataclass
from typing import Any

from rlhf_rewards.checks import check_int, check_number
from rlhf_rewards.contract import ModelInfo
from rlhf_rewards.errors import RequestError
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.pooling.params import PoolingParams
from rlhf_rewards.workers.base import KEEP_LAST_TOKENS, WorkerHealth
from rlhf_rewards.workers.loop import PER_PROMPT_FIELDS, CheckedPrompt, LoopThreadWorker, gather_or_raise
from rlhf_rewards.workers.retry import Endpoint, EndpointFailure, EndpointPool, RetryPolicy

#: The Ray namespace of the replicas' (named) actors, so another driver on the cluster can find them.
ACTOR_NAMESPACE = "rlhf_rewards"

_INSTALL_HINT = "RayWorkerPool needs Ray: pip install rlhf-rewards[ray]"


class RayWorkerPoolError(RuntimeError):
    """A chunk could not be scored by any replica within the retry budget."""


class ReplicaLoadError(RuntimeError):
    """A replica could not build its ``LLM``; :attr:`error` is the exception the ``LLM`` raised."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(f"the replica could not load its model: {type(error).__name__}: {error}")
        self.error = error

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.error,))


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - exercised by a test that hides ray
        raise ImportError(f"{_INSTALL_HINT} (import failed: {exc}).") from exc
    return ray


class ReplicaActor:
    """The body of one replica actor: an ``LLM`` built in the actor's process (wrapped by ``ray.remote``).

    If the ``LLM`` cannot be built, the actor stays up and every call raises :class:`ReplicaLoadError`
    holding the original exception, so the pool gets it whole instead of Ray's text of a failed constructor.
    """

    def __init__(self, model: str, llm_kwargs: dict[str, Any]) -> None:
        import os

        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        self.pid = os.getpid()
        self.llm: Any = None
        self.load_error: ReplicaLoadError | None = None
        try:
            from rlhf_rewards.entrypoints.llm import LLM

            self.llm = LLM(model, **llm_kwargs)
        except Exception as exc:  # noqa: BLE001 - reported by every call, see the class docstring
            self.load_error = ReplicaLoadError(_picklable(exc))

    def _require_llm(self) -> Any:
        if self.llm is None:
            raise self.load_error  # type: ignore[misc]
        return self.llm

    def encode(
        self,
        prompts: list[Any],
        pooling_params: Any,
        pooling_task: str | None,
        lora_request: Any,
        truncate_prompt_tokens: int | None,
        add_special_tokens: bool = True,
    ) -> list[PoolingRequestOutput]:
        """``LLM.encode`` on one chunk."""
        return self._require_llm().encode(
            prompts,
            pooling_params,
            pooling_task=pooling_task,
            lora_request=lora_request,
            truncate_prompt_tokens=truncate_prompt_tokens,
            tokenization_kwargs=KEEP_LAST_TOKENS,
            add_special_tokens=add_special_tokens,
            use_tqdm=False,
        )

    def generative_score(
        self, query: Any, items: list[Any], label_token_ids: list[int], kwargs: dict[str, Any]
    ) -> list[Any]:
        """``LLM.generative_score`` on one chunk of items."""
        return self._require_llm().generative_score(query, items, label_token_ids, use_tqdm=False, **kwargs)

    def model_info(self) -> ModelInfo:
        """``LLM.model_info()``."""
        return self._require_llm().model_info()

    def render_chat(
        self, conversations: Any, chat_template: str | None, add_generation_prompt: bool
    ) -> list[list[int]]:
        """``LLM.render_chat``."""
        return self._require_llm().render_chat(
            conversations, chat_template=chat_template, add_generation_prompt=add_generation_prompt
        )

    def ping(self) -> dict[str, Any]:
        """Liveness and placement."""
        return {"pid": self.pid, "device": str(self._require_llm().device)}


@dataclass
class _Chunk:
    start: int
    prompts: list[Any]
    params: list[PoolingParams | None]
    loras: list[LoRARequest | None]


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

        ray = _import_ray()
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
            self._info = self._wait_until_loaded(
                ray, ready_timeout, num_cpus_per_replica, num_gpus_per_replica
            )
        except BaseException:
            self.close()
            raise

    def _wait_until_loaded(self, ray: Any, timeout: float, num_cpus: float, num_gpus: float) -> ModelInfo:
        """Every replica's model info (so every replica has loaded the model), or the reason why not."""
        try:
            return ray.get([h.model_info.remote() for h in self.actors], timeout=timeout)[0]
        except ray.exceptions.GetTimeoutError:
            raise RuntimeError(
                f"RayWorkerPool: the {self.num_replicas} replicas were not ready within ready_timeout={timeout}s. "
                f"Each needs num_cpus_per_replica={num_cpus} and num_gpus_per_replica={num_gpus}; the cluster "
                f"has {ray.cluster_resources()} ({ray.available_resources()} free)."
            ) from None
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, ReplicaLoadError):
                if isinstance(cause.error, ValueError):  # a bad model path or LLM argument, as in-process
                    raise cause.error from None
                raise RuntimeError(
                    f"RayWorkerPool: a replica failed to load {self.model!r}: {cause}"
                ) from None
            raise
        except ray.exceptions.RayActorError as exc:  # the actor process died while loading
            raise RuntimeError(
                f"RayWorkerPool: a replica died while loading {self.model!r}: {exc.error_msg}"
            ) from None

    def __repr__(self) -> str:
        return f"RayWorkerPool({self.model!r}, num_replicas={self.num_replicas})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as a way back to the same replicas: unpickled in another process, the pool connects to this
        Ray cluster (``ray.init(address=...)`` unless Ray is up there) and finds its actors by name. The
        unpickled copy never kills them; the pool that started them does, on ``close()``."""
        ray = _import_ray()
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
        ray = _import_ray()
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
    async def _render_chat(
        self,
        conversations: list[list[dict[str, Any]]],
        chat_template: str | None,
        add_generation_prompt: bool,
    ) -> list[list[int]]:
        return await self._call_any("render_chat", conversations, chat_template, add_generation_prompt)

    async def _fetch_model_info(self) -> ModelInfo:
        return await self._call_any("model_info")  # normally cached by the constructor

    async def _encode(
        self,
        prompts: list[CheckedPrompt],
        params_list: list[PoolingParams | None],
        lora_list: list[LoRARequest | None],
        task: str,
        truncate_prompt_tokens: int | None,
        *,
        add_special_tokens: bool = True,
    ) -> list[PoolingRequestOutput]:
        assert self.pool is not None
        n = len(prompts)
        items = [value if kind == "text" else {"prompt_token_ids": value} for kind, value in prompts]
        live = max(1, len(self.pool.endpoints) - len(self.pool.down()))
        # Spread even a small call over the replicas, but never beyond max_batch_size per chunk.
        size = min(self.max_batch_size, max(1, math.ceil(n / live)))
        chunks = [
            _Chunk(lo, items[lo : lo + size], params_list[lo : lo + size], lora_list[lo : lo + size])
            for lo in range(0, n, size)
        ]
        results: list[PoolingRequestOutput | None] = [None] * n
        await gather_or_raise(
            [self._run_chunk(c, results, task, truncate_prompt_tokens, add_special_tokens) for c in chunks]
        )
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:  # every chunk fills its slots or raises; this guards the invariant
            raise RayWorkerPoolError(f"No result for prompts {missing[:10]}.")
        return [r for r in results if r is not None]

    async def _run_chunk(
        self,
        chunk: _Chunk,
        results: list[PoolingRequestOutput | None],
        task: str,
        truncate_prompt_tokens: int | None,
        add_special_tokens: bool = True,
    ) -> None:
        assert self.pool is not None
        args = (chunk.prompts, chunk.params, task, chunk.loras, truncate_prompt_tokens, add_special_tokens)
        outputs = await self.pool.call(
            lambda endpoint: self._actor_call(endpoint, "encode", args, offset=chunk.start),
            self.policy,
            units=len(chunk.prompts),
            what=f"prompts {chunk.start}..{chunk.start + len(chunk.prompts) - 1}",
            error=RayWorkerPoolError,
            stats=self.stats,
        )
        if len(outputs) != len(chunk.prompts):
            raise RayWorkerPoolError(
                f"a replica returned {len(outputs)} outputs for {len(chunk.prompts)} prompts."
            )
        for j, out in enumerate(outputs):
            results[chunk.start + j] = out

    async def _generative_score(
        self,
        query: Any,
        items: list[Any],
        label_token_ids: list[int],
        *,
        all_labels: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Items spread over the replicas in chunks (each chunk's query runs once on its replica)."""
        assert self.pool is not None
        n = len(items)
        live = max(1, len(self.pool.endpoints) - len(self.pool.down()))
        size = min(self.max_batch_size, max(1, math.ceil(n / live)))
        spans = [(lo, items[lo : lo + size]) for lo in range(0, n, size)] or [(0, [])]

        async def run(lo: int, chunk: list[Any]) -> list[Any]:
            args = (query, chunk, label_token_ids, kwargs)
            outputs = await self.pool.call(
                lambda endpoint: self._actor_call(endpoint, "generative_score", args, offset=lo),
                self.policy,
                units=max(1, len(chunk)),
                what=f"items {lo}..{lo + len(chunk) - 1}",
                error=RayWorkerPoolError,
                stats=self.stats,
            )
            for out in outputs:
                out.index += lo
            return outputs

        parts = await gather_or_raise([run(lo, chunk) for lo, chunk in spans])
        return [o for part in parts for o in part]

    async def _call_any(self, method: str, *args: Any) -> Any:
        """Call ``method`` on a live replica, moving on to the next if one has died."""
        assert self.pool is not None
        return await self.pool.call(
            lambda endpoint: self._actor_call(endpoint, method, args),
            self.policy,
            units=0,
            what=method,
            error=RayWorkerPoolError,
            stats=self.stats,
        )

    async def _actor_call(
        self, endpoint: Endpoint, method: str, args: tuple[Any, ...], offset: int = 0
    ) -> Any:
        """One attempt of ``method`` on one replica, its outcome sorted for the pool: a dead or unloaded
        replica is an :class:`EndpointFailure`; the request's own error is raised as the caller's."""
        ray = _import_ray()
        try:
            return await getattr(endpoint.target, method).remote(*args)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.cause
            if isinstance(cause, ReplicaLoadError):
                raise EndpointFailure(f"{endpoint.name}: {cause}") from exc
            if isinstance(cause, RequestError):  # the replica names its chunk's index: name the caller's
                moved = cause.field in PER_PROMPT_FIELDS and cause.index is not None
                raise (cause.located(offset=offset) if moved else cause) from None
            if isinstance(cause, ValueError):  # the request's fault, like the engine's ValueError in-process
                raise cause from None
            raise RayWorkerPoolError(f"{endpoint.name} failed on {method}: {cause or exc}") from exc
        except (
            ray.exceptions.RayActorError,
            ray.exceptions.ObjectLostError,
            ray.exceptions.RaySystemError,
            ray.exceptions.WorkerCrashedError,
        ) as exc:
            raise EndpointFailure(f"{type(exc).__name__}: {exc}") from exc

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


def _picklable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling (Ray sends it to the driver), else a ``RuntimeError`` with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure to round-trip
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


__all__ = ["RayWorkerPool", "RayWorkerPoolError", "ReplicaActor", "ReplicaLoadError"]


def _reconnect_pool(state: dict[str, Any]) -> RayWorkerPool:
    """A :class:`RayWorkerPool` unpickled: connected to the replicas the original pool started (by name)."""
    ray = _import_ray()
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
