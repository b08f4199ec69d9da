"""Benchmark model and workloads, all built locally from fixed seeds (no network).

- The model: a Qwen3-style ``Qwen3ForSequenceClassification`` reward model (and a ``Qwen2ForTokenClassification``
  PRM with 2 labels, the shape of Qwen2.5-Math-PRM's head) with realistic CPU shapes: hidden 512, 4 layers,
  8 query / 4 key-value heads of 64, SwiGLU 1536, fp32, HF's default initialisation.
- The tokenizer: byte-level BPE trained on a synthetic vocabulary so one word is about one token, which
  makes text lengths controllable; the real chat/step special tokens are included.
- Workloads (token lengths are drawn, then rendered as text of that many words):
  - ``grpo``: 16 prompts x 8 completions; prompts 256-512 tokens; completions 16-512, long-tailed.
  - ``mixed``: 128 unrelated texts, 16-1024 tokens, long-tailed.
  - ``prm``: 8 problems x 8 sampled solutions, 3-12 steps each, in Qwen2.5-Math-PRM's chat format.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

CACHE_DIR = Path(
    os.environ.get("RLHF_REWARDS_BENCH_CACHE", Path(__file__).resolve().parents[1] / "outputs" / "bench")
)

STEP_TAG = "<extra_0>"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", STEP_TAG, "<pad>"]
PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class ModelShape:
    """Shape of the benchmark backbone."""

    hidden_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    head_dim: int = 64
    intermediate_size: int = 1536
    max_position_embeddings: int = 4096

    def config_fields(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Workload:
    """Texts to score. ``prompts``/``completions`` are set for the GRPO workload (TRL's inputs)."""

    name: str
    texts: list[str]
    prompts: list[str] | None = None
    completions: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------- tokenizer and model
def _words(n: int = 6000, seed: int = 1234) -> list[str]:
    rng = np.random.RandomState(seed)
    onsets = list("bcdfghjklmnprstvwz") + [
        "br",
        "ch",
        "cl",
        "dr",
        "fl",
        "gr",
        "pl",
        "pr",
        "sh",
        "st",
        "th",
        "tr",
    ]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "io"]
    codas = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st"]
    words: set[str] = set()
    while len(words) < n:
        syll = rng.randint(1, 4)
        words.add("".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(syll)))
    return sorted(words)


def build_tokenizer(path: Path, vocab_size: int = 8192) -> Path:
    """A byte-level BPE fast tokenizer (right padding, ``<pad>``, no chat template) over the synthetic words."""
    from scripts.build_assets.tokenizer import build_bpe_tokenizer

    words = _words()
    rng = np.random.RandomState(99)
    corpus = [" ".join(rng.choice(words, size=64)) for _ in range(3000)]
    return build_bpe_tokenizer(
        path, corpus, vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, chat_template=None
    )


def cached(name: str, key: Any, build: Callable[[Path], Any]) -> Path:
    """``CACHE_DIR/<name>-<hash of key>``, made once by ``build(folder)``: into a temporary folder first, then
    renamed into place, so a build cut short leaves nothing half-written and concurrent builders do not clash."""
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    path = CACHE_DIR / f"{name}-{digest}"
    if path.is_dir():
        return path
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    build(tmp)
    try:
        tmp.rename(path)
    except OSError:  # another process finished the same build first
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def benchmark_tokenizer() -> Path:
    """The benchmarks' tokenizer (:func:`build_tokenizer`), trained once and cached."""
    return cached("tokenizer", ["tokenizer", 8192], build_tokenizer)


def build_model(kind: str, shape: ModelShape, seed: int = 0) -> Path:
    """Build (once, cached by shape) the benchmark checkpoint; ``kind`` is ``"rm"`` or ``"prm"``.

    transformers' own initialisation (normal, std = initializer_range), norm weights perturbed, float32 (built
    by :func:`tests.support.checkpoints.build_model`).
    """
    from tests.support.checkpoints import build_model as build_checkpoint
    from tests.support.checkpoints import token_fields

    if kind not in ("rm", "prm"):
        raise ValueError(f"kind must be 'rm' or 'prm', got {kind!r}.")
    tokenizer = benchmark_tokenizer()
    fields = {
        **shape.config_fields(),
        **token_fields(tokenizer),
        "num_labels": 1 if kind == "rm" else 2,
        "tie_word_embeddings": False,
    }
    if kind == "rm":
        architecture, config_cls = "Qwen3ForSequenceClassification", "Qwen3Config"
    else:
        fields.pop("head_dim")  # Qwen2 configs have no such field: hidden_size / num_attention_heads
        architecture, config_cls = "Qwen2ForTokenClassification", "Qwen2Config"
    return cached(
        kind,
        [kind, shape.config_fields(), seed, 3],
        lambda path: build_checkpoint(
            architecture,
            path,
            fields,
            config_cls=config_cls,
            seed=seed,
            init="transformers",
            tokenizer_dir=tokenizer,
        ),
    )


# ---------------------------------------------------------------------- workloads
def _long_tail(
    rng: np.random.RandomState, n: int, low: int, high: int, median: float, sigma: float
) -> list[int]:
    """Log-normal lengths clipped to ``[low, high]``: most short, a few long."""
    x = rng.lognormal(mean=np.log(median), sigma=sigma, size=n)
    return [int(v) for v in np.clip(np.round(x), low, high)]


_WORDS_CACHE: dict[int, list[str]] = {}


def single_token_words(tok) -> list[str]:
    """Words ``w`` for which ``" " + w`` is exactly one token, so a text of n such words is n tokens."""
    key = id(tok)
    if key not in _WORDS_CACHE:
        candidates = sorted(
            t[1:] for t in tok.get_vocab() if t.startswith("\u0120") and t[1:].isalpha() and len(t) > 3
        )
        encoded = tok([" " + w for w in candidates], add_special_tokens=False)["input_ids"]
        _WORDS_CACHE[key] = [w for w, ids in zip(candidates, encoded, strict=True) if len(ids) == 1]
    return _WORDS_CACHE[key]


def _fit(tok, rng: np.random.RandomState, n_tokens: int) -> str:
    """Text of exactly ``n_tokens`` tokens, each word preceded by a space."""
    words = single_token_words(tok)
    return "".join(" " + words[i] for i in rng.randint(0, len(words), size=max(n_tokens, 1)))


def grpo_workload(
    tok, seed: int = 0, prompts: int = 16, group: int = 8, prompt_range: tuple[int, int] = (256, 512)
) -> Workload:
    """16 prompts x 8 completions: prompts 256-512 tokens, completions 16-512 long-tailed (median 96)."""
    rng = np.random.RandomState(seed)
    ps, cs = [], []
    prompt_lens = rng.randint(prompt_range[0], prompt_range[1] + 1, size=prompts)
    for i in range(prompts):
        prompt = "Question:" + _fit(tok, rng, int(prompt_lens[i]) - 5) + "\nAnswer:"
        for n in _long_tail(rng, group, 16, 512, median=96, sigma=0.9):
            ps.append(prompt)
            cs.append(_fit(tok, rng, n))
    texts = [p + c for p, c in zip(ps, cs, strict=True)]
    return Workload("grpo", texts, prompts=ps, completions=cs, meta={"prompts": prompts, "group": group})


def mixed_workload(tok, seed: int = 1, n: int = 128, low: int = 16, high: int = 1024) -> Workload:
    """128 unrelated texts of 16-1024 tokens, long-tailed (median 160)."""
    rng = np.random.RandomState(seed)
    texts = [_fit(tok, rng, m) for m in _long_tail(rng, n, low, high, median=160, sigma=1.0)]
    return Workload("mixed", texts)


def prm_workload(tok, seed: int = 2, problems: int = 8, samples: int = 8, min_steps: int = 3) -> Workload:
    """8 problems x 8 sampled solutions of 3-12 steps, rendered as Qwen2.5-Math-PRM's card does.

    Problems are 64-320 tokens; steps 8-96 tokens, long-tailed (median 32). Each conversation is
    ``system / user / assistant`` in ChatML with ``<extra_0>`` after every step.
    """
    rng = np.random.RandomState(seed)
    texts = []
    for _ in range(problems):
        problem = _fit(tok, rng, int(rng.randint(64, 321)))
        head = (
            f"<|im_start|>system\n{PRM_SYSTEM}<|im_end|>\n<|im_start|>user\n{problem}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        for _ in range(samples):
            steps = [
                _fit(tok, rng, m) for m in _long_tail(rng, int(rng.randint(min_steps, 13)), 8, 96, 32, 0.7)
            ]
            texts.append(head + STEP_TAG.join(steps) + STEP_TAG + "<|im_end|>\n")
    return Workload("prm", texts, meta={"problems": problems, "samples": samples})


def token_lengths(tok, texts: list[str]) -> list[int]:
    return [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]


__all__ = [
    "CACHE_DIR",
    "ModelShape",
    "STEP_TAG",
    "Workload",
    "benchmark_tokenizer",
    "build_model",
    "cached",
    "grpo_workload",
    "mixed_workload",
    "prm_workload",
    "single_token_words",
    "token_lengths",
]
