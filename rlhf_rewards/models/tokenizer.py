"""Tokenizer loading that never needs remote code.

Some reward checkpoints (InternLM2) name a remote-code tokenizer class in ``tokenizer_config.json``. When
``trust_remote_code`` is off and ``tokenizer.json`` is present, the fast tokenizer is built from that file,
keeping the special tokens and chat template of ``tokenizer_config.json``.
"""

from __future__ import annotations

import json
import os
from typing import Any

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast


def load_tokenizer(
    name: str, *, revision: str | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """``AutoTokenizer.from_pretrained`` with a remote-code-free fallback to ``tokenizer.json``."""
    try:
        return AutoTokenizer.from_pretrained(name, revision=revision, trust_remote_code=trust_remote_code)
    except (ValueError, OSError, ImportError, KeyError) as first_error:
        try:
            return _fast_tokenizer_from_files(name, revision)
        except (OSError, ValueError) as exc:
            raise ValueError(
                f"Could not load a tokenizer for {name!r}: {first_error}; no usable tokenizer.json ({exc})."
            ) from first_error


def _fast_tokenizer_from_files(name: str, revision: str | None) -> PreTrainedTokenizerFast:
    tokenizer_file = _resolve(name, "tokenizer.json", revision)
    if tokenizer_file is None:
        raise OSError("tokenizer.json not found")
    kwargs: dict[str, Any] = {}
    config_file = _resolve(name, "tokenizer_config.json", revision)
    if config_file is not None:
        with open(config_file, encoding="utf-8") as f:
            cfg = json.load(f)
        for key in (
            "bos_token",
            "eos_token",
            "unk_token",
            "pad_token",
            "chat_template",
            "padding_side",
            "add_bos_token",
            "add_eos_token",
            "model_max_length",
        ):
            if cfg.get(key) is not None:
                value = cfg[key]
                kwargs[key] = value["content"] if isinstance(value, dict) and "content" in value else value
    return PreTrainedTokenizerFast(tokenizer_file=tokenizer_file, **kwargs)


def _resolve(name: str, filename: str, revision: str | None) -> str | None:
    if os.path.isdir(name):
        path = os.path.join(name, filename)
        return path if os.path.exists(path) else None
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(name, filename, revision=revision)
    except Exception:  # noqa: BLE001 - any hub failure means "not available"
        return None
