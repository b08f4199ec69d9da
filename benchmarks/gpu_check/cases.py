"""The models the GPU check builds, with the real configs' shapes (or tiny ones), and which checks run on each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.gpu_check.reference import free
from benchmarks.workloads import benchmark_tokenizer, cached


@dataclass(frozen=True)
class ModelCase:
    """A reward model to build: its architecture, config class and real (or tiny) config fields."""

    name: str
    shaped_as: str
    architecture: str
    config_cls: str
    kind: str  # "rm" (classify, one label) or "prm" (token_classify at the step tags, two labels)
    fields: dict[str, Any]
    tiny_fields: dict[str, Any]
    note: str = ""

    def config_fields(self, tiny: bool) -> dict[str, Any]:
        """The config fields of the real shape, or of the tiny one (``--tiny``)."""
        return dict(self.tiny_fields if tiny else self.fields)


_TINY = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
_LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 500000.0,
    "factor": 32.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

CASES: dict[str, ModelCase] = {
    "qwen3-0.6b": ModelCase(
        "qwen3-0.6b",
        "Qwen/Qwen3-0.6B",
        "Qwen3ForSequenceClassification",
        "Qwen3Config",
        "rm",
        fields={
            "hidden_size": 1024,
            "intermediate_size": 3072,
            "num_hidden_layers": 28,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 128,
            "vocab_size": 151936,
            "max_position_embeddings": 40960,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "tie_word_embeddings": True,
            "num_labels": 1,
        },
        tiny_fields={
            **_TINY,
            "head_dim": 32,
            "max_position_embeddings": 40960,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
            "num_labels": 1,
        },
        note="all 28 layers",
    ),
    "llama-3.2-1b": ModelCase(
        "llama-3.2-1b",
        "meta-llama/Llama-3.2-1B",
        "LlamaForSequenceClassification",
        "LlamaConfig",
        "rm",
        fields={
            "hidden_size": 2048,
            "intermediate_size": 8192,
            "num_hidden_layers": 16,
            "num_attention_heads": 32,
            "num_key_value_heads": 8,
            "head_dim": 64,
            "vocab_size": 128256,
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5,
            "rope_parameters": dict(_LLAMA3_ROPE),
            "tie_word_embeddings": True,
            "num_labels": 1,
        },
        tiny_fields={
            **_TINY,
            "head_dim": 32,
            "max_position_embeddings": 131072,
            "rms_norm_eps": 1e-5,
            "rope_parameters": dict(_LLAMA3_ROPE),
            "num_labels": 1,
        },
        note="all 16 layers, llama3 RoPE scaling",
    ),
    "qwen2.5-math-prm": ModelCase(
        "qwen2.5-math-prm",
        "Qwen/Qwen2.5-Math-PRM-7B",
        "Qwen2ForProcessRewardModel",
        "Qwen2Config",
        "prm",
        fields={
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 4,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "vocab_size": 152064,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
            "tie_word_embeddings": False,
        },
        tiny_fields={
            **_TINY,
            "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        },
        note="full width, 4 of the 28 layers (the depth only repeats the same kernels)",
    ),
}
#: Models and dtypes of the ``deterministic`` check.
DETERMINISTIC_MODELS = ("qwen3-0.6b", "qwen2.5-math-prm")
DETERMINISTIC_DTYPES = ("float32", "bfloat16")
#: Workload -> models it runs on.
BENCH_MODELS = {"grpo": ("qwen3-0.6b", "llama-3.2-1b"), "prm": ("qwen2.5-math-prm",)}


def build_case(case: ModelCase, tiny: bool, device: torch.device, seed: int = 0) -> Path:
    """Build (once, cached by shape) ``case`` with the benchmarks' tokenizer, saved in bfloat16 as the hub
    checkpoints are.

    transformers' own random initialisation, built on ``device`` (fast on a GPU); norm weights are set to
    ``1 + 0.1 N(0, 1)`` and biases to ``0.02 N(0, 1)``, so a misplaced norm or a dropped bias cannot go
    unnoticed (:func:`tests.support.checkpoints.build_model`).
    """
    from tests.support.checkpoints import build_model, token_fields

    tokenizer = benchmark_tokenizer()
    fields = case.config_fields(tiny)

    def build(path: Path) -> None:
        build_model(
            case.architecture,
            path,
            {**token_fields(tokenizer), **fields},
            config_cls=case.config_cls,
            seed=seed,
            init="transformers",
            bias_std=0.02,
            dtype=torch.bfloat16,
            device=device,
            tokenizer_dir=tokenizer,
        )
        free(device)

    name = f"gpu_check/{case.name}{'-tiny' if tiny else ''}"
    return cached(name, [case.architecture, fields, seed, 2], build)
