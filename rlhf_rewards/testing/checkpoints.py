"""Tiny local checkpoints for tests, benchmarks and demos (no hub access needed).

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

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>", "<pad>", "<|reward|>"]
STEP_TAG = "<extra_0>"

# A ChatML template (the Qwen family's), so conversational inputs render without remote code.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Reward models score completions for reinforcement learning from human feedback.",
    "What is 12 + 7? The answer is 19. Step one: add the units. Step two: carry the tens.",
    "Hello, my name is Ada and I like mathematics, poetry and long walks.",
    "Process reward models judge every reasoning step; outcome reward models judge the final answer.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Solve 3 * 4 = 12. Then 12 - 5 = 7. So the result is 7.",
    "A policy is trained with GRPO, RLOO or PPO using rewards from a separate model.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000.",
    "Questions and answers, user and assistant, system prompts and completions.",
]


def build_tokenizer(path: str | os.PathLike[str], *, vocab_size: int = 400, padding_side: str = "right",
                    pad_token: str | None = "<pad>", chat_template: str | None = CHATML_TEMPLATE) -> Path:
    """Train a byte-level BPE tokenizer and save it as a transformers fast tokenizer in ``path``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|endoftext|>",
        pad_token=pad_token,
        padding_side=padding_side,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>", "<pad>")],
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(path)
    return path


def tokenizer_vocab_size(path: str | os.PathLike[str]) -> int:
    """Number of ids the saved tokenizer can produce (the model's vocab must cover it)."""
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(path)))


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


def _finish(path: Path, model: torch.nn.Module, tokenizer_dir: Path | None, *, padding_side: str,
            pad_token: bool, seed: int) -> Path:
    if tokenizer_dir is None:
        build_tokenizer(path, padding_side=padding_side, pad_token="<pad>" if pad_token else None)
    else:
        for name in os.listdir(tokenizer_dir):
            if name.startswith(("tokenizer", "special_tokens", "chat_template")):
                (path / name).write_bytes((tokenizer_dir / name).read_bytes())
    model.save_pretrained(path)
    return path


def _randomize(model: torch.nn.Module, seed: int, std: float = 0.2) -> None:
    # Non-trivial random weights everywhere (norm weights too), so a wrong remap or head cannot pass.
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and p.dim() == 1:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))


def build_hf_model(architecture: str, path: str | os.PathLike[str], *, config_cls: str, seed: int = 0,
                   padding_side: str = "right", pad_token: bool = True, tokenizer_dir: str | None = None,
                   dtype: torch.dtype = torch.float32, **config_fields: Any) -> Path:
    """Build any transformers architecture by class name (e.g. ``Qwen3ForSequenceClassification``)."""
    import transformers

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    fields = small_dims()
    fields.update(config_fields)
    if pad_token:
        fields.setdefault("pad_token_id", 4)
    else:
        fields["pad_token_id"] = None
    fields.setdefault("eos_token_id", 0)
    fields.setdefault("bos_token_id", 0)
    config = getattr(transformers, config_cls)(**fields)
    config.architectures = [architecture]
    torch.manual_seed(seed)
    model = getattr(transformers, architecture)(config)
    _randomize(model, seed)
    model.to(dtype)
    return _finish(path, model, Path(tokenizer_dir) if tokenizer_dir else None, padding_side=padding_side,
                   pad_token=pad_token, seed=seed)


def build_qwen3_classifier(path: str | os.PathLike[str], **kw: Any) -> Path:
    """A Skywork-Reward-V2-Qwen3-style ``Qwen3ForSequenceClassification`` with one label."""
    kw.setdefault("num_labels", 1)
    return build_hf_model("Qwen3ForSequenceClassification", path, config_cls="Qwen3Config", **kw)


def build_llama_classifier(path: str | os.PathLike[str], **kw: Any) -> Path:
    """A Skywork-Reward-V2-Llama-style ``LlamaForSequenceClassification`` with one label."""
    kw.setdefault("num_labels", 1)
    kw.pop("head_dim", None)
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


BUILDERS: dict[str, Callable[..., Path]] = {
    "Qwen3ForSequenceClassification": build_qwen3_classifier,
    "LlamaForSequenceClassification": build_llama_classifier,
    "JambaForSequenceClassification": build_jamba_classifier,
    "LlamaForCausalLM": build_llama_causal_lm,
    "Qwen3ForCausalLM": build_qwen3_causal_lm,
}


def build_checkpoint(architecture: str, path: str | os.PathLike[str], **kw: Any) -> Path:
    """Build a tiny checkpoint of ``architecture`` in ``path`` (see :data:`BUILDERS`)."""
    if architecture not in BUILDERS:
        raise ValueError(f"No tiny builder for {architecture!r}; available: {sorted(BUILDERS)}.")
    return BUILDERS[architecture](path, **kw)


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)
