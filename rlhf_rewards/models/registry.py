"""The architecture registry: ``config.architectures[0]`` -> loader, tasks and default pooler configs.

Adding an architecture is one small module that calls :func:`register` (imported in ``models/__init__``)
plus its test. Generic suffix rules cover every transformers ``*ForSequenceClassification``,
``*ForTokenClassification``, ``*ForCausalLM``, ``*LMHeadModel`` and base ``*Model`` class; the longest
matching suffix is tried first. Converters (vLLM's ``convert=``) turn a spec into another one, e.g. a
generative model into a classifier.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from rlhf_rewards.checks import check_choice
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
    #: Token (text) whose id is the default ``step_tag_id`` of STEP pooling, looked up in the model's own
    #: tokenizer (``"<extra_0>"`` for Qwen2.5-Math-PRM). ``None``: STEP keeps every row unless configured.
    default_step_tag: str | None = None

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
_CONVERTERS: dict[str, Callable[[ModelSpec], ModelSpec | None]] = {}


def register(spec: ModelSpec) -> ModelSpec:
    """Register ``spec`` for its exact architecture name."""
    _EXACT[spec.architecture] = spec
    return spec


def register_suffix(suffix: str, factory: Callable[[str], ModelSpec | None]) -> None:
    """Register a factory for architectures ending in ``suffix``; it returns ``None`` to decline."""
    _SUFFIX.append((suffix, factory))


def register_converter(convert: str, factory: Callable[[ModelSpec], ModelSpec | None]) -> None:
    """Register how ``convert=<convert>`` turns a spec that lacks that task into one that has it (or ``None``)."""
    _CONVERTERS[convert] = factory


def supported_architectures() -> list[str]:
    """Exact names plus the generic patterns, for messages and docs."""
    return sorted(_EXACT) + [f"*{suffix}" for suffix, _ in _SUFFIX]


def resolve_spec(architecture: str, convert: str = "auto") -> ModelSpec:
    """The spec for ``architecture``; ``convert`` (``auto``, ``classify``, ``embed``, ``none``) as in vLLM.

    ``classify`` keeps a spec that already classifies, otherwise asks the registered converter (generative
    models get a ``score`` head over the last token). ``embed`` keeps only the ``embed``/``token_embed`` tasks.
    """
    check_choice("convert", convert, ("auto", "classify", "embed", "none"))
    spec = _EXACT.get(architecture)
    if spec is None:
        # Longest suffix first, so ``*LMHeadModel`` is never taken for a base ``*Model``.
        for suffix, factory in sorted(_SUFFIX, key=lambda rule: -len(rule[0])):
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
    if convert == "classify" and spec.kind != "outcome":
        converter = _CONVERTERS.get("classify")
        converted = converter(spec) if converter is not None else None
        if converted is None:
            raise ValueError(
                f"{architecture} cannot be converted to classify: only generative models (*ForCausalLM, "
                "*LMHeadModel) and base *Model backbones can; sequence classifiers classify already."
            )
        spec = converted
    elif convert == "embed":
        embed_tasks = {t: c for t, c in spec.task_defaults.items() if t in ("embed", "token_embed")}
        if not embed_tasks:
            raise ValueError(f"{architecture} cannot be converted to embed: it has no embedding tasks.")
        spec = dataclasses.replace(spec, kind="embedding", task_defaults=embed_tasks)
    return spec


__all__ = [
    "ModelSpec",
    "RewardKind",
    "register",
    "register_converter",
    "register_suffix",
    "resolve_spec",
    "supported_architectures",
]
