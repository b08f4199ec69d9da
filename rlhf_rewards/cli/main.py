"""The ``rlhf-rewards`` command. Each subcommand lives in its own module with ``add_parser``/``run``."""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> module providing `add_parser(subparsers)` (which sets `func` on its parser).
SUBCOMMANDS = {
    "serve": "rlhf_rewards.cli.serve",
    "score": "rlhf_rewards.cli.score",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every available subcommand."""
    parser = argparse.ArgumentParser(prog="rlhf-rewards", description="Serve reward models to RLHF training.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("rlhf_rewards"):
                continue  # subcommand not built in this version
            # An optional extra is missing: keep the command visible, explain on use.
            missing = exc.name
            p = sub.add_parser(name, help=f"(needs an extra: {missing} is not installed)")
            p.set_defaults(
                func=lambda _a, m=missing, n=name: sys.exit(
                    f"`rlhf-rewards {n}` needs {m}: pip install 'rlhf-rewards[server]'"
                )
            )
            continue
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
