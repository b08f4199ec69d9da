"""Generative models converted into classifiers: vLLM's ``convert="classify"``.

A ``*ForCausalLM`` / ``*LMHeadModel`` / base ``*Model`` checkpoint gets a ``score = Linear(hidden,
num_labels, bias=False)`` head read at the last token (LAST pooling), like vLLM's ``as_seq_cls_model``.
The head comes from one of:

- the checkpoint's own ``score.weight`` (a head trained and saved with the generative model);
- ``hf_overrides={"classifier_from_token": [...], "method": ...}``, built from LM-head rows as in vLLM:
  ``from_2_way_softmax`` with ``[false_token, true_token]`` gives 1 label with
  ``score.weight = lm_head[true] - lm_head[false]`` (so ``sigmoid(score)`` equals the softmax probability of
  the true token against the false one; Qwen3-Reranker style), and ``no_post_processing`` gives
  ``score.weight = lm_head[tokens]`` (one label per token). Tokens are vocabulary tokens (strings, looked up
  with the model's tokenizer) or token ids.

The model keeps its original class and weight names (``model.*``; the head is ``score`` as in transformers'
``*ForSequenceClassification``), so peft adapters trained on either form load onto it. An untied LM head is
released once the score head is built.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Any

import torch
import transformers
from torch import nn

from rlhf_rewards.checks import is_int
from rlhf_rewards.models.base import LoadContext, PoolingModel
from rlhf_rewards.models.defaults import classifier_defaults
from rlhf_rewards.models.registry import ModelSpec, register_converter

CLASSIFY_METHODS = ("from_2_way_softmax", "no_post_processing")
GENERATIVE_SUFFIXES = ("ForCausalLM", "LMHeadModel")

HOW_TO_SUPPLY_A_HEAD = (
    "To classify with a generative model, either save a trained `score` head (score.weight, shape "
    "[num_labels, hidden]) with the checkpoint, or build one from LM-head rows with "
    "hf_overrides={'classifier_from_token': ['<false token>', '<true token>'], 'method': 'from_2_way_softmax'} "
    "(or 'method': 'no_post_processing' for one label per token)."
)

_SCORE_CLASSES: dict[type, type] = {}


def with_score_head(base_cls: type) -> type:
    """A subclass of the transformers class ``base_cls`` with a float32 ``score`` head (cached per class)."""
    cls = _SCORE_CLASSES.get(base_cls)
    if cls is None:

        def __init__(self: Any, config: Any) -> None:
            base_cls.__init__(self, config)
            text_config = config.get_text_config()
            self.score = nn.Linear(
                text_config.hidden_size, config.num_labels, bias=bool(getattr(config, "score_bias", False))
            )

        cls = type(
            f"{base_cls.__name__}WithScore",
            (base_cls,),
            {
                "__init__": __init__,
                "__module__": __name__,
                "__doc__": f"{base_cls.__name__} with a `score` classification head (convert='classify').",
                "_keep_in_fp32_modules_strict": ["score"],
            },
        )
        _SCORE_CLASSES[base_cls] = cls
    return cls


def wants_token_head(config: Any) -> bool:
    """Whether ``config`` asks for a head built from LM-head rows (``classifier_from_token`` / ``method``)."""
    return (
        getattr(config, "classifier_from_token", None) is not None
        or getattr(config, "method", None) is not None
    )


def load_converted_classifier(
    ctx: LoadContext, spec: ModelSpec, base_cls: type | None = None
) -> PoolingModel:
    """Load ``base_cls`` (default: the spec's architecture) with a ``score`` head; see the module docstring."""
    base_cls = base_cls or getattr(transformers, spec.architecture)
    config = ctx.config
    from_tokens = wants_token_head(config)
    if from_tokens:
        method, token_ids = _token_head_request(ctx)
        config.num_labels = 1 if method == "from_2_way_softmax" else len(token_ids)
        config.score_bias = False
    else:
        shapes = checkpoint_tensor_shapes(ctx.model, ctx.revision, ("score.weight", "score.bias"))
        if shapes is not None:
            if "score.weight" not in shapes:
                raise ValueError(
                    f"{ctx.model}: {spec.architecture} has no `score` head in its checkpoint. {HOW_TO_SUPPLY_A_HEAD}"
                )
            config.num_labels = shapes["score.weight"][0]
            config.score_bias = "score.bias" in shapes
    hf_model = ctx.from_pretrained(
        with_score_head(base_cls),
        head="score",
        head_required=not from_tokens,
        how_to_fix=HOW_TO_SUPPLY_A_HEAD,
    )
    if from_tokens:
        rows = _lm_head_rows(hf_model, token_ids)
        weight = rows[1:2] - rows[0:1] if method == "from_2_way_softmax" else rows
        with torch.no_grad():
            hf_model.score.weight.copy_(weight)
    _release_untied_lm_head(hf_model)
    prefix = hf_model.base_model_prefix
    return PoolingModel(
        hf_model,
        spec,
        backbone_name=prefix if isinstance(getattr(hf_model, prefix, None), nn.Module) else "",
        head_name="score",
        num_labels=int(hf_model.score.weight.shape[0]),
        problem_type=getattr(config, "problem_type", None),
    )


def _token_head_request(ctx: LoadContext) -> tuple[str, list[int]]:
    config = ctx.config
    tokens = getattr(config, "classifier_from_token", None)
    method = getattr(config, "method", None)
    if method is None and getattr(config, "is_original_qwen3_reranker", False):
        method = "from_2_way_softmax"  # vLLM's Qwen3-Reranker recipe names no method
    if method not in CLASSIFY_METHODS:
        raise ValueError(
            f"hf_overrides 'method'={method!r}: choose one of {list(CLASSIFY_METHODS)} (with 'classifier_from_token')."
        )
    if not isinstance(tokens, (list, tuple)) or not tokens:
        raise ValueError(
            f"hf_overrides 'classifier_from_token' must be a non-empty list of tokens, got {tokens!r}."
        )
    if method == "from_2_way_softmax" and len(tokens) != 2:
        raise ValueError(
            f"method='from_2_way_softmax' needs classifier_from_token=[false_token, true_token], got {len(tokens)} tokens."
        )
    return method, _resolve_token_ids(ctx, tokens)


def _resolve_token_ids(ctx: LoadContext, tokens: Sequence[Any]) -> list[int]:
    vocab_size = ctx.config.get_text_config().vocab_size
    tokenizer = None
    ids = []
    for token in tokens:
        if is_int(token):
            token_id = token
        elif isinstance(token, str):
            if tokenizer is None:
                from rlhf_rewards.models.tokenizer import load_tokenizer

                tokenizer = load_tokenizer(ctx.model, revision=ctx.revision)
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
                raise ValueError(
                    f"classifier_from_token: {token!r} is not a token of {ctx.model}'s vocabulary "
                    "(give vocabulary tokens, e.g. 'yes' / 'Ġyes', or token ids)."
                )
        else:
            raise ValueError(f"classifier_from_token entries must be token strings or ids, got {token!r}.")
        if not 0 <= token_id < vocab_size:
            raise ValueError(
                f"classifier_from_token: token id {token_id} is outside the vocabulary [0, {vocab_size})."
            )
        ids.append(int(token_id))
    return ids


def _lm_head_rows(hf_model: nn.Module, token_ids: list[int]) -> torch.Tensor:
    """Rows of the LM head (or of the tied input embedding) for ``token_ids``, in float32."""
    table = hf_model.get_output_embeddings()
    if table is None:
        if not getattr(hf_model.config.get_text_config(), "tie_word_embeddings", False):
            raise ValueError(
                f"{type(hf_model).__name__} has no LM head to take classifier_from_token rows from; use the "
                "*ForCausalLM checkpoint, or save a trained `score` head."
            )
        table = hf_model.get_input_embeddings()
    return table.weight[torch.tensor(token_ids, device=table.weight.device)].float()


def _release_untied_lm_head(hf_model: nn.Module) -> None:
    """Drop an LM head that does not share the input embedding: a classifier never uses it."""
    head = hf_model.get_output_embeddings()
    if head is None or head.weight is hf_model.get_input_embeddings().weight:
        return
    for name, child in hf_model.named_children():
        if child is head:
            setattr(hf_model, name, None)


def checkpoint_tensor_shapes(
    model: str, revision: str | None, names: Iterable[str]
) -> dict[str, tuple[int, ...]] | None:
    """Shapes of the named tensors of a safetensors checkpoint, read from file headers (absent names left out).

    ``None`` when the checkpoint is not in safetensors format (the shapes cannot be read without loading).
    """
    from safetensors import safe_open
    from transformers.utils import cached_file

    kwargs = {
        "revision": revision,
        "_raise_exceptions_for_missing_entries": False,
        "_raise_exceptions_for_connection_errors": False,
    }
    names = list(names)
    index = cached_file(model, "model.safetensors.index.json", **kwargs)
    if index is not None:
        with open(index, encoding="utf-8") as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted({weight_map[n] for n in names if n in weight_map})
    elif cached_file(model, "model.safetensors", **kwargs) is not None:
        files = ["model.safetensors"]
    else:
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for filename in files:
        path = cached_file(model, filename, **kwargs)
        if path is None:
            return None
        with safe_open(path, framework="pt") as st:
            present = set(st.keys())
            for name in names:
                if name in present:
                    shapes[name] = tuple(st.get_slice(name).get_shape())
    return shapes


def _classifier_spec(base: ModelSpec) -> ModelSpec | None:
    if not (base.architecture.endswith(GENERATIVE_SUFFIXES) or base.kind == "embedding"):
        return None
    return ModelSpec(
        architecture=base.architecture,
        loader=load_converted_classifier,
        kind="outcome",
        task_defaults=classifier_defaults(),
        supports_packing=base.supports_packing,
        description="generative model converted to a classifier: `score` head at the last token",
    )


register_converter("classify", _classifier_spec)

__all__ = [
    "CLASSIFY_METHODS",
    "checkpoint_tensor_shapes",
    "load_converted_classifier",
    "wants_token_head",
    "with_score_head",
]
