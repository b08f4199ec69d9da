"""``rlhf-rewards serve MODEL``: the HTTP reward server (vLLM's ``/pooling`` API, verl's ``/classify``,
OpenRLHF's ``/get_reward``).

Binds 127.0.0.1 unless ``--host`` says otherwise. SIGTERM (or Ctrl-C) stops accepting connections, finishes
every request in flight, and exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Any

from rlhf_rewards.cli.serve_flags import add_serve_flags, check_serve_args, parse_lora_modules

logger = logging.getLogger("rlhf_rewards.server")

#: ``LLM``'s parameters that ``serve`` does not pass as given: the model (positional), the runner (always
#: pooling), LoRA (from --lora-modules), --hf-overrides (JSON text) and --seed (an ignored vLLM flag).
# Set below (model, LoRA, overrides, strict mode) or not a serve flag (the split engine's timeouts come from the
# environment).
_NOT_AS_GIVEN = frozenset(
    {
        "model",
        "runner",
        "enable_lora",
        "max_loras",
        "seed",
        "hf_overrides",
        "strict_vllm_compat",
        "parallel_start_timeout_s",
        "parallel_call_timeout_s",
    }
)
#: Engine arguments ``serve`` has flags for beside ``LLM``'s own parameters.
_ENGINE_FLAGS = ("enable_prefix_caching", "prefix_cache_bytes", "cpu_packed_weights")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``serve`` on the top-level CLI."""
    p = subparsers.add_parser(
        "serve",
        help="Serve a reward model over HTTP (vLLM's /pooling API, /classify, /get_reward).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_serve_flags(p)
    from rlhf_rewards.cli.vllm_flags import add_ignored_vllm_flags

    add_ignored_vllm_flags(p)  # a `vllm serve` command line runs as is (engine flags warn once)
    p.set_defaults(func=run)
    return p


def build_served_model(args: argparse.Namespace) -> Any:
    """Load the model and wrap it in a :class:`~rlhf_rewards.server.base.serving.ServedModel`."""
    from rlhf_rewards import LLM, LoRARequest
    from rlhf_rewards.entrypoints.chat_template import load_chat_template
    from rlhf_rewards.entrypoints.engine_args import LLM_PARAMETERS
    from rlhf_rewards.server.base.serving import ServedModel
    from rlhf_rewards.server.batcher import engine_thread
    from rlhf_rewards.server.limits import ServerLimits

    modules = parse_lora_modules(args.lora_modules)

    def load() -> LLM:
        llm = LLM(
            args.model,
            runner="pooling",
            enable_lora=bool(modules),
            max_loras=args.max_loras or max(len(modules), 1),
            hf_overrides=json.loads(args.hf_overrides) if args.hf_overrides else None,
            **{n: getattr(args, n) for n in (*LLM_PARAMETERS, *_ENGINE_FLAGS) if n not in _NOT_AS_GIVEN},
            **({"strict_vllm_compat": True} if getattr(args, "strict_vllm_compat", False) else {}),
        )
        for i, (name, path) in enumerate(modules.items()):
            llm.add_lora(
                LoRARequest(name, i + 1, path)
            )  # loads and checks each adapter now, not on first use
        return llm

    # The model loads on the thread that will run it: one OpenMP team in the process (see engine_thread).
    executor = engine_thread()
    try:
        llm = executor.submit(load).result()
    except BaseException:
        executor.shutdown(wait=False)
        raise
    limits = ServerLimits(
        max_body_bytes=args.max_body_bytes,
        max_client_batch_size=args.max_client_batch_size,
        max_queue_size=args.max_queue_size,
        max_batch_tokens=args.max_batch_tokens or 4 * llm.max_num_batched_tokens,
        trust_request_chat_template=args.trust_request_chat_template,
        chat_template=load_chat_template(args.chat_template, name="--chat-template"),
        batch_wait_s=args.batch_wait_ms / 1000.0,
    )
    return ServedModel(llm, list(args.served_model_name or []), limits, engine_executor=executor)


def resolve_api_key(args: argparse.Namespace) -> str | None:
    """``--api-key``, else ``$RLHF_REWARDS_API_KEY``, else ``None`` (no key required)."""
    from rlhf_rewards.server.auth import API_KEY_ENV

    return args.api_key or os.environ.get(API_KEY_ENV) or None


def default_model() -> str | None:
    """The model served when no MODEL is given: the shipped outcome reward model
    (:func:`rlhf_rewards.assets.default_reward_model_path`), or ``None`` if this install has none."""
    try:
        from rlhf_rewards.assets import default_reward_model_path

        return str(default_reward_model_path())
    except (ImportError, OSError, ValueError):
        return None


def make_app(args: argparse.Namespace) -> tuple[Any, Any, str | None]:
    """``(app, served, api_key)`` for parsed ``serve`` arguments; raises ``ValueError`` naming a bad flag."""
    from rlhf_rewards.server.app import build_app

    if args.model is None:
        args.model = default_model()
    if args.model is None:
        raise ValueError(
            "no MODEL given and this install ships no default model; pass a model folder or hub id, "
            "e.g. `rlhf-rewards serve Skywork/Skywork-Reward-V2-Qwen3-0.6B`."
        )
    check_serve_args(args)
    from rlhf_rewards.cli.vllm_flags import check_vllm_flags

    check_vllm_flags(args)
    from rlhf_rewards.server.auth import allow_keyless_from, parse_networks
    from rlhf_rewards.server.reward.serving import GetRewardOptions

    get_reward_options = GetRewardOptions(
        max_len=args.get_reward_max_len,
        step_aggregation=args.get_reward_step_aggregation,
        step_separator=args.get_reward_step_separator,
    )
    parse_networks(args.allow_keyless_from)  # a bad network is refused before the model loads
    served = build_served_model(args)
    api_key = resolve_api_key(args)
    app = build_app(served, api_key=api_key)
    app.state.get_reward_options = get_reward_options
    allow_keyless_from(app, args.allow_keyless_from)
    return app, served, api_key


def run(args: argparse.Namespace) -> int:
    """Load the model, then serve until SIGTERM/SIGINT; in-flight requests finish before exit."""
    import uvicorn

    from rlhf_rewards.server.allocator import tune_malloc

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    tune_malloc()  # before the model loads, so its memory and the engine thread's come from the tuned heap
    try:
        app, served, api_key = make_app(args)
    except (ValueError, OSError) as exc:  # a bad flag, model or adapter path: say which, no traceback
        sys.stderr.write(f"rlhf-rewards serve: {exc}\n")
        return 2
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=not args.disable_access_log,
        lifespan="on",
        timeout_graceful_shutdown=args.shutdown_timeout,
    )

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            served.draining = (
                True  # /health turns 503 and new work is refused while in-flight requests finish
            )
            super().handle_exit(sig, frame)

    server = _Server(config)
    # The key itself is never logged, only whether one is required.
    logger.info(
        "Serving %s as %s%s on http://%s:%d (API key %s).",
        args.model,
        served.model_name,
        f" with LoRA modules {served.lora_names}" if served.lora_names else "",
        args.host,
        args.port,
        "required" if api_key else "not required",
    )
    # uvicorn re-raises the signal after its graceful shutdown; a no-op handler lets the process exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    served.llm.shutdown()  # a split model's worker ranks (--tensor/pipeline-parallel-size) stop with the server
    return 0 if server.started else 1


__all__ = [
    "add_parser",
    "build_served_model",
    "default_model",
    "make_app",
    "resolve_api_key",
    "run",
]
