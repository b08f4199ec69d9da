"""The architecture registry: ``config.architectures[0]`` -> loader, tasks and default pooler configs.

Adding an architecture is one small module that calls :func:`register` (imported in ``models/__init__``)
plus its test. Generic suffix rules cover every transformers ``*ForSequenceClassification``,
``*ForTokenClassification``, ``*ForCausalLM`` and ``*Model`` class.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from rlhf_rewards.models.base import LoadContext, PoolingModel
from rlhf_rewards.pooling.config import PoolerConfig

RewardKind = Literal["outcome", "token", "process", "embedding"]
Loader = Callable[[LoadContext, "ModelSpec"], PoolingModel]


@dataclass(frozen=True)
class ModelSpec:
    """How to load and pool one architecture.

    Args:
        architecture: The ``architectures[0]`` name in ``config.json``.
        loader: Builds the :class:`PoolingModel` from a :class:`LoadContext`.
        kind: What kind of reward the model gives by default: ``outcome``, ``token``, ``process`` or
            ``embedding`` (a backbone with no reward head).
        task_defaults: Default ``PoolerConfig`` per supported pooling task; its keys are the supported tasks.
        supports_packing: Whether sequences may be packed into one row (False for recurrent/SSM layers).
        description: One line for error messages and the README table.
    """

    architecture: str
    loader: Loader
    kind: RewardKind
    task_defaults: dict[str, PoolerConfig] = field(default_factory=dict)
    supports_packing: bool = True
    description: str = ""
    #: Builds the transformers config from the raw ``config.json`` dict; ``None`` uses ``AutoConfig``. Set it
    #: for architectures whose ``model_type`` transformers does not know (e.g. ``internlm2``).
    config_loader: Callable[[str, dict, dict], object] | None = None

    @property
    def tasks(self) -> tuple[str, ...]:
        """The pooling tasks this architecture supports."""
        return tuple(self.task_defaults)

    @property
    def default_task(self) -> str:
        """The task a reward function uses: ``classify`` for outcome models, else ``token_classify``."""
        if self.kind == "outcome" and "classify" in self.task_defaults:
            return "classify"
        if "token_classify" in self.task_defaults:
            return "token_classify"
        return self.tasks[0]


_EXACT: dict[str, ModelSpec] = {}
_SUFFIX: list[tuple[str, Callable[[str], ModelSpec | None]]] = []


def register(spec: ModelSpec) -> ModelSpec:
    """Register ``spec`` for its exact architecture name."""
    _EXACT[spec.architecture] = spec
    return spec


def register_suffix(suffix: str, factory: Callable[[str], ModelSpec | None]) -> None:
    """Register a factory for architectures ending in ``suffix``; it returns ``None`` to decline."""
    _SUFFIX.append((suffix, factory))


def supported_architectures() -> list[str]:
    """Exact names plus the generic patterns, for messages and docs."""
    return sorted(_EXACT) + [f"*{suffix}" for suffix, _ in _SUFFIX]


def resolve_spec(architecture: str, convert: str = "auto") -> ModelSpec:
    """The spec for ``architecture``; ``convert`` (``auto``, ``classify``, ``embed``, ``none``) as in vLLM."""
    if convert not in ("auto", "none", "classify", "embed"):
        raise ValueError(f"convert={convert!r}; choose one of ['auto', 'classify', 'embed', 'none'].")
    spec = _EXACT.get(architecture)
    if spec is None:
        for suffix, factory in _SUFFIX:
            if architecture.endswith(suffix):
                spec = factory(architecture)
                if spec is not None:
                    break
    if spec is None:
        raise ValueError(
            f"Architecture {architecture!r} is not supported. Supported: {supported_architectures()}. "
            "A generative model (*ForCausalLM / *Model) can be converted into a classifier with "
            "LLM(..., convert='classify') given a `score` head or `classifier_from_token` in hf_overrides; "
            "a new reward architecture is one module calling rlhf_rewards.models.registry.register()."
        )
    if convert == "classify" and "classify" not in spec.task_defaults:
        raise ValueError(f"{architecture} cannot be converted to classify.")
    return spec


__all__ = ["ModelSpec", "RewardKind", "register", "register_suffix", "resolve_spec", "supported_architectures"]
