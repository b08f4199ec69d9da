"""Small equivalents of the vLLM CLI helpers that vLLM's offline examples use.

vLLM's pooling examples start with::

    parser = FlexibleArgumentParser()
    parser = EngineArgs.add_cli_args(parser)
    parser.set_defaults(model=..., runner="pooling", enforce_eager=True)
    llm = LLM(**vars(parser.parse_args()))

and print with ``print_embeddings``. This module provides the three names with the same behaviour for
those lines: ``EngineArgs.add_cli_args`` adds vLLM's flags for ``LLM``'s parameters and the engine
arguments of :mod:`rlhf_rewards.entrypoints.engine_args`, each with ``default=SUPPRESS``, so
``vars(args)`` holds only what the command line or ``set_defaults`` gave (and ``LLM`` keeps its own
defaults for the rest).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

from rlhf_rewards.entrypoints.engine_args import known_engine_args


def _json(value: str) -> Any:
    return json.loads(value)


# (flag name, type or "bool", extra aliases): vLLM's spelling of the flags a pooling user passes.
_FLAGS: tuple[tuple[str, Any, tuple[str, ...]], ...] = (
    ("model", str, ()),
    ("runner", str, ()),
    ("convert", str, ()),
    ("tokenizer", str, ()),
    ("tokenizer-revision", str, ()),
    ("revision", str, ()),
    ("dtype", str, ()),
    ("device", str, ()),
    ("trust-remote-code", "bool", ()),
    ("max-model-len", int, ()),
    ("max-num-batched-tokens", int, ()),
    ("enable-lora", "bool", ()),
    ("max-loras", int, ()),
    ("max-lora-rank", int, ()),
    ("seed", int, ()),
    ("hf-overrides", _json, ()),
    ("pooler-config", _json, ()),
    ("enforce-eager", "bool", ()),
    ("tensor-parallel-size", int, ("-tp",)),
    ("pipeline-parallel-size", int, ("-pp",)),
    ("served-model-name", str, ()),
    ("chat-template", str, ()),
    ("skip-tokenizer-init", "bool", ()),
    ("gpu-memory-utilization", float, ()),
    ("max-num-seqs", int, ()),
    ("enable-prefix-caching", "bool", ()),
    ("enable-chunked-prefill", "bool", ()),
    ("kv-cache-dtype", str, ()),
    ("quantization", str, ("-q",)),
    ("block-size", int, ()),
    ("disable-log-stats", "bool", ()),
    ("distributed-executor-backend", str, ()),
)


class FlexibleArgumentParser(argparse.ArgumentParser):
    """vLLM's ``FlexibleArgumentParser`` subset: ``--max_model_len`` and ``--max-model-len`` are the same
    flag (underscores in a flag's name become dashes), and ``--flag=value`` works as usual."""

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: Any = None) -> Any:  # noqa: D102
        import sys

        raw = list(sys.argv[1:] if args is None else args)
        fixed = []
        for a in raw:
            if a.startswith("--") and "_" in a.split("=", 1)[0]:
                key, sep, val = a.partition("=")
                a = key.replace("_", "-") + sep + val
            fixed.append(a)
        return super().parse_known_args(fixed, namespace)


class EngineArgs:
    """vLLM's ``EngineArgs`` for ``LLM``: keyword arguments checked against the names ``LLM`` accepts.

    ``EngineArgs(model=..., max_model_len=...)`` keeps them as attributes; ``vars(engine_args)`` (or
    ``LLM.from_engine_args(engine_args)``) passes them on. A name vLLM does not know is a ``TypeError``.
    """

    def __init__(self, model: str | None = None, **kwargs: Any) -> None:
        known = known_engine_args()
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise TypeError(f"EngineArgs() got unexpected keyword argument(s) {unknown}")
        if model is not None:
            self.model = model
        for name, value in kwargs.items():
            setattr(self, name, value)

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Add vLLM's engine flags (the subset this engine reads or ignores with a warning) to ``parser``."""
        for name, kind, aliases in _FLAGS:
            flags = (f"--{name}", *aliases)
            dest = name.replace("-", "_")
            if kind == "bool":
                parser.add_argument(
                    *flags, dest=dest, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS
                )
            else:
                parser.add_argument(*flags, dest=dest, type=kind, default=argparse.SUPPRESS)
        return parser

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> EngineArgs:
        """``EngineArgs`` from a parsed namespace."""
        return cls(**vars(args))


def print_embeddings(embeds: Sequence[float], prefix: str = "Embeddings") -> None:
    """vLLM's ``print_embeddings``: the first 4 values and the size."""
    embeds_trimmed = (str(embeds[:4])[:-1] + ", ...]") if len(embeds) > 4 else embeds
    print(f"{prefix}: {embeds_trimmed} (size={len(embeds)})")


__all__ = ["EngineArgs", "FlexibleArgumentParser", "print_embeddings"]
