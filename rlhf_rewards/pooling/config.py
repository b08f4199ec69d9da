"""``PoolerConfig``: how a model's hidden states become scores (vLLM's ``--pooler-config``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import InitVar, dataclass
from typing import Any

from rlhf_rewards.checks import is_int
from rlhf_rewards.errors import RequestError
from rlhf_rewards.pooling.tasks import (
    POOLING_TASKS,
    POOLING_TYPES,
    SEQUENCE_POOLING_TYPES,
    TOKEN_POOLING_TYPES,
    TOKEN_TASKS,
    check_removed_pooling_task,
)

#: Field names older releases (and this library's first API) used, and the field that replaces them.
FIELD_ALIASES: dict[str, str] = {"pooling_task": "task"}


@dataclass
class PoolerConfig:
    """Model-level pooling settings (vLLM 0.33's ``PoolerConfig``); a field left ``None`` falls back to the
    architecture's default.

    Args:
        pooling_type: Convenience alias, as in vLLM: a sequence type (``LAST``, ``CLS``, ``MEAN``) fills
            ``seq_pooling_type``, a token type (``ALL``, ``STEP``) fills ``tok_pooling_type``. Setting it
            together with a different value of that field is an error. Default ``None``.
        seq_pooling_type: ``LAST``, ``CLS`` or ``MEAN``: how ``classify`` and ``embed`` reduce a sequence.
            Default: the architecture's (``LAST``).
        tok_pooling_type: ``ALL`` or ``STEP``: which rows ``token_classify`` and ``token_embed`` return.
            Default: the architecture's (``ALL``; ``STEP`` for process reward models).
        task: The model's default pooling task (vLLM's ``PoolerConfig(task=...)``): what
            :attr:`rlhf_rewards.LLM.pooling_task` reports and ``LLM.score`` uses. Unlike vLLM, the other
            tasks of the model stay available to ``encode``. Default ``None`` (the architecture's). The
            removed names ``score``/``encode``/``reward`` are errors naming the replacement; ``pooling_task``
            is accepted as an alias of this field.
        use_activation: Apply the task's activation: sigmoid/softmax for ``classify`` and ``token_classify``
            (vLLM 0.33's default, for every architecture), L2 normalization for ``embed``/``token_embed``.
            Default ``None`` (True).
        logit_mean: Subtracted from classifier logits before the activation. Default ``None`` (0).
        logit_sigma: Classifier logits are divided by it before the activation. Default ``None`` (1).
        step_tag_id: STEP pooling keeps only rows whose input token equals this id. Default ``None``
            (keep every row). Only valid with ``tok_pooling_type="STEP"``.
        returned_token_ids: STEP pooling keeps only these output columns (vocabulary ids for an LM-head
            PRM, label ids for a classifier PRM). Default ``None`` (all). Only valid with STEP.
        dimensions: Embedding tasks truncate vectors to this many dimensions (Matryoshka). Default ``None``.
        normalize: Extension kept from earlier vLLM releases (0.33 removed it in favour of
            ``use_activation``): L2-normalize embeddings. When set it wins over ``use_activation`` for the
            embedding tasks. Default ``None``.
        enable_chunked_processing: vLLM's long-input chunking for embedding models. Only ``False`` is
            supported: a prompt over ``max_model_len`` is an error or is truncated (``truncate_prompt_tokens``),
            because averaging chunk embeddings would change what a reward model scores.
        max_embed_len: vLLM's longer-input limit for chunked embedding; only ``None`` is supported (see above).
        enable_flash_late_interaction: vLLM's late-interaction (ColBERT) kernel switch; accepted and unused
            (there is no late-interaction scoring here).
    """

    pooling_type: str | None = None
    seq_pooling_type: str | None = None
    tok_pooling_type: str | None = None
    task: str | None = None
    use_activation: bool | None = None
    logit_mean: float | None = None
    logit_sigma: float | None = None
    step_tag_id: int | None = None
    returned_token_ids: list[int] | None = None
    dimensions: int | None = None
    normalize: bool | None = None
    enable_chunked_processing: bool = False
    max_embed_len: int | None = None
    enable_flash_late_interaction: bool = True
    pooling_task: InitVar[str | None] = None

    def __post_init__(self, pooling_task: str | None = None) -> None:
        if pooling_task is not None:
            if self.task is not None and self.task != pooling_task:
                raise RequestError(
                    f"sets both task={self.task!r} and its old name pooling_task={pooling_task!r}.",
                    field="pooler_config",
                    sep=" ",
                    param="task",
                )
            self.task = pooling_task
        self.seq_pooling_type = _pooling_type(
            "seq_pooling_type", self.seq_pooling_type, SEQUENCE_POOLING_TYPES
        )
        self.tok_pooling_type = _pooling_type("tok_pooling_type", self.tok_pooling_type, TOKEN_POOLING_TYPES)
        if self.pooling_type is not None:
            self.pooling_type = _pooling_type("pooling_type", self.pooling_type, POOLING_TYPES)
            level = "seq_pooling_type" if self.pooling_type in SEQUENCE_POOLING_TYPES else "tok_pooling_type"
            current = getattr(self, level)
            if current is not None and current != self.pooling_type:
                raise RequestError(
                    f"Cannot set both `pooling_type` ({self.pooling_type!r}) and `{level}` ({current!r}).",
                    field="pooler_config.pooling_type",
                    sep=": ",
                    param="pooling_type",
                )
            setattr(self, level, self.pooling_type)
        if self.task is not None:
            check_removed_pooling_task(self.task, "pooler_config.task")
            if self.task not in POOLING_TASKS:
                raise RequestError(
                    f"{self.task!r} is not a pooling task; choose one of {list(POOLING_TASKS)}.",
                    field="pooler_config.task",
                    sep="=",
                )
        # A sequence-level alias (pooling_type="LAST") declares a non-STEP config, as it always has here.
        step_owner_type = self.tok_pooling_type if self.tok_pooling_type is not None else self.pooling_type
        check_step_fields("pooler_config", step_owner_type, self.step_tag_id, self.returned_token_ids)
        if self.step_tag_id is not None:
            self.step_tag_id = _non_negative_int("pooler_config.step_tag_id", self.step_tag_id)
        if self.returned_token_ids is not None:
            self.returned_token_ids = _token_id_list(
                "pooler_config.returned_token_ids", self.returned_token_ids
            )
        if self.logit_sigma is not None and float(self.logit_sigma) == 0.0:
            raise ValueError("pooler_config.logit_sigma must be non-zero (logits are divided by it).")
        if self.dimensions is not None:
            self.dimensions = _positive_int("pooler_config.dimensions", self.dimensions)
        for name in ("use_activation", "normalize"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise RequestError(f"must be true or false, got {value!r}.", field=f"pooler_config.{name}")
        if self.enable_chunked_processing is not False or self.max_embed_len is not None:
            name = (
                "enable_chunked_processing"
                if self.enable_chunked_processing is not False
                else "max_embed_len"
            )
            raise RequestError(
                "is not supported: a prompt over max_model_len is an error, or is cut with truncate_prompt_tokens "
                "(chunk-averaged embeddings would change what a reward model scores).",
                field=f"pooler_config.{name}",
            )

    def type_for(self, task: str) -> str | None:
        """The pooling type that applies to ``task``: ``tok_pooling_type`` for token tasks, else
        ``seq_pooling_type`` (``None`` when unset)."""
        return self.tok_pooling_type if task in TOKEN_TASKS else self.seq_pooling_type

    def for_task(self, task: str) -> PoolerConfig:
        """A copy holding only what applies to ``task``: its level's pooling type (also as ``pooling_type``),
        and the STEP fields for token tasks only."""
        if task in TOKEN_TASKS:
            return dataclasses.replace(self, pooling_type=self.tok_pooling_type, seq_pooling_type=None)
        return dataclasses.replace(
            self,
            pooling_type=self.seq_pooling_type,
            tok_pooling_type=None,
            step_tag_id=None,
            returned_token_ids=None,
        )

    @property
    def is_step(self) -> bool:
        """True when token tasks are STEP-pooled (vLLM's ``tok_pooling_type == "STEP"``)."""
        return self.tok_pooling_type == "STEP"

    @classmethod
    def from_any(cls, value: PoolerConfig | dict[str, Any] | str | None) -> PoolerConfig:
        """Build a config from a ``PoolerConfig``, a dict of its fields, a JSON string or ``None``."""
        if value is None:
            return cls()
        if isinstance(value, PoolerConfig):
            return dataclasses.replace(value)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise ValueError(f"pooler_config is not valid JSON: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError(
                f"pooler_config must be a PoolerConfig, a dict or a JSON object, got {type(value).__name__}."
            )
        value = dict(value)
        for old, new in FIELD_ALIASES.items():
            if old in value:
                if new in value and value[new] != value[old]:
                    raise ValueError(
                        f"pooler_config sets both {old!r} and its new name {new!r}; keep {new!r}."
                    )
                value[new] = value.pop(old)
        known = {f.name for f in dataclasses.fields(cls)} - set(FIELD_ALIASES)
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(
                f"pooler_config has unknown field(s) {unknown}; valid fields are {sorted(known)} "
                f"(aliases: {sorted(FIELD_ALIASES)})."
            )
        return cls(**value)

    def merged_over(self, defaults: PoolerConfig) -> PoolerConfig:
        """Return a config whose unset fields come from ``defaults``."""
        values = {
            f.name: getattr(self, f.name) if getattr(self, f.name) is not None else getattr(defaults, f.name)
            for f in dataclasses.fields(self)
            if f.name != "pooling_type"
        }
        # The alias reads back the merged type at the level it names (this config's, else the defaults').
        alias = self.pooling_type or defaults.pooling_type
        if alias is not None:
            alias = values["seq_pooling_type" if alias in SEQUENCE_POOLING_TYPES else "tok_pooling_type"]
        values["pooling_type"] = alias
        # STEP-only fields of the defaults must not leak onto a non-STEP type the user chose.
        if values["tok_pooling_type"] != "STEP":
            values["step_tag_id"] = self.step_tag_id
            values["returned_token_ids"] = self.returned_token_ids
        return PoolerConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        """The set fields, as a JSON-ready dict (vLLM's names; the unused switches at their defaults are left out)."""
        defaults = {"enable_chunked_processing": False, "enable_flash_late_interaction": True}
        return {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if v is not None and not (k in defaults and v == defaults[k])
        }


def check_step_fields(
    owner: str, pooling_type: str | None, step_tag_id: Any, returned_token_ids: Any
) -> None:
    """vLLM's rule: ``step_tag_id`` and ``returned_token_ids`` only make sense with STEP pooling."""
    if pooling_type is not None and pooling_type != "STEP":
        bad = [
            n
            for n, v in (("step_tag_id", step_tag_id), ("returned_token_ids", returned_token_ids))
            if v is not None
        ]
        if bad:
            raise RequestError(
                f"{', '.join(bad)} can only be set with tok_pooling_type='STEP' (got {pooling_type!r}).",
                field=owner,
                sep=": ",
                param=bad[0],
            )


def _pooling_type(name: str, value: Any, allowed: tuple[str, ...]) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.upper() not in allowed:
        raise RequestError(
            f"{value!r}; choose one of {list(allowed)}.", field=f"pooler_config.{name}", sep="="
        )
    return value.upper()


def _non_negative_int(name: str, value: Any) -> int:
    if not is_int(value, minimum=0):
        raise RequestError(f"must be a non-negative integer token id, got {value!r}.", field=name)
    return value


def _positive_int(name: str, value: Any) -> int:
    if not is_int(value, minimum=1):
        raise RequestError(f"must be a positive integer, got {value!r}.", field=name)
    return value


def _token_id_list(name: str, value: Any) -> list[int]:
    if not isinstance(value, (list, tuple)) or not value:
        raise RequestError(f"must be a non-empty list of token ids, got {value!r}.", field=name)
    out = []
    for i, v in enumerate(value):
        if not is_int(v, minimum=0):
            raise RequestError(f"must be a non-negative integer token id, got {v!r}.", field=name, index=i)
        out.append(v)
    return out


__all__ = ["FIELD_ALIASES", "PoolerConfig", "check_step_fields"]
