"""Training data of the shipped models: the tokenizer, the token layouts ``RewardFunction`` sends, and the
batches of each stage, all generated from the seed by :mod:`rlhf_rewards.assets.arithmetic`."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from rlhf_rewards.assets import arithmetic as ar

from .tokenizer import build_bpe_tokenizer

#: Vocabulary size of the shared tokenizer.
VOCAB_SIZE = 512


def build_tokenizer(path: Path, seed: int) -> Path:
    """The byte-level BPE tokenizer of every shipped model (digits are single tokens, ChatML template), saved
    to ``path``: trained on the arithmetic corpus of ``seed`` and the chatter words."""
    corpus = list(ar.tokenizer_corpus(seed))
    corpus += [" ".join(ar.CHATTER_WORDS)] * 50
    # Digits stay single tokens so every number is spelled digit by digit: arithmetic is learnable.
    return build_bpe_tokenizer(path, corpus, vocab_size=VOCAB_SIZE, split_digits=True)


def render(tokenizer: Any, prompt: str, completion: str, rng: random.Random) -> tuple[list[int], int]:
    """Token ids of ``prompt`` + ``completion`` in one of the layouts ``RewardFunction`` sends (standard text,
    the completion after a space, a newline or glued on; or the ChatML conversation), and where the
    completion starts."""
    if rng.random() < 0.25:
        head = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
        tail = completion.strip() + "<|im_end|>\n"
    else:
        head, tail = prompt, rng.choice((" ", " ", " ", "", "\n", "\n\n")) + completion.lstrip()
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    return head_ids + tokenizer(tail, add_special_tokens=False)["input_ids"], len(head_ids)


def pad_rows(rows: list[list[int]], value: int) -> torch.Tensor:
    """Right-pad ``rows`` with ``value`` into one tensor."""
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def lm_batch(tokenizer: Any, pairs: Sequence[tuple[list[int], int]]) -> dict[str, torch.Tensor]:
    """Causal-LM batch: loss on the completion (from the given start) and a final EOS."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    seqs = [ids + [eos] for ids, _ in pairs]
    labels = [[-100] * start + ids[start:] + [eos] for ids, start in pairs]
    return {
        "input_ids": pad_rows(seqs, pad),
        "attention_mask": pad_rows([[1] * len(x) for x in seqs], 0),
        "labels": pad_rows(labels, -100),
    }


def outcome_pairs(tokenizer: Any, seed: int, n: int) -> list[dict[str, list[int]]]:
    """``n`` tokenized preference pairs from the training split: 75% correct vs wrong, 15% correct vs
    chatter, 10% wrong vs chatter (a number beats chatter even when it is wrong)."""
    rng = random.Random(seed)
    rows = []
    for ex in ar.outcome_examples(seed, n, held_out=False):
        r = rng.random()
        if r < 0.75:
            chosen, rejected = ex.chosen, ex.rejected
        elif r < 0.9:
            chosen, rejected = ex.chosen, ar.chatter(rng)
        else:
            chosen, rejected = ex.rejected, ar.chatter(rng)
        # The same layout for both sides: the pair differs only in the answer.
        state = rng.getstate()
        chosen_ids, _ = render(tokenizer, ex.prompt, chosen, rng)
        rng.setstate(state)
        rejected_ids, _ = render(tokenizer, ex.prompt, rejected, rng)
        rows.append({"chosen_ids": chosen_ids, "rejected_ids": rejected_ids})
    return rows


def prm_batch(
    tokenizer: Any, examples: Sequence[ar.ProcessExample], rng: random.Random
) -> dict[str, torch.Tensor]:
    """Padded ids, attention mask, labels (1 right / 0 wrong at each ``<extra_0>``, -100 elsewhere) and
    ``answer_labels``: the digits of each step's *correct* result at the positions that predict the written
    result's digits (-100 elsewhere), for the auxiliary answer loss of :func:`train_prm`."""
    tag_id = tokenizer.convert_tokens_to_ids(ar.STEP_TAG)
    digit_ids = {tokenizer.convert_tokens_to_ids(str(d)): d for d in range(10)}
    seqs, labels, answers = [], [], []
    for ex in examples:
        ids, _ = render(tokenizer, ex.prompt, ex.tagged_completion(), rng)
        lab = [-100] * len(ids)
        ans = [-100] * len(ids)
        tags = [i for i, t in enumerate(ids) if t == tag_id]
        if len(tags) != len(ex.steps):
            raise AssertionError(f"{len(tags)} step tags for {len(ex.steps)} steps in {ex}")
        for pos, step in zip(tags, ex.steps, strict=True):
            lab[pos] = int(step.correct)
            written, correct = str(step.z), str(ar.apply(step.x, step.op, step.y))
            first = pos - len(written)
            if [digit_ids.get(t) for t in ids[first:pos]] != [int(c) for c in written]:
                raise AssertionError(f"the result {written} of {step.text} is not spelled digit by digit")
            # The position before each written digit predicts the correct digit while the written prefix
            # still agrees with the correct result: the backbone must hold the answer when it reaches the tag.
            for k, digit in enumerate(correct):
                if k > len(written) or written[:k] != correct[:k]:
                    break
                ans[first - 1 + k] = int(digit)
        seqs.append(ids)
        labels.append(lab)
        answers.append(ans)
    return {
        "input_ids": pad_rows(seqs, tokenizer.pad_token_id),
        "attention_mask": pad_rows([[1] * len(x) for x in seqs], 0),
        "labels": pad_rows(labels, -100),
        "answer_labels": pad_rows(answers, -100),
    }


def policy_example(ex: ar.OutcomeExample, rng: random.Random) -> tuple[str, str]:
    """The policy's SFT target for a question: the correct number (40%), a wrong one (20%) or chatter (40%),
    so GRPO has both the format and the facts to improve."""
    r = rng.random()
    return ex.prompt, " " + (ex.chosen if r < 0.4 else ex.rejected if r < 0.6 else ar.chatter(rng))
