"""Local checkpoints for tests and benchmarks (no hub access needed), all built here.

Each builder writes a real checkpoint folder with ``save_pretrained``: random weights, the real
architecture's config fields and weight names, and a byte-level BPE tokenizer trained with ``tokenizers``
on a small corpus. Loading code under test stays the real ``from_pretrained`` path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

# The tokenizer names callers import from here, where they have always been.
from scripts.build_assets.tokenizer import CHATML_TEMPLATE, PAD_TOKEN, SPECIAL_TOKENS, STEP_TAG  # noqa: F401
from scripts.build_assets.tokenizer import build_bpe_tokenizer as build_tokenizer


def small_dims(**overrides: Any) -> dict[str, Any]:
    """Config fields for a tiny decoder shared by the builders (hidden 64, 2 layers, GQA 4/2)."""
    dims = {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "vocab_size": 448,
    }
    dims.update(overrides)
    return dims


def model_class(architecture: str) -> type:
    """The class that builds and loads ``architecture``: transformers' own, or rlhf-rewards' for the Qwen2.5-Math
    RM/PRM (remote code on the hub)."""
    import transformers

    if hasattr(transformers, architecture):
        return getattr(transformers, architecture)
    from rlhf_rewards.models import qwen2_reward

    return getattr(qwen2_reward, architecture)


def hub_auto_map(architecture: str) -> dict[str, str]:
    """The ``auto_map`` the hub's Qwen2.5-Math RM/PRM configs carry (remote code, never loaded here)."""
    return {
        "AutoConfig": "configuration_qwen2_rm.Qwen2RMConfig",
        "AutoModel": f"modeling_qwen2_rm.{architecture}",
    }


def token_fields(tokenizer_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Config fields that tie a model to the tokenizer in ``tokenizer_dir``: its vocabulary size and its pad and
    EOS ids (the EOS doubles as BOS)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return {
        "vocab_size": len(tok),
        "pad_token_id": tok.pad_token_id,
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.eos_token_id,
    }


def _write_tokenizer(
    path: Path, tokenizer_dir: str | os.PathLike[str] | None, *, padding_side: str, pad_token: bool
) -> None:
    """Train a tokenizer into ``path``, or copy the tokenizer files of ``tokenizer_dir``."""
    if tokenizer_dir is None:
        build_tokenizer(path, padding_side=padding_side, pad_token=PAD_TOKEN if pad_token else None)
        return
    for name in os.listdir(tokenizer_dir):
        if name.startswith(("tokenizer", "special_tokens", "chat_template")):
            (path / name).write_bytes((Path(tokenizer_dir) / name).read_bytes())


def _random_tensor(name: str, shape: tuple[int, ...], gen: torch.Generator, std: float = 0.2) -> torch.Tensor:
    """Norm weights ``1 + 0.1 N(0, 1)``, so a misplaced norm cannot go unnoticed; anything else ``N(0, std)``, so a
    wrong remap or head cannot pass. Drawn on ``gen``'s device."""
    if "norm" in name and len(shape) == 1:
        return 1.0 + 0.1 * torch.randn(shape, generator=gen, device=gen.device)
    return std * torch.randn(shape, generator=gen, device=gen.device)


def _randomize(
    model: torch.nn.Module, seed: int, std: float | None = 0.2, bias_std: float | None = None
) -> None:
    """:func:`_random_tensor` for every weight of ``model``; with ``std=None`` for its norm weights only (the rest
    stays as initialised), and ``N(0, bias_std)`` for its biases when given, so a dropped bias shows."""
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if std is not None or ("norm" in name and p.dim() == 1):
                p.copy_(_random_tensor(name, tuple(p.shape), gen, std or 0.0))
            elif bias_std is not None and p.dim() == 1 and name.endswith("bias"):
                p.copy_(bias_std * torch.randn(p.shape, generator=gen, device=device))


def build_model(
    architecture: str,
    path: str | os.PathLike[str],
    fields: dict[str, Any],
    *,
    config_cls: str,
    seed: int = 0,
    init: str = "random",
    bias_std: float | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    padding_side: str = "right",
    pad_token: bool = True,
    tokenizer_dir: str | os.PathLike[str] | None = None,
) -> Path:
    """Build ``architecture`` from exactly the config ``fields`` (nothing added) and save it with its tokenizer:
    the one checkpoint builder of the tests and the benchmarks.

    Args:
        init: ``"random"``: every weight ``N(0, 0.2)`` (tests); ``"transformers"``: transformers' own
            initialisation, realistic activations at any depth (benchmarks). Norm weights are perturbed either
            way, biases too with ``bias_std``.
        dtype: dtype of the saved weights (built in float32).
        device: Where the model is built (a GPU builds large ones fast; the random numbers are the device's).
        tokenizer_dir: Copy this tokenizer; default: train the tiny one (``padding_side``, ``pad_token``).
    """
    import transformers

    if init not in ("random", "transformers"):
        raise ValueError(f"init must be 'random' or 'transformers', got {init!r}.")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = getattr(transformers, config_cls)(**fields)
    config.architectures = [architecture]
    torch.manual_seed(seed)
    with torch.device(device):
        model = model_class(architecture)(config)
    _randomize(model, seed, std=0.2 if init == "random" else None, bias_std=bias_std)
    model.to(dtype)
    _write_tokenizer(path, tokenizer_dir, padding_side=padding_side, pad_token=pad_token)
    model.save_pretrained(path)
    if not hasattr(transformers, architecture):  # as the hub ships it: remote code named, never needed
        config_json = read_json(path / "config.json")
        config_json["auto_map"] = hub_auto_map(architecture)
        (path / "config.json").write_text(json.dumps(config_json, indent=2), encoding="utf-8")
    return path


def build_hf_model(
    architecture: str,
    path: str | os.PathLike[str],
    *,
    config_cls: str,
    seed: int = 0,
    padding_side: str = "right",
    pad_token: bool = True,
    tokenizer_dir: str | None = None,
    dtype: torch.dtype = torch.float32,
    **config_fields: Any,
) -> Path:
    """Build any transformers architecture by class name (e.g. ``Qwen3ForSequenceClassification``): the tiny
    :func:`small_dims` shape unless ``config_fields`` say otherwise, random weights."""
    fields = small_dims()
    fields.update(config_fields)
    if pad_token:
        fields.setdefault("pad_token_id", 4)
    else:
        fields["pad_token_id"] = None
    fields.setdefault("eos_token_id", 0)
    fields.setdefault("bos_token_id", 0)
    return build_model(
        architecture,
        path,
        fields,
        config_cls=config_cls,
        seed=seed,
        dtype=dtype,
        padding_side=padding_side,
        pad_token=pad_token,
        tokenizer_dir=tokenizer_dir,
    )


def build_qwen3_classifier(path: str | os.PathLike[str], **kw: Any) -> Path:
    """A Skywork-Reward-V2-Qwen3-style ``Qwen3ForSequenceClassification`` with one label."""
    kw.setdefault("num_labels", 1)
    return build_hf_model("Qwen3ForSequenceClassification", path, config_cls="Qwen3Config", **kw)


def build_llama_classifier(path: str | os.PathLike[str], **kw: Any) -> Path:
    """A Skywork-Reward-V2-Llama-style ``LlamaForSequenceClassification`` with one label."""
    kw.setdefault("num_labels", 1)
    # Llama's head_dim is hidden_size // num_attention_heads (as Skywork-Reward-V2-Llama's config); small_dims'
    # 16 would stay otherwise, and vLLM's CPU attention refuses head_dim 16.
    dims = {**small_dims(), **kw}
    kw["head_dim"] = dims["hidden_size"] // dims["num_attention_heads"]
    return build_hf_model("LlamaForSequenceClassification", path, config_cls="LlamaConfig", **kw)


def build_llama_causal_lm(path: str | os.PathLike[str], **kw: Any) -> Path:
    """A math-shepherd-style ``LlamaForCausalLM``."""
    return build_hf_model("LlamaForCausalLM", path, config_cls="LlamaConfig", **kw)


def build_qwen3_causal_lm(path: str | os.PathLike[str], **kw: Any) -> Path:
    """A ``Qwen3ForCausalLM`` (a generative model to convert or embed with)."""
    return build_hf_model("Qwen3ForCausalLM", path, config_cls="Qwen3Config", **kw)


def build_jamba_classifier(path: str | os.PathLike[str], **kw: Any) -> Path:
    """A tiny ``JambaForSequenceClassification`` (attention + Mamba layers, MoE off)."""
    kw.setdefault("num_labels", 1)
    fields = {
        "num_hidden_layers": 2,
        "attn_layer_period": 2,
        "attn_layer_offset": 1,
        "expert_layer_period": 2,
        "expert_layer_offset": 1,
        "num_experts": 1,
        "mamba_d_state": 8,
        "mamba_d_conv": 4,
        "mamba_expand": 2,
        "mamba_dt_rank": 8,
        "use_mamba_kernels": False,
    }
    fields.update(kw)
    fields.pop("head_dim", None)
    return build_hf_model("JambaForSequenceClassification", path, config_cls="JambaConfig", **fields)


def build_qwen3_model(path: str | os.PathLike[str], **kw: Any) -> Path:
    """A base ``Qwen3Model`` checkpoint (weights without the ``model.`` prefix), e.g. an embedding backbone."""
    return build_hf_model("Qwen3Model", path, config_cls="Qwen3Config", **kw)


def _save_raw_checkpoint(path: Path, tensors: dict[str, torch.Tensor], config: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and a hand-written ``config.json`` (what remote-code checkpoints ship)."""
    from safetensors.torch import save_file

    save_file(
        {k: v.contiguous() for k, v in tensors.items()},
        str(path / "model.safetensors"),
        metadata={"format": "pt"},
    )
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def _build_qwen2_score_model(
    architecture: str,
    num_labels: int,
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    padding_side: str = "right",
    pad_token: bool = True,
    tokenizer_dir: str | None = None,
    dtype: torch.dtype = torch.float32,
    **config_fields: Any,
) -> Path:
    """A Qwen2.5-Math RM/PRM checkpoint as the hub ships it: ``model_type: qwen2``, ``auto_map`` to remote code
    (absent here), backbone weights under ``model.`` and ``score.0`` / ``score.2`` head weights."""
    import transformers

    fields = {k: v for k, v in small_dims().items() if k != "head_dim"}
    fields.update({"pad_token_id": 4 if pad_token else None, "bos_token_id": 0, "eos_token_id": 0})
    fields.update(config_fields)
    torch.manual_seed(seed)
    backbone = transformers.Qwen2Model(transformers.Qwen2Config(**fields))
    _randomize(backbone, seed)
    tensors = {f"model.{k}": v for k, v in backbone.state_dict().items()}
    gen = torch.Generator().manual_seed(seed + 1)
    h = fields["hidden_size"]
    for name, shape in (
        ("score.0.weight", (h, h)),
        ("score.0.bias", (h,)),
        ("score.2.weight", (num_labels, h)),
        ("score.2.bias", (num_labels,)),
    ):
        tensors[name] = _random_tensor(name, shape, gen)
    tensors = {k: v.to(dtype) for k, v in tensors.items()}
    config = {
        "architectures": [architecture],
        "attention_dropout": 0.0,
        "auto_map": hub_auto_map(architecture),
        "bos_token_id": fields["bos_token_id"],
        "eos_token_id": fields["eos_token_id"],
        "hidden_act": "silu",
        "hidden_size": h,
        "initializer_range": 0.02,
        "intermediate_size": fields["intermediate_size"],
        "max_position_embeddings": fields["max_position_embeddings"],
        "max_window_layers": fields["num_hidden_layers"],
        "model_type": "qwen2",
        "num_attention_heads": fields["num_attention_heads"],
        "num_hidden_layers": fields["num_hidden_layers"],
        "num_key_value_heads": fields["num_key_value_heads"],
        "pad_token_id": fields["pad_token_id"],
        "rms_norm_eps": fields["rms_norm_eps"],
        "rope_theta": 10000.0,
        "sliding_window": fields["max_position_embeddings"],
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "transformers_version": "4.40.1",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": fields["vocab_size"],
    }
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(path, tokenizer_dir, padding_side=padding_side, pad_token=pad_token)
    return _save_raw_checkpoint(path, tensors, config)


def build_qwen2_reward_model(path: str | os.PathLike[str], **kw: Any) -> Path:
    """A Qwen2.5-Math-RM-style ``Qwen2ForRewardModel`` (``score`` = Linear(h, h), ReLU, Linear(h, 1))."""
    return _build_qwen2_score_model("Qwen2ForRewardModel", 1, path, **kw)


def build_qwen2_process_reward_model(path: str | os.PathLike[str], **kw: Any) -> Path:
    """A Qwen2.5-Math-PRM-style ``Qwen2ForProcessRewardModel`` (2 labels; steps end with ``<extra_0>``)."""
    return _build_qwen2_score_model("Qwen2ForProcessRewardModel", 2, path, **kw)


def build_internlm2_reward_model(
    path: str | os.PathLike[str],
    *,
    seed: int = 0,
    padding_side: str = "right",
    pad_token: bool = True,
    tokenizer_dir: str | None = None,
    dtype: torch.dtype = torch.float32,
    bias: bool = False,
    **config_fields: Any,
) -> Path:
    """An internlm2-reward-style checkpoint: ``model_type: internlm2`` (unknown to transformers), ``auto_map``
    to remote code (absent here), the original weight names (``model.tok_embeddings``,
    ``model.layers.N.attention.wqkv`` / ``wo``, ``feed_forward.w1/w2/w3``, ``attention_norm``, ``ffn_norm``,
    ``model.norm``, ``v_head``) and ``reward_token_id`` = the id of ``<|reward|>``. The tokenizer config names
    the remote ``InternLM2Tokenizer`` class, as the real one does."""
    path = Path(path)
    fields = {k: v for k, v in small_dims().items() if k != "head_dim"}
    fields.update(config_fields)
    h, inter = fields["hidden_size"], fields["intermediate_size"]
    heads, kv_heads = fields["num_attention_heads"], fields["num_key_value_heads"]
    head_dim = h // heads
    names: list[tuple[str, tuple[int, ...]]] = [("model.tok_embeddings.weight", (fields["vocab_size"], h))]
    for i in range(fields["num_hidden_layers"]):
        p = f"model.layers.{i}."
        names += [
            (p + "attention.wqkv.weight", ((heads + 2 * kv_heads) * head_dim, h)),
            (p + "attention.wo.weight", (h, heads * head_dim)),
            (p + "feed_forward.w1.weight", (inter, h)),
            (p + "feed_forward.w3.weight", (inter, h)),
            (p + "feed_forward.w2.weight", (h, inter)),
            (p + "attention_norm.weight", (h,)),
            (p + "ffn_norm.weight", (h,)),
        ]
        if bias:
            names += [
                (p + "attention.wqkv.bias", ((heads + 2 * kv_heads) * head_dim,)),
                (p + "attention.wo.bias", (h,)),
            ]
    names += [("model.norm.weight", (h,)), ("v_head.weight", (1, h))]
    gen = torch.Generator().manual_seed(seed)
    tensors = {name: _random_tensor(name, shape, gen).to(dtype) for name, shape in names}
    path.mkdir(parents=True, exist_ok=True)
    _write_tokenizer(path, tokenizer_dir, padding_side=padding_side, pad_token=pad_token)
    tok_config = read_json(path / "tokenizer_config.json")
    tok_config["tokenizer_class"] = "InternLM2Tokenizer"
    tok_config["auto_map"] = {
        "AutoTokenizer": [
            "tokenization_internlm2.InternLM2Tokenizer",
            "tokenization_internlm2_fast.InternLM2TokenizerFast",
        ]
    }
    (path / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2), encoding="utf-8")
    vocab = read_json(path / "tokenizer.json")["added_tokens"]
    reward_token_id = next(t["id"] for t in vocab if t["content"] == "<|reward|>")
    config = {
        "architectures": ["InternLM2ForRewardModel"],
        "attn_implementation": "eager",
        "auto_map": {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModel": "modeling_internlm2.InternLM2ForRewardModel",
        },
        "bias": bias,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": h,
        "initializer_range": 0.02,
        "intermediate_size": inter,
        "max_position_embeddings": fields["max_position_embeddings"],
        "model_type": "internlm2",
        "num_attention_heads": heads,
        "num_hidden_layers": fields["num_hidden_layers"],
        "num_key_value_heads": kv_heads,
        "pad_token_id": 4 if pad_token else None,
        "reward_token_id": reward_token_id,
        "rms_norm_eps": fields["rms_norm_eps"],
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "rope_theta": 1000000,
        "tie_word_embeddings": False,
        "torch_dtype": str(dtype).removeprefix("torch."),
        "transformers_version": "4.41.0",
        "use_cache": True,
        "vocab_size": fields["vocab_size"],
    }
    return _save_raw_checkpoint(path, tensors, config)


BUILDERS: dict[str, Callable[..., Path]] = {
    "Qwen3ForSequenceClassification": build_qwen3_classifier,
    "LlamaForSequenceClassification": build_llama_classifier,
    "JambaForSequenceClassification": build_jamba_classifier,
    "LlamaForCausalLM": build_llama_causal_lm,
    "Qwen3ForCausalLM": build_qwen3_causal_lm,
    "Qwen3Model": build_qwen3_model,
    "Qwen2ForRewardModel": build_qwen2_reward_model,
    "Qwen2ForProcessRewardModel": build_qwen2_process_reward_model,
    "InternLM2ForRewardModel": build_internlm2_reward_model,
}


def build_checkpoint(architecture: str, path: str | os.PathLike[str], **kw: Any) -> Path:
    """Build a tiny checkpoint of ``architecture`` in ``path`` (see :data:`BUILDERS`)."""
    if architecture not in BUILDERS:
        raise ValueError(f"No tiny builder for {architecture!r}; available: {sorted(BUILDERS)}.")
    return BUILDERS[architecture](path, **kw)


def with_nan_embedding(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    token_id: int,
    *,
    weight: str = "model.embed_tokens.weight",
) -> Path:
    """Copy checkpoint ``src`` to ``dst`` with row ``token_id`` of the input embedding ``weight`` set to NaN:
    every prompt containing that token then scores NaN (a poisoned model for non-finite output tests)."""
    from safetensors.torch import load_file, save_file

    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    weights = load_file(str(dst / "model.safetensors"))
    weights[weight][token_id] = float("nan")
    save_file(weights, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)
