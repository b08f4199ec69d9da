"""The arithmetic task of the shipped models: data, held-out split and formats.

Shared by ``scripts/build_assets/`` (training data), :mod:`rlhf_rewards.assets.evaluation` and the
tests (held-out checks) and ``recipes/`` (the policy's prompts), so all of them agree on the task.

- **Facts**: ``A + B`` and ``A - B`` (``A >= B``) with ``A, B`` in 0..9: 155 facts, answers 0..18.
- **Outcome RM**: ``What is A + B?``; the completion is the answer as a number. Wrong answers are the
  mistakes people make: off by 1, 2 or 10, digits swapped, the result of the other operation (``A + B`` when
  asked ``A - B``), a neighbouring table entry (``A + (B + 1)``), or any other number in 0..18.
- **PRM**: a list of 2-4 facts to work out (``Work out 3 + 4, 6 + 2 and 9 - 5.``), answered one step per
  paragraph (``3 + 4 = 7``); a wrong step has a wrong result from the same mistakes.

**Held-out split** (why it is by wrong answer): small CPU-trained transformers do not learn multi-digit
carrying in minutes, so the models learn the 155 single-digit facts, and generalisation is tested on
mistakes they never saw: a wrong answer ``w`` to ``A op B`` is held out when ``crc32("A op B = w") % 4 == 0``
(about a quarter of them). Training never pairs a question with a held-out wrong answer, nor writes a step
with one; the held-out sets use only held-out wrong answers, so every preference pair and every wrong step
evaluated was never seen in training.
"""

from __future__ import annotations

import functools
import random
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

MAX_OPERAND = 9
OPS = ("+", "-")
#: Largest answer of any fact (9 + 9); wrong answers are drawn from 0..MAX_ANSWER.
MAX_ANSWER = 18
#: The step tag of the PRM (Qwen2.5-Math-PRM's ``<extra_0>``).
STEP_TAG = "<extra_0>"
#: Separator of steps in a PRM completion before tagging (``RewardFunction``'s default ``step_separator``).
STEP_SEPARATOR = "\n\n"
#: Words of the off-format answers (chatter instead of a number) that the outcome RM learns to rank last.
CHATTER_WORDS = (
    "the",
    "answer",
    "is",
    "maybe",
    "hmm",
    "I",
    "think",
    "so",
    "not",
    "sure",
    "let",
    "me",
    "see",
    "well",
    "it",
    "a",
    "number",
    "yes",
    "no",
    "ok",
)


def apply(x: int, op: str, y: int) -> int:
    """``x op y``."""
    if op == "+":
        return x + y
    if op == "-":
        return x - y
    raise ValueError(f"unknown operation {op!r}; expected one of {OPS}")


@functools.cache
def facts() -> tuple[tuple[int, str, int], ...]:
    """Every ``(a, op, b)`` of the task (``a >= b`` for ``-``)."""
    return tuple(
        (a, op, b)
        for op in OPS
        for a in range(MAX_OPERAND + 1)
        for b in range(MAX_OPERAND + 1)
        if not (op == "-" and a < b)
    )


def is_held_out(a: int, op: str, b: int, wrong: int) -> bool:
    """Whether the wrong answer ``wrong`` to ``a op b`` belongs to the held-out split (about 25%)."""
    return zlib.crc32(f"{a} {op} {b} = {wrong}".encode()) % 4 == 0


def question(a: int, op: str, b: int) -> str:
    """The outcome RM's question text."""
    return f"What is {a} {op} {b}?"


def _candidates(rng: random.Random, a: int, op: str, b: int, correct: int) -> Iterator[int]:
    """Plausible wrong answers to ``a op b``, most likely first, then any number."""
    others = [apply(a, o, b) for o in OPS if o != op and not (o == "-" and a < b)]
    kinds = [
        lambda: correct + rng.choice((-1, 1)),
        lambda: correct + rng.choice((-2, 2)),
        lambda: correct + rng.choice((-10, 10)),
        lambda: int(str(correct)[::-1]) if correct >= 10 else correct + 10,
        lambda: rng.choice(others) if others else rng.randint(0, MAX_ANSWER),
        lambda: apply(a, op, b + rng.choice((-1, 1))) if op != "-" else apply(a + rng.choice((-1, 1)), op, b),
        lambda: rng.randint(0, MAX_ANSWER),
    ]
    for _ in range(40):
        yield rng.choice(kinds)()
    while True:
        yield rng.randint(0, MAX_ANSWER)


def wrong_answer(rng: random.Random, a: int, op: str, b: int, *, held_out: bool) -> int:
    """A wrong answer to ``a op b`` in 0..MAX_ANSWER from the chosen split (never the correct one)."""
    correct = apply(a, op, b)
    for w in _candidates(rng, a, op, b, correct):
        if w != correct and 0 <= w <= MAX_ANSWER and is_held_out(a, op, b, w) == held_out:
            return w
    raise AssertionError("unreachable: the candidate stream is infinite")


def chatter(rng: random.Random, max_words: int = 4) -> str:
    """An off-format answer: 1..``max_words`` words and no number (what an untrained policy rambles)."""
    return " ".join(rng.choice(CHATTER_WORDS) for _ in range(rng.randint(1, max_words)))


# ----------------------------------------------------------------------------------------------- outcome RM
@dataclass(frozen=True)
class OutcomeExample:
    """One preference pair: ``prompt`` answered correctly (``chosen``) and wrongly (``rejected``)."""

    a: int
    op: str
    b: int
    chosen: str
    rejected: str

    @property
    def prompt(self) -> str:
        """The question."""
        return question(self.a, self.op, self.b)


def outcome_examples(seed: int, n: int, *, held_out: bool) -> list[OutcomeExample]:
    """``n`` preference pairs whose wrong answer is from the chosen split, reproducible from ``seed``."""
    rng = random.Random(seed)
    table = facts()
    out = []
    for _ in range(n):
        a, op, b = rng.choice(table)
        out.append(
            OutcomeExample(
                a, op, b, str(apply(a, op, b)), str(wrong_answer(rng, a, op, b, held_out=held_out))
            )
        )
    return out


def questions(n: int, seed: int = 0) -> list[str]:
    """``n`` questions of the outcome task's training split, reproducible from ``seed``: the prompts GRPO trains
    the shipped policy on in ``recipes/demo.py`` and in the recipes' ``--shipped_models`` runs."""
    return [ex.prompt for ex in outcome_examples(seed, n, held_out=False)]


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
        """Whether ``x op y == z``."""
        return apply(self.x, self.op, self.y) == self.z

    @property
    def text(self) -> str:
        """The step as written: ``x op y = z``."""
        return f"{self.x} {self.op} {self.y} = {self.z}"


@dataclass(frozen=True)
class ProcessExample:
    """A multi-step solution (one fact per step), with per-step correctness."""

    steps: tuple[Step, ...]

    @property
    def prompt(self) -> str:
        """The task: ``Work out 3 + 4, 6 + 2 and 9 - 5.``"""
        parts = [f"{s.x} {s.op} {s.y}" for s in self.steps]
        return f"Work out {', '.join(parts[:-1])} and {parts[-1]}."

    @property
    def labels(self) -> list[bool]:
        """Per-step correctness."""
        return [s.correct for s in self.steps]

    def completion(self, separator: str = STEP_SEPARATOR) -> str:
        """The solution as a policy would write it: steps joined by ``separator``."""
        return separator.join(s.text for s in self.steps)

    def tagged_completion(self) -> str:
        """Qwen2.5-Math-PRM's layout: every step followed by ``<extra_0>``."""
        return "".join(s.text + STEP_TAG for s in self.steps)


def process_examples(
    seed: int, n: int, *, held_out: bool, min_steps: int = 2, max_steps: int = 4, error_rate: float = 0.4
) -> list[ProcessExample]:
    """``n`` solutions of ``min_steps..max_steps`` steps; each step is wrong with probability ``error_rate``,
    with a wrong result from the chosen split (reproducible from ``seed``)."""
    if not 1 <= min_steps <= max_steps:
        raise ValueError(f"need 1 <= min_steps <= max_steps, got {min_steps} and {max_steps}.")
    rng = random.Random(seed)
    table = facts()
    out = []
    for _ in range(n):
        steps = []
        for _ in range(rng.randint(min_steps, max_steps)):
            x, op, y = rng.choice(table)
            z = apply(x, op, y)
            if rng.random() < error_rate:
                z = wrong_answer(rng, x, op, y, held_out=held_out)
            steps.append(Step(x, op, y, z))
        out.append(ProcessExample(tuple(steps)))
    return out


# ------------------------------------------------------------------------------------------------ tokenizer
def tokenizer_corpus(seed: int = 0, n: int = 4000) -> Iterator[str]:
    """Text to train the shared tokenizer on: task text, chatter and a little general English."""
    rng = random.Random(seed)
    general = [
        "The quick brown fox jumps over the lazy dog.",
        "Reward models score completions for reinforcement learning from human feedback.",
        "Hello, my name is Ada and I like mathematics, poetry and long walks.",
        "You are a helpful assistant. Answer the question.",
        "The answer is correct. The answer is wrong. Let us check each step.",
        "Questions and answers, user and assistant, system prompts and completions.",
        " ".join(CHATTER_WORDS),
    ]
    for ex in outcome_examples(seed, n // 2, held_out=False):
        yield f"{ex.prompt} {ex.chosen} {ex.rejected}"
    for ex in process_examples(seed + 1, n // 4, held_out=False):
        yield ex.prompt + " " + ex.completion()
    for _ in range(n // 10):
        yield rng.choice(general)


__all__ = [
    "CHATTER_WORDS",
    "MAX_ANSWER",
    "MAX_OPERAND",
    "OPS",
    "STEP_SEPARATOR",
    "STEP_TAG",
    "OutcomeExample",
    "ProcessExample",
    "Step",
    "apply",
    "chatter",
    "facts",
    "is_held_out",
    "outcome_examples",
    "process_examples",
    "question",
    "questions",
    "tokenizer_corpus",
    "wrong_answer",
]
