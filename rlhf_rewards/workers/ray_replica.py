"""One replica of a :class:`~rlhf_rewards.workers.ray_pool.RayWorkerPool`: the actor, its start and its calls.

:class:`ReplicaActor` is the body of each Ray actor (an ``LLM`` built in the actor's process).
:func:`wait_until_loaded` waits for every replica's model at start-up, and :func:`call_replica` makes one
attempt of a method on one replica, its outcome sorted for the endpoint pool of
:mod:`rlhf_rewards.workers.retry`: a dead or unloaded replica is an
:class:`~rlhf_rewards.workers.retry.EndpointFailure` (the pool sends the call elsewhere), the request's own
error is raised as the caller's. A :class:`~rlhf_rewards.errors.RequestError` raised by a replica's ``LLM``
arrives as Ray's ``RayTaskError.cause`` and is moved from the chunk's index to the caller's with
:meth:`~rlhf_rewards.errors.RequestError.located`; a model that fails to load is kept by the actor and
reported by its first call (Ray would keep only the text of a constructor's exception).

``ray`` is an optional dependency (``pip install rlhf-rewards[ray]``); it is imported only by the workers.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from typing import Any

from rlhf_rewards.contract import ModelInfo
from rlhf_rewards.entrypoints.generative_scoring import GenerativeScoringOutput
from rlhf_rewards.errors import RequestError
from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.workers.calls import EncodeCall, GenerativeScoreCall
from rlhf_rewards.workers.endpoint_pool import Endpoint
from rlhf_rewards.workers.loop import PER_PROMPT_FIELDS
from rlhf_rewards.workers.retry import EndpointFailure

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


def import_ray() -> Any:
    """The ``ray`` module, or an ``ImportError`` saying how to install it."""
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

    def encode(self, call: EncodeCall) -> list[PoolingRequestOutput]:
        """``LLM.encode`` on one chunk, by the worker contract (:meth:`EncodeCall.run_on`)."""
        return call.run_on(self._require_llm())

    def generative_score(self, call: GenerativeScoreCall) -> list[GenerativeScoringOutput]:
        """``LLM.generative_score`` on one chunk of items."""
        return call.run_on(self._require_llm())

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


def wait_until_loaded(
    ray: Any, actors: Sequence[Any], model: str, timeout: float, num_cpus: float, num_gpus: float
) -> ModelInfo:
    """Every replica's model info (so every replica has loaded ``model``), or the reason why not."""
    try:
        return ray.get([h.model_info.remote() for h in actors], timeout=timeout)[0]
    except ray.exceptions.GetTimeoutError:
        raise RuntimeError(
            f"RayWorkerPool: the {len(actors)} replicas were not ready within ready_timeout={timeout}s. "
            f"Each needs num_cpus_per_replica={num_cpus} and num_gpus_per_replica={num_gpus}; the cluster "
            f"has {ray.cluster_resources()} ({ray.available_resources()} free)."
        ) from None
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause
        if isinstance(cause, ReplicaLoadError):
            if isinstance(cause.error, ValueError):  # a bad model path or LLM argument, as in-process
                raise cause.error from None
            raise RuntimeError(f"RayWorkerPool: a replica failed to load {model!r}: {cause}") from None
        raise
    except ray.exceptions.RayActorError as exc:  # the actor process died while loading
        raise RuntimeError(
            f"RayWorkerPool: a replica died while loading {model!r}: {exc.error_msg}"
        ) from None


async def call_replica(endpoint: Endpoint, method: str, args: tuple[Any, ...], offset: int = 0) -> Any:
    """One attempt of ``method`` on one replica, its outcome sorted for the pool (see the module docstring);
    ``offset`` is the chunk's first index in the caller's call."""
    ray = import_ray()
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


def _picklable(exc: Exception) -> Exception:
    """``exc`` if it survives pickling (Ray sends it to the driver), else a ``RuntimeError`` with its text."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure to round-trip
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


__all__ = [
    "ACTOR_NAMESPACE",
    "RayWorkerPoolError",
    "ReplicaActor",
    "ReplicaLoadError",
    "call_replica",
    "import_ray",
    "wait_until_loaded",
]
