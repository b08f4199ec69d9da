"""``PoolerConfig``: how a model's hidden states become scores (vLLM's ``--pooler-config``)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from rlhf_rewards.errors import RequestError
from rlhf_rewards.pooling.tasks import POOLING_TYPES


@dataclass
class PoolerConfig:
    """Model-level pooling settings; any field left ``None`` falls back to the architecture's default.

    Args:
        pooling_type: One of ``LAST``, ``CLS``, ``MEAN`` (sequence pooling) or ``ALL``, ``STEP`` (token
            pooling). A sequence type applies to ``classify``/``embed``, a token type to
            ``token_classify``/``token_embed``. Default: the architecture's (``LAST`` / ``ALL`` for most).
        use_activation: Apply the task's activation (sigmoid/softmax for classify tasks). Default: the
            architecture's (True for classifiers, False for token reward models such as Qwen2-RM).
        logit_mean: Subtracted from classifier logits before the activation. Default ``None`` (0).
        logit_sigma: Classifier logits are divided by it before the activation. Default ``None`` (1).
        step_tag_id: STEP pooling keeps only rows whose input token equals this id. Default ``None``
            (keep every row). Only valid with ``pooling_type="STEP"``.
        returned_token_ids: STEP pooling keeps only these output columns (vocabulary ids for an LM-head
            PRM, label ids for a classifier PRM). Default ``None`` (all). Only valid with STEP.
        dimensions: Embedding tasks truncate vectors to this many dimensions (Matryoshka). Default ``None``.
        normalize: Embedding tasks L2-normalize vectors. Default ``None`` (True for ``embed``).
    """

    pooling_type: str | None = None
    use_activation: bool | None = None
    logit_mean: float | None = None
    logit_sigma: float | None = None
    step_tag_id: int | None = None
    returned_token_ids: list[int] | None = None
    dimensions: int | None = None
    normalize: bool | None = None

    def __post_init__(self) -> None:
        if self.pooling_type is not None:
            if not isinstance(self.pooling_type, str) or self.pooling_type.upper() not in POOLING_TYPES:
                raise ValueError(f"pooler_config.pooling_type={self.pooling_type!r}; choose one of {list(POOLING_TYPES)}.")
            self.pooling_type = self.pooling_type.upper()
        check_step_fields("pooler_config", self.pooling_type, self.step_tag_id, self.returned_token_ids)
        if self.step_tag_id is not None:
            self.step_tag_id = _non_negative_int("pooler_config.step_tag_id", self.step_tag_id)
        if self.returned_token_ids is not None:
            self.returned_token_ids = _token_id_list("pooler_config.returned_token_ids", self.returned_token_ids)
        if self.logit_sigma is not None and float(self.logit_sigma) == 0.0:
            raise ValueError("pooler_config.logit_sigma must be non-zero (logits are divided by it).")
        if self.dimensions is not None:
            self.dimensions = _positive_int("pooler_config.dimensions", self.dimensions)
        for name in ("use_activation", "normalize"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise RequestError(f"must be true or false, got {value!r}.", field=f"pooler_config.{name}")

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
            raise ValueError(f"pooler_config must be a PoolerConfig, a dict or a JSON object, got {type(value).__name__}.")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"pooler_config has unknown field(s) {unknown}; valid fields are {sorted(known)}.")
        return cls(**value)

    def merged_over(self, defaults: PoolerConfig) -> PoolerConfig:
        """Return a config whose unset fields come from ``defaults``."""
        values = {
            f.name: getattr(self, f.name) if getattr(self, f.name) is not None else getattr(defaults, f.name)
            for f in dataclasses.fields(self)
        }
        # STEP-only fields of the defaults must not leak onto a non-STEP type the user chose.
        if values["pooling_type"] != "STEP":
            values["step_tag_id"] = self.step_tag_id
            values["returned_token_ids"] = self.returned_token_ids
        return PoolerConfig(**values)

    def to_dict(self) -> dict[str, Any]:
        """The set fields, as a JSON-ready dict."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


def check_step_fields(owner: str, pooling_type: str | None, step_tag_id: Any, returned_token_ids: Any) -> None:
    """vLLM's rule: ``step_tag_id`` and ``returned_token_ids`` only make sense with STEP pooling."""
    if pooling_type is not None and pooling_type != "STEP":
        bad = [n for n, v in (("step_tag_id", step_tag_id), ("returned_token_ids", returned_token_ids)) if v is not None]
        if bad:
            raise RequestError(
                f"{', '.join(bad)} can only be set with pooling_type='STEP' (got pooling_type={pooling_type!r}).",
                field=owner, sep=": ", param=bad[0])


def _non_negative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RequestError(f"must be a non-negative integer token id, got {value!r}.", field=name)
    return value


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RequestError(f"must be a positive integer, got {value!r}.", field=name)
    return value


def _token_id_list(name: str, value: Any) -> list[int]:
    if not isinstance(value, (list, tuple)) or not value:
        raise RequestError(f"must be a non-empty list of token ids, got {value!r}.", field=name)
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise RequestError(f"must be a non-negative integer token id, got {v!r}.", field=name, index=i)
        out.append(v)
    return out


__all__ = ["PoolerConfig", "check_step_fields"]
