"""vLLM's ``vllm serve`` engine flags that mean nothing to this engine, accepted by ``rlhf-rewards serve``.

A command line copied from ``vllm serve MODEL --runner pooling --gpu-memory-utilization 0.8 ...`` runs here:
each such flag is accepted and logged once with what happens instead (the reasons are the offline engine's,
:data:`rlhf_rewards.entrypoints.engine_args.RULES`). ``--runner`` takes ``auto``/``pooling`` (a pooling
server); ``generate`` is an error. Flags this CLI defines itself keep their own meaning.
"""

from __future__ import annotations

import argparse
import logging

from rlhf_rewards.entrypoints.engine_args import RULES

logger = logging.getLogger("rlhf_rewards.server")
_DEST = "vllm_ignored_"
_HONOURED_ELSEWHERE: dict[str, str] = {}


def add_ignored_vllm_flags(parser: argparse.ArgumentParser) -> None:
    """Add ``--runner`` and every ignored vLLM engine flag (value optional) that ``parser`` does not define."""
    group = parser.add_argument_group("vLLM engine flags (accepted and ignored, with a warning)")
    if "--runner" not in parser._option_string_actions:
        group.add_argument(
            "--runner",
            default="pooling",
            choices=["auto", "pooling", "generate"],
            help="vLLM's runner: this server pools (auto and pooling mean the same); generate is an error.",
        )
    # vLLM's names of flags this CLI has under its own name.
    if "--disable-uvicorn-access-log" not in parser._option_string_actions:
        group.add_argument(
            "--disable-uvicorn-access-log",
            dest="disable_access_log",
            action="store_true",
            help="vLLM's name of --disable-access-log.",
        )
    if "--uvicorn-log-level" not in parser._option_string_actions:
        group.add_argument(
            "--uvicorn-log-level",
            dest="log_level",
            choices=["debug", "info", "warning", "error"],
            help="vLLM's name of --log-level.",
        )
    for flag, why in (
        ("--enable-lora", "LoRA is on when --lora-modules names adapters"),
        ("--seed", "pooling draws no random numbers (scores are deterministic)"),
    ):
        if flag not in parser._option_string_actions:
            group.add_argument(
                flag,
                dest=_DEST + flag[2:].replace("-", "_"),
                nargs="?",
                const=True,
                default=argparse.SUPPRESS,
                help=f"Accepted; {why}.",
            )
            _HONOURED_ELSEWHERE[flag[2:].replace("-", "_")] = why
    for name in sorted(RULES):
        if name.startswith("_"):
            continue
        flag = "--" + name.replace("_", "-")
        if flag in parser._option_string_actions:
            continue
        # nargs="?": vLLM's boolean flags come without a value, the others with one.
        group.add_argument(
            flag, dest=_DEST + name, nargs="?", const=True, default=argparse.SUPPRESS, help=argparse.SUPPRESS
        )


def check_vllm_flags(args: argparse.Namespace) -> list[str]:
    """Log one warning per ignored vLLM flag given; ``ValueError`` for ``--runner generate``. Returns their names."""
    if getattr(args, "runner", "pooling") == "generate":
        raise ValueError(
            "--runner generate: rlhf-rewards serve is a pooling server (rewards, scores, embeddings); "
            "serve generation with vLLM itself."
        )
    given = sorted(k.removeprefix(_DEST) for k in vars(args) if k.startswith(_DEST))
    for name in given:
        if name in RULES:
            logger.warning("--%s %s.", name.replace("_", "-"), RULES[name])
        else:
            logger.info(
                "--%s is accepted: %s.", name.replace("_", "-"), _HONOURED_ELSEWHERE.get(name, "no effect")
            )
    return given


__all__ = ["add_ignored_vllm_flags", "check_vllm_flags"]
