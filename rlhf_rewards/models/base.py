"""``PoolingModel``: a loaded transformers model plus how to read hidden states and scores from it.

The wrapped ``hf_model`` is kept whole (weight names unchanged), so peft adapters trained on the original
architecture load onto it as they are. Submodules are looked up by name at call time, because peft may
replace them (``modules_to_save`` wraps the head).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from rlhf_rewards.pooling.step import select_columns


class ArchitectureInfo(Protocol):
    """What a :class:`PoolingModel` reads from its registry entry (``models.registry.ModelSpec`` is one;
    typed structurally so that this module does not import the registry, which imports it)."""

    architecture: str
    supports_packing: bool


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

    def from_pretrained(
        self, cls: Any, *, head: str | None = None, head_required: bool = True, how_to_fix: str = ""
    ) -> Any:
        """``cls.from_pretrained`` on this checkpoint, refusing any weight left randomly initialized.

        transformers initializes missing weights at random and only logs it; for a reward model that
        means silently random scores. ``head`` names the head module: its absence is explained with
        ``how_to_fix``, or tolerated when ``head_required`` is False (the caller fills the head itself).
        """
        kwargs = self.from_pretrained_kwargs()
        # A sharded load (tensor/pipeline parallel): the parallel layer supplies transformers' distributed_config
        # for this class, so each rank materializes only its shard.
        sharding = self.extra.get("sharding")
        if sharding is not None:
            kwargs.update(sharding(cls, self.config))
        model, info = cls.from_pretrained(self.model, output_loading_info=True, **kwargs)
        missing = sorted(info.get("missing_keys") or ())
        head_only = head is not None and all(k.startswith(f"{head}.") for k in missing)
        if missing and not (head_only and not head_required):
            what = "its head" if head_only else "weights"
            raise ValueError(
                f"{self.model}: the checkpoint lacks {what} {missing[:8]}{' ...' if len(missing) > 8 else ''} "
                f"needed by {cls.__name__}; they would be random. {how_to_fix}".rstrip()
            )
        return model


class AdapterRouter(Protocol):
    """Sends each row of a batch through its own adapter. The LoRA layer implements it and sets
    :attr:`PoolingModel.adapter_router` (models know nothing of LoRA; see ``rlhf_rewards.lora.routing``)."""

    def backbone_rows(
        self, backbone: nn.Module, adapter_names: Sequence[str]
    ) -> AbstractContextManager[None]:
        """While inside, row ``i`` of the backbone's batch uses ``adapter_names[i]``."""
        ...

    def score_rows(
        self,
        model: PoolingModel,
        states: torch.Tensor,
        columns: tuple[int, ...] | None,
        adapter_names: Sequence[str],
    ) -> torch.Tensor:
        """``model.score`` with row ``i`` of ``states`` scored by adapter ``adapter_names[i]``'s head."""
        ...


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
        spec: ArchitectureInfo,
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
        #: Set by the LoRA manager when adapters are enabled; routes ``adapter_names`` rows.
        self.adapter_router: AdapterRouter | None = None
        if head_name is not None:
            # Heads run in float32 even when the backbone is bf16/fp16: scores must not drift with dtype.
            self.hf_model.get_submodule(head_name).float()

    def _router(self) -> AdapterRouter:
        if self.adapter_router is None:
            raise RuntimeError(
                "adapter_names were given but no LoRA adapters are enabled: build LLM(..., enable_lora=True)."
            )
        return self.adapter_router

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
        """Final hidden states ``[batch, seq, hidden]`` in the backbone's dtype.

        ``adapter_names`` (one per batch row, ``"__base__"`` for none) routes rows through loaded LoRA adapters
        (through :attr:`adapter_router`).
        """
        adapter_names = kwargs.pop("adapter_names", None)
        rows = (
            nullcontext()
            if adapter_names is None
            else self._router().backbone_rows(self.backbone, adapter_names)
        )
        with rows:
            return self.backbone_states(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=False,
                **kwargs,
            )

    def backbone_states(self, **inputs: Any) -> torch.Tensor:
        """The backbone's final hidden states for ``inputs`` (its forward's keywords); a pipeline stage
        (:class:`~rlhf_rewards.parallel.sharding.PipelineStage`) runs its part of the forward here."""
        out = self.backbone(**inputs)
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    def score(
        self, states: torch.Tensor, columns: tuple[int, ...] | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """Head logits for float32 ``states`` ``[..., hidden]``; ``columns`` keeps only those output columns.

        ``adapter_names`` (one per row of ``states``) scores each row with its LoRA adapter's head.
        """
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is not None:
            return self._router().score_rows(self, states, columns, adapter_names)
        return self.head_logits(states, columns)

    def head_logits(self, states: torch.Tensor, columns: tuple[int, ...] | None = None) -> torch.Tensor:
        """The head module applied to ``states`` as it is now (peft may have wrapped it), in float32."""
        head = self.head
        logits = head(states.to(_module_dtype(head)))
        return select_columns(logits.float(), columns)


def _module_dtype(module: nn.Module) -> torch.dtype:
    for p in module.parameters():
        return p.dtype
    return torch.float32


__all__ = ["AdapterRouter", "ArchitectureInfo", "LoadContext", "PoolingModel"]
