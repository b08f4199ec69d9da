"""``rlhf-rewards score INPUT``: score a JSONL file of prompt/completion pairs (or conversations).

Each input line is one JSON object, in one of TRL's formats:

- ``{"prompt": "What is 2 + 3?", "completion": " 5"}``: standard; the model scores ``prompt + completion``;
- ``{"prompt": [messages...], "completion": [messages...]}``: conversational, rendered with the reward
  model's chat template (a string completion is taken as one assistant message);
- ``{"messages": [messages...]}``: a whole conversation; the last message is the completion.

Each output line is ``{"line": N, "id": ..., "score": S}`` (``id`` only when the input line has one; ``steps``
too for process reward models). Scores are exactly what ``RewardFunction`` gives a trainer. Lines are read,
scored and written ``--batch-size`` at a time, so memory does not grow with the file. A malformed line stops
the run with an error naming its line number, unless ``--skip-errors`` writes ``{"line": N, "error": ...}``
for it and goes on. Blank lines are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from tqdm.auto import tqdm

FORMATS_HELP = 'one of {"prompt": str, "completion": str}, {"prompt": [messages], "completion": [messages]} or {"messages": [messages]}'


class ScoreInputError(ValueError):
    """A line of the input cannot be scored; the message names the line."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: {reason}")
        self.line = line
        self.reason = reason


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``score`` on the top-level CLI."""
    p = subparsers.add_parser(
        "score",
        help="Score a JSONL file of prompt/completion pairs or conversations with a reward model or server.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", help="JSONL file to score ('-' reads standard input).")
    p.add_argument(
        "-o", "--output", default="-", help="Where to write the JSONL scores. Default: standard output."
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--model",
        default=None,
        help="Reward model folder or hub id, loaded in this process. Default: the outcome reward "
        "model shipped with rlhf-rewards.",
    )
    src.add_argument(
        "--default",
        choices=["outcome", "process"],
        default=None,
        help="Use the shipped outcome or process reward model (see rlhf_rewards.assets).",
    )
    src.add_argument(
        "--url",
        action="append",
        default=None,
        metavar="URL",
        help="Score through an `rlhf-rewards serve` server (repeat for several).",
    )
    p.add_argument("--api-key", default=None, help="Bearer key for --url. Default: $RLHF_REWARDS_API_KEY.")
    p.add_argument("--batch-size", type=int, default=64, help="Lines read and scored at a time. Default 64.")
    p.add_argument(
        "--skip-errors",
        action="store_true",
        help='Write {"line": N, "error": ...} for a bad line and go on, instead of stopping.',
    )
    p.add_argument(
        "--kind",
        choices=["outcome", "token", "process"],
        default=None,
        help="How to read the model's output. Default: the model's own kind.",
    )
    p.add_argument(
        "--step-separator",
        default="\n\n",
        help="Process rewards: text between the steps of a completion. Default: a blank line.",
    )
    p.add_argument(
        "--step-aggregation",
        default="min",
        choices=["min", "last", "mean", "prod"],
        help="Process rewards: how step scores become one score. Default min.",
    )
    p.add_argument(
        "--truncate",
        action="store_true",
        help="Score the last max_model_len tokens of an over-long input instead of giving it no score.",
    )
    p.add_argument(
        "--device", default=None, help="Local model: cpu, cuda, cuda:1... Default: CUDA if present."
    )
    p.add_argument(
        "--dtype", default="auto", help="Local model: auto, float32, bfloat16 or float16. Default auto."
    )
    p.add_argument("--no-progress", action="store_true", help="Do not show the progress bar (on stderr).")
    p.set_defaults(func=run)
    return p


# ------------------------------------------------------------------------------------------------ records
@dataclass
class Record:
    """One valid input line."""

    line: int
    id: Any
    prompt: Any
    completion: Any

    @property
    def conversational(self) -> bool:
        """Whether the record is a conversation (its prompt is a list of messages)."""
        return not isinstance(self.prompt, str)


def _check_messages(value: Any, what: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{what} must be a non-empty list of {{'role', 'content'}} messages")
    for j, m in enumerate(value):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError(f"{what}[{j}] is not a message: it needs a string 'role' (and 'content')")
    return value


def parse_record(text: str, line: int) -> Record:
    """Parse one JSONL line into a :class:`Record`; raises :class:`ScoreInputError` naming ``line``."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScoreInputError(line, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    try:
        if not isinstance(obj, dict):
            raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
        rid = obj.get("id")
        if "messages" in obj:
            messages = _check_messages(obj["messages"], "messages")
            if len(messages) > 1 and messages[-1]["role"] == "assistant":
                return Record(line, rid, messages[:-1], messages[-1:])
            return Record(line, rid, messages, [])
        if "prompt" not in obj or "completion" not in obj:
            raise ValueError(f"missing keys: expected {FORMATS_HELP}; got keys {sorted(obj)}")
        prompt, completion = obj["prompt"], obj["completion"]
        if isinstance(prompt, str):
            if not isinstance(completion, str):
                raise ValueError(
                    f"'prompt' is a string, so 'completion' must be a string too (got {type(completion).__name__})"
                )
            return Record(line, rid, prompt, completion)
        prompt = _check_messages(prompt, "prompt")
        if isinstance(completion, str):
            completion = [{"role": "assistant", "content": completion}]
        elif not (isinstance(completion, list) and not completion):
            completion = _check_messages(completion, "completion")
        return Record(line, rid, prompt, completion)
    except ValueError as exc:
        raise ScoreInputError(line, str(exc)) from None


# ------------------------------------------------------------------------------------------------ scoring
def _result(rec: Record, **fields: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"line": rec.line}
    if rec.id is not None:
        out["id"] = rec.id
    out.update(fields)
    return out


def _score_group(reward_fn: Any, records: list[Record]) -> list[dict[str, Any]]:
    """Score records of one format in one call; raises the reward function's error."""
    prompts = [r.prompt for r in records]
    completions = [r.completion for r in records]
    process = getattr(reward_fn, "kind", None) == "process"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if process:
            rewards, steps = reward_fn(prompts, completions, return_steps=True)
        else:
            rewards, steps = reward_fn(prompts, completions), None
    reason = "the reward model cannot score this input"
    for w in caught:
        if "cannot be scored" in str(w.message):
            reason = f"{reason} (see warning: {w.message})"
            print(f"warning: {w.message}", file=sys.stderr)
    results = []
    for i, (rec, reward) in enumerate(zip(records, rewards, strict=True)):
        fields: dict[str, Any] = {"score": reward}
        if process:
            fields["steps"] = steps[i] if steps is not None else None
        if reward is None:
            fields["error"] = reason
        results.append(_result(rec, **fields))
    return results


def _score_or_isolate(reward_fn: Any, group: list[Record], skip_errors: bool) -> list[dict[str, Any]]:
    try:
        return _score_group(reward_fn, group)
    except ValueError as exc:  # bad input (RewardInputError): find the line it comes from
        if len(group) > 1:
            results: list[dict[str, Any]] = []
            for rec in group:
                results.extend(_score_or_isolate(reward_fn, [rec], skip_errors))
            return results
        if not skip_errors:
            raise ScoreInputError(group[0].line, str(exc)) from exc
        return [_result(group[0], score=None, error=str(exc))]


def score_records(reward_fn: Any, records: list[Record], *, skip_errors: bool) -> list[dict[str, Any]]:
    """Results for ``records`` in input order (standard and conversational records are scored in separate
    calls). When a call rejects its input, the records are retried one by one to find the bad line, whose
    error is raised (naming the line) or, with ``skip_errors``, written as an ``error`` field. Any other
    failure (a server that cannot be reached...) is raised as it is."""
    by_line: dict[int, dict[str, Any]] = {}
    for conversational in (False, True):
        group = [r for r in records if r.conversational == conversational]
        if group:
            for res in _score_or_isolate(reward_fn, group, skip_errors):
                by_line[res["line"]] = res
    return [by_line[r.line] for r in records]


def score_stream(
    reward_fn: Any,
    lines: Iterable[str],
    out: IO[str],
    *,
    batch_size: int = 64,
    skip_errors: bool = False,
    progress: Any = None,
) -> dict[str, int]:
    """Read JSONL ``lines``, score them ``batch_size`` at a time and write one JSON line per input line.

    Only one batch is held in memory. Returns counts: ``lines`` (non-blank), ``scored`` and ``errors``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    counts = {"lines": 0, "scored": 0, "errors": 0}
    pending: list[Record | dict[str, Any]] = []  # a Record to score, or an already-made error result

    def flush() -> None:
        records = [p for p in pending if isinstance(p, Record)]
        scored = iter(score_records(reward_fn, records, skip_errors=skip_errors)) if records else iter(())
        for p in pending:
            res = next(scored) if isinstance(p, Record) else p
            if res.get("error") is not None:
                counts["errors"] += 1
            else:
                counts["scored"] += 1
            out.write(json.dumps(res, ensure_ascii=False) + "\n")
        out.flush()
        if progress is not None:
            progress.update(len(pending))
        pending.clear()

    for line_no, text in enumerate(lines, start=1):
        if not text.strip():
            if progress is not None:
                progress.update(1)
            continue
        counts["lines"] += 1
        try:
            pending.append(parse_record(text, line_no))
        except ScoreInputError as exc:
            if not skip_errors:
                raise
            pending.append({"line": line_no, "score": None, "error": exc.reason})
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    return counts


def count_lines(path: str) -> int | None:
    """Number of lines of a regular file (read in chunks, constant memory), else ``None``."""
    if path == "-" or not os.path.isfile(path):
        return None
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def build_reward_function(args: argparse.Namespace) -> Any:
    """The :class:`~rlhf_rewards.reward.RewardFunction` for ``--model``/``--default``/``--url``."""
    from rlhf_rewards.reward import RewardFunction

    kwargs: dict[str, Any] = {
        "kind": args.kind,
        "step_separator": args.step_separator,
        "step_aggregation": args.step_aggregation,
        "truncate": args.truncate,
    }
    if args.url:
        from rlhf_rewards.workers.remote import RemoteWorker

        return RewardFunction(RemoteWorker(args.url, api_key=args.api_key), **kwargs)
    if args.model:
        source = args.model
    else:
        from rlhf_rewards.assets import default_model_path

        source = default_model_path(args.default or "outcome")
    llm_kwargs = {"dtype": args.dtype}
    if args.device:
        llm_kwargs["device"] = args.device
    return RewardFunction(source, llm_kwargs=llm_kwargs, **kwargs)


def _open_input(path: str) -> IO[str]:
    if path == "-":
        return sys.stdin
    return open(path, encoding="utf-8")


def run(args: argparse.Namespace) -> int:
    """Score ``args.input`` into ``args.output``; returns the exit code (1 on a bad line without --skip-errors)."""
    if args.batch_size < 1:
        print(
            f"rlhf-rewards score: error: --batch-size must be at least 1, got {args.batch_size}",
            file=sys.stderr,
        )
        return 2
    if args.input != "-" and not os.path.isfile(args.input):
        print(f"rlhf-rewards score: error: no such input file: {args.input}", file=sys.stderr)
        return 2
    reward_fn = build_reward_function(args)
    total = count_lines(args.input)
    out: IO[str] = sys.stdout if args.output == "-" else open(args.output, "w", encoding="utf-8")  # noqa: SIM115
    src = _open_input(args.input)
    bar = tqdm(
        total=total,
        unit="line",
        desc="scoring",
        file=sys.stderr,
        disable=args.no_progress,
        dynamic_ncols=True,
    )
    try:
        counts = score_stream(
            reward_fn,
            _lines(src),
            out,
            batch_size=args.batch_size,
            skip_errors=args.skip_errors,
            progress=bar,
        )
    except ScoreInputError as exc:
        bar.close()
        print(f"rlhf-rewards score: error: {exc}", file=sys.stderr)
        return 1
    finally:
        bar.close()
        if src is not sys.stdin:
            src.close()
        if out is not sys.stdout:
            out.close()
        close = getattr(reward_fn, "close", None)
        if callable(close):
            close()
    summary = f"scored {counts['scored']} of {counts['lines']} line(s)"
    if counts["errors"]:
        summary += f'; {counts["errors"]} error(s) written as "error" fields'
    print(summary, file=sys.stderr)
    return 0


def _lines(src: IO[str]) -> Iterator[str]:
    yield from src


__all__ = [
    "Record",
    "ScoreInputError",
    "add_parser",
    "count_lines",
    "parse_record",
    "run",
    "score_records",
    "score_stream",
]
