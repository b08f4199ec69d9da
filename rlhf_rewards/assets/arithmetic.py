"""The arithmetic task of the embedded default reward models: data, held-out split and formats.

Shared by ``recipes/train_reward_models.py`` (training data), the tests (held-out checks) and
``recipes/demo.py`` (the policy's prompts), so all three agree on the task.

- **Outcome RM**: ``What is A + B?`` / ``What is A - B?`` with ``A, B`` in 0..99 (``A >= B`` for ``-``). The
  completion is the answer as a number. Wrong answers are near misses: off by 1, 2, 9, 10 or 11, a dropped
  or extra carry, a digit swap, one changed digit.
- **PRM**: a chain of two-digit steps, ``x + y = z`` or ``x - y = z`` with every number in 0..99, each step
  starting from the previous step's result as written. A step is correct when its equation is true; a wrong
  step has a near-miss result, and the chain continues from that (wrong) number.

**Held-out split**: an unordered operand pair ``{x, y}`` is held out when ``crc32("x,y") % 10 == 0``
(about 10% of the pairs). Training never contains a question or step with a held-out pair, in either order
or with either operation; evaluation uses only held-out pairs.
"""

from __future__ import annotations

import functools
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

MAX_OPERAND = 99
OPS = ("+", "-")
#: The step tag of the PRM (Qwen2.5-Math-PRM's ``<extra_0>``).
STEP_TAG = "<extra_0>"
#: Separator of steps in a PRM completion before tagging (``RewardFunction``'s default ``step_separator``).
STEP_SEPARATOR = "\n\n"


@functools.lru_cache(maxsize=None)
def is_held_out(x: int, y: int) -> bool:
    """Whether the unordered operand pair ``{x, y}`` belongs to the held-out split (about 10%)."""
    lo, hi = min(x, y), max(x, y)
    return zlib.crc32(f"{lo},{hi}".encode()) % 10 == 0


def apply(x: int, op: str, y: int) -> int:
    """``x op y``."""
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    raise ValueError(f"unknown operation {op!r}")


def question(a: int, op: str, b: int) -> str:
    """The outcome RM's question text."""
    return f"What is {a} {op} {b}?"


def near_miss(rng: random.Random, a: int, op: str, b: int, correct: int, *, low: int = 0,
              high: int | None = None) -> int:
    """A plausible wrong answer to ``a op b`` (never ``correct``, always in ``[low, high]``)."""
    for _ in range(100):
        kind = rng.randrange(8)
        if kind == 0:
            wrong = correct + rng.choice((-1, 1))
        elif kind == 1:
            wrong = correct + rng.choice((-2, 2))
        elif kind == 2:
            wrong = correct + rng.choice((-10, 10))
        elif kind == 3:
            wrong = correct + rng.choice((-11, -9, 9, 11))
        elif kind == 4:  # dropped or extra carry / borrow
            carry = (a % 10 + b % 10 >= 10) if op == "+" else (a % 10 < b % 10)
            if op == "+":
                wrong = correct - 10 if carry else correct + 10
            else:
                wrong = correct + 10 if carry else correct - 10
        elif kind == 5:  # digits swapped
            s = str(correct)
            wrong = int(s[::-1]) if len(s) > 1 else correct + 10 * rng.randint(1, 9)
        elif kind == 6:  # units digit changed
            wrong = correct - correct % 10 + rng.randrange(10)
        else:  # tens digit changed
            tens = (correct // 10) % 10
            wrong = correct + 10 * (rng.randrange(10) - tens)
        if wrong != correct and wrong >= low and (high is None or wrong <= high):
            return wrong
    return correct + 1 if (high is None or correct + 1 <= high) else correct - 1


def operand_pairs(op: str, *, held_out: bool) -> list[tuple[int, int]]:
    """All ``(a, b)`` of ``op`` in the split (``a >= b`` for ``-``)."""
    pairs = []
    for a in range(MAX_OPERAND + 1):
        for b in range(MAX_OPERAND + 1):
            if op == "-" and a < b:
                continue
            if is_held_out(a, b) == held_out:
                pairs.append((a, b))
    return pairs


# ----------------------------------------------------------------------------------------------- outcome RM
@dataclass(frozen=True)
class OutcomeExample:
    """One preference pair: ``prompt`` answered correctly (``chosen``) and with a near miss (``rejected``)."""

    a: int
    op: str
    b: int
    chosen: str
    rejected: str

    @property
    def prompt(self) -> str:
        return question(self.a, self.op, self.b)


def outcome_examples(seed: int, n: int, *, held_out: bool) -> list[OutcomeExample]:
    """``n`` preference pairs over the chosen split, reproducible from ``seed``."""
    rng = random.Random(seed)
    pools = {op: operand_pairs(op, held_out=held_out) for op in OPS}
    out = []
    for _ in range(n):
        op = rng.choice(OPS)
        a, b = rng.choice(pools[op])
        c = apply(a, op, b)
        out.append(OutcomeExample(a, op, b, str(c), str(near_miss(rng, a, op, b, c))))
    return out


#: Words of the off-format answers (chatter instead of a number) that the outcome RM learns to rank last.
CHATTER_WORDS = ("the", "answer", "is", "maybe", "hmm", "I", "think", "so", "not", "sure", "let", "me", "see",
                 "well", "it", "a", "number", "yes", "no", "ok")


def chatter(rng: random.Random, max_words: int = 4) -> str:
    """An off-format answer: 1..``max_words`` words and no number (what an untrained policy rambles)."""
    return " ".join(rng.choice(CHATTER_WORDS) for _ in range(rng.randint(1, max_words)))


def render_outcome(prompt: str, answer: str, fmt: str) -> dict:
    """An input in TRL's formats: ``standard`` (``prompt`` + ``" " + answer``) or ``conversational``."""
    if fmt == "standard":
        return {"prompt": prompt, "completion": " " + answer}
    if fmt == "conversational":
        return {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": answer}]}
    raise ValueError(fmt)


# ----------------------------------------------------------------------------------------------------- PRM
@dataclass(frozen=True)
class Step:
    """One step ``x op y = z`` and whether it is right."""

    x: int
    op: str
    y: int
    z: int

    @property
    def correct(self) -> bool:
        return apply(self.x, self.op, self.y) == self.z

    @property
    def text(self) -> str:
        return f"{self.x} {self.op} {self.y} = {self.z}"


@dataclass(frozen=True)
class ProcessExample:
    """A multi-step solution to a chain question, with per-step correctness."""

    start: int
    moves: tuple[tuple[str, int], ...]
    steps: tuple[Step, ...]

    @property
    def prompt(self) -> str:
        words = {"+": "add", "-": "subtract"}
        parts = ", then ".join(f"{words[op]} {y}" for op, y in self.moves)
        return f"Start with {self.start}, {parts}. What is the result?"

    @property
    def labels(self) -> list[bool]:
        return [s.correct for s in self.steps]

    def completion(self, separator: str = STEP_SEPARATOR) -> str:
        """The solution as a policy would write it: steps joined by ``separator``."""
        return separator.join(s.text for s in self.steps)

    def tagged_completion(self) -> str:
        """Qwen2.5-Math-PRM's layout: every step followed by ``<extra_0>``."""
        return "".join(s.text + STEP_TAG for s in self.steps)


def process_examples(seed: int, n: int, *, held_out: bool, min_steps: int = 2, max_steps: int = 4,
                     error_rate: float = 0.35) -> list[ProcessExample]:
    """``n`` chains whose every step's operand pair lies in the chosen split (reproducible from ``seed``).

    Each step is wrong with probability ``error_rate`` (a near-miss result); the next step starts from the
    result as written. In the held-out split, steps are drawn so that every pair ``{x, y}`` is held out.
    """
    rng = random.Random(seed)
    moves_from = _moves_from(held_out)
    out: list[ProcessExample] = []
    while len(out) < n:
        k = rng.randint(min_steps, max_steps)
        x = rng.randint(0, MAX_OPERAND)
        start = x
        moves, steps = [], []
        for _ in range(k):
            choices = moves_from[x]
            if not choices:
                break
            op, y = rng.choice(choices)
            z = apply(x, op, y)
            if rng.random() < error_rate:
                z = near_miss(rng, x, op, y, z, low=0, high=MAX_OPERAND)
            moves.append((op, y))
            steps.append(Step(x, op, y, z))
            x = z
        if len(steps) >= min_steps:
            out.append(ProcessExample(start, tuple(moves), tuple(steps)))
    return out


@functools.lru_cache(maxsize=2)
def _moves_from(held_out: bool) -> tuple[tuple[tuple[str, int], ...], ...]:
    """For each running value x: the steps ``(op, y)`` that keep the result in 0..99 and ``{x, y}`` in the split."""
    table = []
    for x in range(MAX_OPERAND + 1):
        table.append(tuple(
            (op, y)
            for op in OPS
            for y in range(MAX_OPERAND + 1)
            if 0 <= apply(x, op, y) <= MAX_OPERAND and is_held_out(x, y) == held_out and not (op == "-" and y == 0)
        ))
    return tuple(table)


# ------------------------------------------------------------------------------------------------ tokenizer
def tokenizer_corpus(seed: int = 0, n: int = 4000) -> Iterator[str]:
    """Text to train the shared tokenizer on: task text plus a little general English."""
    rng = random.Random(seed)
    general = [
        "The quick brown fox jumps over the lazy dog.",
        "Reward models score completions for reinforcement learning from human feedback.",
        "Hello, my name is Ada and I like mathematics, poetry and long walks.",
        "You are a helpful assistant. Answer the question.",
        "The answer is correct. The answer is wrong. Let us check each step.",
        "Questions and answers, user and assistant, system prompts and completions.",
    ]
    for ex in outcome_examples(seed, n // 2, held_out=False):
        yield f"{ex.prompt} {ex.chosen} {ex.rejected}"
    for ex in process_examples(seed + 1, n // 4, held_out=False):
        yield ex.prompt + " " + ex.completion()
    for _ in range(n // 10):
        yield rng.choice(general)


__all__ = [
    "MAX_OPERAND",
    "OPS",
    "STEP_SEPARATOR",
    "STEP_TAG",
    "OutcomeExample",
    "ProcessExample",
    "Step",
    "CHATTER_WORDS",
    "apply",
    "chatter",
    "is_held_out",
    "near_miss",
    "operand_pairs",
    "outcome_examples",
    "process_examples",
    "question",
    "render_outcome",
    "tokenizer_corpus",
]
