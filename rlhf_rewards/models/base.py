"""``PoolingModel``: a loaded transformers model plus how to read hidden states and scores from it.

The wrapped ``hf_model`` is kept whole (weight names unchanged), so peft adapters trained on the original
architecture load onto it as they are. Submodules are looked up by name at call time, because peft may
replace them (``modules_to_save`` wraps the head).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from rlhf_rewards.models.registry import ModelSpec


@dataclass
class LoadContext:
    """Everything a loader needs: where the checkpoint is and how to place it."""

    model: str
    config: Any
    dtype: torch.dtype
    device: torch.device
    revision: str | None = None
    trust_remote_code: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def from_pretrained_kwargs(self) -> dict[str, Any]:
        """Keyword arguments shared by every ``from_pretrained`` call of a loader."""
        return {"config": self.config, "dtype": self.dtype, "revision": self.revision}


class PoolingModel(nn.Module):
    """A backbone that yields hidden states and a head that turns them into scores, run in float32.

    Args:
        hf_model: The transformers model (for instance ``Qwen3ForSequenceClassification``).
        spec: The registry entry that loaded it.
        backbone_name: Dotted name of the submodule returning ``last_hidden_state`` (e.g. ``"model"``).
        head_name: Dotted name of the classification head (e.g. ``"score"``), or ``None`` if it has none.
        num_labels: Width of the head's output.
        problem_type: The HF ``problem_type`` that picks the classify activation.
    """

    def __init__(
        self,
        hf_model: nn.Module,
        spec: ModelSpec,
        *,
        backbone_name: str,
        head_name: str | None,
        num_labels: int,
        problem_type: str | None = None,
    ) -> None:
        super().__init__()
        self.hf_model = hf_model
        self.spec = spec
        self.backbone_name = backbone_name
        self.head_name = head_name
        self.num_labels = num_labels
        self.problem_type = problem_type
        if head_name is not None:
            # Heads run in float32 even when the backbone is bf16/fp16: scores must not drift with dtype.
            self.hf_model.get_submodule(head_name).float()

    @property
    def config(self) -> Any:
        """The model's transformers config."""
        return self.hf_model.config

    @property
    def backbone(self) -> nn.Module:
        """The submodule that returns hidden states."""
        return self.hf_model.get_submodule(self.backbone_name)

    @property
    def head(self) -> nn.Module:
        """The classification head (float32)."""
        if self.head_name is None:
            raise ValueError(f"{self.spec.architecture} has no classification head.")
        return self.hf_model.get_submodule(self.head_name)

    @property
    def vocab_size(self) -> int:
        """Number of rows of the input embedding (the valid token id range)."""
        return int(self.backbone.get_input_embeddings().num_embeddings)

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states."""
        return int(self.backbone.get_input_embeddings().embedding_dim)

    @property
    def supports_packing(self) -> bool:
        """Whether several sequences may share one row (block-causal attention); False for SSM layers."""
        return self.spec.supports_packing

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        *,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """Final hidden states ``[batch, seq, hidden]`` in the backbone's dtype."""
        out = self.backbone(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            **kwargs,
        )
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def score(self, states: torch.Tensor, columns: tuple[int, ...] | None = None, **kwargs: Any) -> torch.Tensor:
        """Head logits for float32 ``states`` ``[..., hidden]``; ``columns`` keeps only those output columns."""
        head = self.head
        logits = head(states.to(_module_dtype(head)))
        logits = logits.float()
        if columns is not None:
            _check_columns(columns, logits.shape[-1])
            logits = logits[..., list(columns)]
        return logits


def _module_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        return p.dtype
    return torch.float32


def _check_columns(columns: tuple[int, ...], width: int) -> None:
    bad = [c for c in columns if c >= width]
    if bad:
        raise ValueError(f"returned_token_ids {bad} are out of range: the head has {width} output columns.")


__all__ = ["LoadContext", "PoolingModel"]
