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

logger = logging.getLogger("rlhf_rewards.server")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``serve`` on the top-level CLI."""
    from rlhf_rewards.server.auth import API_KEY_ENV

    p = subparsers.add_parser(
        "serve",
        help="Serve a reward model over HTTP (vLLM's /pooling API, /classify, /get_reward).",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "model",
        nargs="?",
        default=None,
        metavar="MODEL",
        help="Model folder or hub id. Default: the reward model shipped with rlhf-rewards, if any.",
    )
    net = p.add_argument_group("network")
    net.add_argument(
        "--host", default="127.0.0.1", help="Interface to bind. Default 127.0.0.1 (this machine only)."
    )
    net.add_argument("--port", type=int, default=8000, help="Port. Default 8000.")
    net.add_argument(
        "--api-key",
        default=None,
        help=f"Require 'Authorization: Bearer KEY' on every route but /health. Default: ${API_KEY_ENV}.",
    )
    net.add_argument(
        "--allow-keyless-from",
        default=None,
        metavar="CIDR[,CIDR...]",
        help="With --api-key: let requests WITHOUT an Authorization header in from these client "
        "networks (OpenRLHF's and verl's reward clients send none), e.g. 127.0.0.1/32,10.0.0.0/8. "
        "Checked on the TCP peer address. Default: none (every request needs the key).",
    )
    net.add_argument(
        "--shutdown-timeout",
        type=float,
        default=60.0,
        help="Seconds to finish in-flight requests after SIGTERM. Default 60.",
    )
    net.add_argument("--disable-access-log", action="store_true", help="Do not log each request line.")
    net.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    model = p.add_argument_group("model")
    model.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        help="Name(s) clients use in `model`; the first is reported back. Default: MODEL.",
    )
    model.add_argument(
        "--pooler-config",
        default=None,
        help="PoolerConfig as JSON, e.g. "
        '\'{"pooling_type": "STEP", "step_tag_id": 123, "returned_token_ids": [456, 789]}\'.',
    )
    model.add_argument(
        "--lora-modules",
        nargs="+",
        default=[],
        metavar="NAME=PATH",
        help='LoRA adapters served by name (NAME=PATH, or JSON {"name", "path"}). Requests pick '
        "one with `model`; paths never come from requests.",
    )
    model.add_argument(
        "--max-loras", type=int, default=None, help="Adapters kept loaded. Default: all of them."
    )
    model.add_argument("--max-lora-rank", type=int, default=64, help="Largest adapter rank. Default 64.")
    model.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16. Default auto.")
    model.add_argument("--device", default=None, help="cpu, cuda, cuda:1... Default: CUDA if present.")
    model.add_argument("--tokenizer", default=None, help="Tokenizer folder or id. Default: the model's.")
    model.add_argument("--revision", default=None, help="Hub revision of the model.")
    model.add_argument("--hf-overrides", default=None, help="JSON written over config.json.")
    model.add_argument(
        "--convert",
        default="auto",
        choices=["auto", "classify", "embed", "none"],
        help="vLLM's --convert for generative checkpoints. Default auto.",
    )
    model.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="Let transformers run code from the checkpoint (never needed by supported models).",
    )
    model.add_argument("--max-model-len", type=int, default=None, help="Longest prompt in tokens.")
    model.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="Padded-token budget of one forward pass. Default 16384.",
    )
    model.add_argument(
        "--enforce-eager",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="vLLM's switch. --no-enforce-eager runs each decoder layer's row-wise work through "
        "torch.compile (first call compiles). Default: eager.",
    )
    model.add_argument(
        "--tensor-parallel-size",
        "-tp",
        type=int,
        default=1,
        help="Split the model over this many processes/GPUs (vLLM's flag; the server starts the other "
        "ranks itself). Default 1.",
    )
    model.add_argument(
        "--pipeline-parallel-size",
        "-pp",
        type=int,
        default=1,
        help="Split the layers into this many stages, one process/GPU each (x tensor parallel). Default 1.",
    )
    model.add_argument(
        "--enable-prefix-caching",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="vLLM's flag: keep the keys/values of recent prefixes across requests (exact: a hit "
        "scores what a miss scores). Default on.",
    )
    model.add_argument(
        "--prefix-cache-bytes",
        type=int,
        default=None,
        help="Bound of the prefix cache in bytes (least recently used prefixes go first). "
        "Default 1 GiB; 0 turns the cache off.",
    )
    model.add_argument(
        "--deterministic",
        action="store_true",
        help="Batch-invariant scores: a text's score is bit-identical whatever else is batched "
        "with it (README, Reproducible rewards). Needs --enforce-eager.",
    )
    model.add_argument(
        "--strict-vllm-compat",
        action="store_true",
        help="Answer every request vLLM 0.32 refuses with vLLM's status and error instead of this "
        "server's extensions (tasks other than the model's own, /classify on token reward "
        "models, /v1/embeddings on reward models, `normalize`/`dimensions` on /pooling...): "
        "LLM(strict_vllm_compat=True).",
    )

    lim = p.add_argument_group("limits")
    lim.add_argument(
        "--max-body-bytes",
        type=int,
        default=32 * 1024 * 1024,
        help="Largest request body (413 above). Default 32 MiB.",
    )
    lim.add_argument(
        "--max-client-batch-size",
        type=int,
        default=1024,
        help="Most prompts in one request (413 above). Default 1024.",
    )
    lim.add_argument(
        "--max-queue-size",
        type=int,
        default=8192,
        help="Most prompts waiting for the engine; when full, 503 with Retry-After. Default 8192.",
    )
    lim.add_argument(
        "--max-batch-tokens",
        type=int,
        default=None,
        help="Token budget of one merged engine call. Default 4 x --max-num-batched-tokens.",
    )
    lim.add_argument(
        "--batch-wait-ms",
        type=float,
        default=50.0,
        help="Longest delay of an engine call while more requests are arriving, so they join it "
        "(a lone request to an idle server never waits; 0 turns waiting off). Default 50.",
    )
    gr = p.add_argument_group("/get_reward (OpenRLHF)")
    gr.add_argument(
        "--get-reward-max-len",
        type=int,
        default=None,
        help="Tokens kept per /get_reward query (cut on the tokenizer's truncation side, as OpenRLHF's "
        "serve_rm --max_len). Default: --max-model-len.",
    )
    gr.add_argument(
        "--get-reward-step-aggregation",
        default="min",
        choices=["min", "last", "mean", "prod"],
        help="Process reward models on /get_reward: how step rewards become one. Default min "
        "(RewardFunction's).",
    )
    gr.add_argument(
        "--get-reward-step-separator",
        default="\n\n",
        help="Process reward models on /get_reward: what separates a response's steps (the string "
        "itself; in bash write $'\\n\\n'). Default a blank line (RewardFunction's).",
    )
    lim.add_argument(
        "--trust-request-chat-template",
        action="store_true",
        help="Accept `chat_template` sent in requests (Jinja run on the server). Default: refuse.",
    )
    model.add_argument(
        "--chat-template",
        default=None,
        help="The chat template for `messages` (vLLM's flag): a file, or the template itself. "
        "Default: the tokenizer's.",
    )
    from rlhf_rewards.cli.vllm_flags import add_ignored_vllm_flags

    add_ignored_vllm_flags(p)  # a `vllm serve` command line runs as is (engine flags warn once)
    p.set_defaults(func=run)
    return p


def parse_lora_modules(values: list[str]) -> dict[str, str]:
    """``NAME=PATH`` or JSON ``{"name", "path"}`` items -> ``{name: path}``; raises ``ValueError`` if malformed."""
    modules: dict[str, str] = {}
    for value in values:
        if value.lstrip().startswith("{"):
            try:
                obj = json.loads(value)
                name, path = obj["name"], obj["path"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ValueError(
                    f'--lora-modules {value!r}: JSON form must be {{"name": ..., "path": ...}}.'
                ) from None
        else:
            name, sep, path = value.partition("=")
            if not sep:
                raise ValueError(f"--lora-modules {value!r}: use NAME=PATH.")
        name, path = str(name).strip(), str(path).strip()
        if not name or not path:
            raise ValueError(f"--lora-modules {value!r}: both NAME and PATH must be non-empty.")
        if name in modules:
            raise ValueError(f"--lora-modules: the name {name!r} is given twice.")
        modules[name] = path
    return modules


def build_engine(args: argparse.Namespace) -> Any:
    """Load the model and wrap it in a :class:`~rlhf_rewards.server.base.serving.ServedModel`."""
    from rlhf_rewards import LLM, LoRARequest
    from rlhf_rewards.entrypoints.chat_template import load_chat_template
    from rlhf_rewards.server.base.serving import ServedModel
    from rlhf_rewards.server.limits import ServerLimits

    modules = parse_lora_modules(args.lora_modules)
    llm = LLM(
        args.model,
        runner="pooling",
        tokenizer=args.tokenizer,
        pooler_config=args.pooler_config,
        dtype=args.dtype,
        device=args.device,
        trust_remote_code=args.trust_remote_code,
        max_model_len=args.max_model_len,
        max_num_batched_tokens=args.max_num_batched_tokens,
        enable_lora=bool(modules),
        max_loras=args.max_loras or max(len(modules), 1),
        max_lora_rank=args.max_lora_rank,
        revision=args.revision,
        hf_overrides=json.loads(args.hf_overrides) if args.hf_overrides else None,
        convert=args.convert,
        enforce_eager=args.enforce_eager,
        deterministic=args.deterministic,
        enable_prefix_caching=args.enable_prefix_caching,
        prefix_cache_bytes=args.prefix_cache_bytes,
        tensor_parallel_size=args.tensor_parallel_size,
        pipeline_parallel_size=args.pipeline_parallel_size,
        **({"strict_vllm_compat": True} if getattr(args, "strict_vllm_compat", False) else {}),
    )
    for i, (name, path) in enumerate(modules.items()):
        llm.add_lora(LoRARequest(name, i + 1, path))  # loads and checks each adapter now, not on first use
    limits = ServerLimits(
        max_body_bytes=args.max_body_bytes,
        max_client_batch_size=args.max_client_batch_size,
        max_queue_size=args.max_queue_size,
        max_batch_tokens=args.max_batch_tokens or 4 * llm.max_num_batched_tokens,
        trust_request_chat_template=args.trust_request_chat_template,
        chat_template=load_chat_template(args.chat_template, name="--chat-template"),
        batch_wait_s=args.batch_wait_ms / 1000.0,
    )
    return ServedModel(llm, list(args.served_model_name or []), limits)


def _check_args(args: argparse.Namespace) -> None:
    for name in (
        "port",
        "max_body_bytes",
        "max_client_batch_size",
        "max_queue_size",
        "max_batch_tokens",
        "max_model_len",
        "max_num_batched_tokens",
        "max_loras",
        "tensor_parallel_size",
        "pipeline_parallel_size",
    ):
        value = getattr(args, name)
        if value is not None and (value < 1 or (name == "port" and value > 65535)):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer (got {value}).")
    if not (0 <= args.batch_wait_ms <= 10_000):
        raise ValueError(f"--batch-wait-ms must be between 0 and 10000 (got {args.batch_wait_ms}).")
    if args.hf_overrides:
        try:
            if not isinstance(json.loads(args.hf_overrides), dict):
                raise ValueError
        except ValueError:
            raise ValueError("--hf-overrides must be a JSON object.") from None


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
    """``(app, engine, api_key)`` for parsed ``serve`` arguments; raises ``ValueError`` naming a bad flag."""
    from rlhf_rewards.server.app import build_app

    if args.model is None:
        args.model = default_model()
    if args.model is None:
        raise ValueError(
            "no MODEL given and this install ships no default model; pass a model folder or hub id, "
            "e.g. `rlhf-rewards serve Skywork/Skywork-Reward-V2-Qwen3-0.6B`."
        )
    _check_args(args)
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
    engine = build_engine(args)
    api_key = resolve_api_key(args)
    app = build_app(engine, api_key=api_key)
    app.state.get_reward_options = get_reward_options
    allow_keyless_from(app, args.allow_keyless_from)
    return app, engine, api_key


def run(args: argparse.Namespace) -> int:
    """Load the model, then serve until SIGTERM/SIGINT; in-flight requests finish before exit."""
    import uvicorn

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app, engine, api_key = make_app(args)
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
            engine.draining = (
                True  # /health turns 503 and new work is refused while in-flight requests finish
            )
            super().handle_exit(sig, frame)

    server = _Server(config)
    # The key itself is never logged, only whether one is required.
    logger.info(
        "Serving %s as %s%s on http://%s:%d (API key %s).",
        args.model,
        engine.model_name,
        f" with LoRA modules {engine.lora_names}" if engine.lora_names else "",
        args.host,
        args.port,
        "required" if api_key else "not required",
    )
    # uvicorn re-raises the signal after its graceful shutdown; a no-op handler lets the process exit 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    server.run()
    engine.llm.shutdown()  # a split model's worker ranks (--tensor/pipeline-parallel-size) stop with the server
    return 0 if server.started else 1


__all__ = [
    "add_parser",
    "build_engine",
    "default_model",
    "make_app",
    "parse_lora_modules",
    "resolve_api_key",
    "run",
]
