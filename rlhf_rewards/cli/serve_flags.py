"""The flags of ``rlhf-rewards serve`` (network, model, limits, ``/get_reward``) and their checks."""

from __future__ import annotations

import argparse
import json


def add_serve_flags(p: argparse.ArgumentParser) -> None:
    """Add ``serve``'s own flags to ``p`` (vLLM's flags that do not apply are added by
    :func:`~rlhf_rewards.cli.vllm_flags.add_ignored_vllm_flags`)."""
    from rlhf_rewards.server.auth import API_KEY_ENV

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
        "--cpu-packed-weights",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="On CPU, pack the float32 projection weights once for MKL's GEMM (about twice their bytes in "
        "RAM). Default: packed when that copy fits in a quarter of the available memory.",
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


def check_serve_args(args: argparse.Namespace) -> None:
    """Refuse out-of-range numbers and a malformed ``--hf-overrides`` (a ``ValueError`` naming the flag)."""
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


__all__ = ["add_serve_flags", "check_serve_args", "parse_lora_modules"]
