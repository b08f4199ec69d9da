"""Loading a model sharded with transformers' own distributed loading, and running a pipeline stage of it.

**Tensor parallel.** ``from_pretrained(..., distributed_config=DistributedConfig(tp_size=N))`` applies the model's
tensor-parallel plan (``base_model_tp_plan``: q/k/v and gate/up projections column-wise, o/down projections
row-wise with an all-reduce, the embedding vocabulary-parallel) and each rank reads only its shard of every
weight. The plan works by hooking each ``nn.Linear``/``nn.Embedding``'s ``forward``, so the engine's own
decoder loop (:mod:`rlhf_rewards.engine.decoder`), which calls those modules and reads head counts from tensor
shapes, runs unchanged on ``heads / N`` local heads. Heads (``score``, ``v_head``, the LM head) stay whole on
every rank and run in float32.

**Pipeline parallel.** ``DistributedConfig(pp_size=M)`` makes each stage load only its contiguous run of
layers (the others become identity modules; the embedding lives on stage 0, the final norm and LM head on the
last). transformers' own pipeline forward returns causal-LM logits only, so :class:`PipelineStage` supplies
the forward a pooling model needs: receive the hidden states from the previous stage (transformers'
``PipelineStage.communicate``, point-to-point ``torch.distributed``), run the local layers through the
backbone's forward, send them on. Only the last stage's hidden states and scores are real; the engine returns
that rank's results (:mod:`rlhf_rewards.parallel.lockstep`).
"""

from __future__ import annotations

from typing import Any

import torch

from rlhf_rewards.models.base import PoolingModel
from rlhf_rewards.parallel.config import ParallelConfig


def sharding_kwargs(parallel: ParallelConfig):
    """The ``sharding`` hook of ``load_pooling_model``: ``from_pretrained`` arguments for a class and config."""

    def kwargs_for(cls: type, config: Any) -> dict[str, Any]:
        from transformers.distributed import DistributedConfig

        if parallel.tensor_parallel_size > 1 and parallel.pipeline_parallel_size > 1:
            _skip_other_stages_in_tp_plan()

        overrides: dict[str, str] = {}
        if parallel.tensor_parallel_size > 1 and "lm_head" in (getattr(cls, "_tp_plan", None) or {}):
            # The LM head stays whole: STEP pooling multiplies only a few of its rows (returned_token_ids), in
            # float32, which needs the plain weight. A tied head shares the embedding, so that stays whole too.
            overrides["lm_head"] = "replicate"
            if getattr(config, "tie_word_embeddings", False):
                overrides[f"{cls.base_model_prefix}.embed_tokens"] = "replicate"
        return {
            "distributed_config": DistributedConfig(
                tp_size=parallel.tensor_parallel_size,
                pp_size=parallel.pipeline_parallel_size,
                tp_plan=overrides or None,
            )
        }

    return kwargs_for


def _skip_other_stages_in_tp_plan() -> None:
    """Let transformers (5.24) combine tensor and pipeline parallelism.

    ``maybe_distribute_model`` expands the tensor-parallel plan over every layer, then applies the pipeline
    split (other stages' layers become identities), then applies the plan, which fails with a ``KeyError`` on
    the first module this stage no longer has. The wrapper drops exactly those entries; everything this stage
    holds is sharded as before.
    """
    from transformers.distributed import mixin

    original = mixin.apply_tensor_parallelism
    if getattr(original, "_rlhf_rewards_skips_other_stages", False):
        return

    def apply_tensor_parallelism(model: Any, tp_mesh: Any, tp_plan: dict[str, str]) -> Any:
        present = {n for n, _ in model.named_modules()} | {n for n, _ in model.named_parameters()}
        return original(model, tp_mesh, {name: style for name, style in tp_plan.items() if name in present})

    apply_tensor_parallelism._rlhf_rewards_skips_other_stages = True  # type: ignore[attr-defined]
    mixin.apply_tensor_parallelism = apply_tensor_parallelism


class PipelineStage:
    """Mixed into a :class:`PoolingModel` whose ``hf_model`` was loaded with ``pp_size > 1`` (see the module doc)."""

    hf_model: Any

    @property
    def _stage(self) -> Any:
        return self.hf_model._pp_stage

    @property
    def is_last_stage(self) -> bool:
        """Whether this rank holds the final norm and produces real scores."""
        return bool(self._stage.pp_is_last_stage)

    @property
    def vocab_size(self) -> int:
        """Vocabulary size, from the config (later stages have no embedding module to read it from)."""
        return int(self.hf_model.config.get_text_config().vocab_size)

    @property
    def hidden_size(self) -> int:
        """Width of the hidden states, from the config."""
        return int(self.hf_model.config.get_text_config().hidden_size)

    def backbone_states(self, **inputs: Any) -> torch.Tensor:
        """This stage's part of the forward: its input is the previous stage's hidden states (the first stage's
        the token ids), its output is sent on to the next; the last stage returns the final hidden states."""
        stage = self._stage
        input_ids = inputs.pop("input_ids")
        backbone = self.backbone  # type: ignore[attr-defined]
        wire = {
            "device": input_ids.device,
            "dtype": next(p.dtype for p in backbone.parameters() if p.is_floating_point()),
        }
        if stage.pp_is_first_stage:
            inputs["input_ids"] = input_ids
        else:
            shape = (*input_ids.shape, self.hidden_size)
            inputs["inputs_embeds"] = stage.communicate("recv_forward", **wire, shape=shape)
        hidden = super().backbone_states(**inputs)  # type: ignore[misc]
        stage.communicate("send_forward", **wire, tensor=hidden)
        return hidden

    def score(
        self, states: torch.Tensor, columns: tuple[int, ...] | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """The head on the last stage; elsewhere zeros of the right shape (their states are not final)."""
        if self.is_last_stage:
            return super().score(states, columns, **kwargs)  # type: ignore[misc]
        width = len(columns) if columns is not None else self.num_labels  # type: ignore[attr-defined]
        return states.new_zeros((*states.shape[:-1], width), dtype=torch.float32)


_STAGE_CLASSES: dict[type, type] = {}


def as_pipeline_stage(model: PoolingModel) -> PoolingModel:
    """``model`` with :class:`PipelineStage`'s forward (its class swapped for a subclass; weights untouched)."""
    cls = type(model)
    if cls not in _STAGE_CLASSES:
        _STAGE_CLASSES[cls] = type(
            f"PipelineStage{cls.__name__}", (PipelineStage, cls), {"__module__": __name__}
        )
    model.__class__ = _STAGE_CLASSES[cls]
    return model


def resident_parameter_bytes(module: torch.nn.Module) -> int:
    """Bytes of the parameters this rank holds (a sharded ``DTensor`` counts its local shard only; a split
    engine's driver, whose model is on the ``meta`` device, holds none)."""
    from torch.distributed.tensor import DTensor

    total = 0
    for p in module.parameters():  # shared (tied) parameters are listed once
        local = p.to_local() if isinstance(p, DTensor) else p
        if local.is_meta:
            continue
        total += local.numel() * local.element_size()
    return total


__all__ = ["PipelineStage", "as_pipeline_stage", "resident_parameter_bytes", "sharding_kwargs"]
