"""The one byte-level BPE tokenizer builder behind every local checkpoint (shipped assets, tests, benchmarks).

It lives with the asset builder, which needs it to rebuild the shipped models' tokenizer; the test tooling
(``tests/support/checkpoints.py``) and the benchmark model (``benchmarks/workloads.py``) import it from here,
so no script imports test code. :func:`build_bpe_tokenizer` trains a ``tokenizers`` BPE model on a given corpus and saves it as a transformers
fast tokenizer. Its arguments cover what each caller needs: the tiny test checkpoints (the default corpus and
arguments), the benchmark model (a large synthetic vocabulary, no chat template) and the shipped arithmetic
models (``split_digits=True``: every digit is its own token). The same arguments give byte-identical files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

#: The pad token every builder uses (never listed among the additional special tokens).
PAD_TOKEN = "<pad>"
EOS_TOKEN = "<|endoftext|>"
STEP_TAG = "<extra_0>"
SPECIAL_TOKENS = [EOS_TOKEN, "<|im_start|>", "<|im_end|>", STEP_TAG, PAD_TOKEN, "<|reward|>"]

# A ChatML template (the Qwen family's), so conversational inputs render without remote code.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: The tiny checkpoints' training text: a few sentences of the kinds tests score (repeated 4 times).
TINY_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Reward models score completions for reinforcement learning from human feedback.",
    "What is 12 + 7? The answer is 19. Step one: add the units. Step two: carry the tens.",
    "Hello, my name is Ada and I like mathematics, poetry and long walks.",
    "Process reward models judge every reasoning step; outcome reward models judge the final answer.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))",
    "Solve 3 * 4 = 12. Then 12 - 5 = 7. So the result is 7.",
    "A policy is trained with GRPO, RLOO or PPO using rewards from a separate model.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 100 1000.",
    "Questions and answers, user and assistant, system prompts and completions.",
] * 4


def build_bpe_tokenizer(
    path: str | os.PathLike[str],
    corpus: Iterable[str] | None = None,
    *,
    vocab_size: int = 400,
    special_tokens: Sequence[str] = SPECIAL_TOKENS,
    split_digits: bool = False,
    padding_side: str = "right",
    pad_token: str | None = PAD_TOKEN,
    chat_template: str | None = CHATML_TEMPLATE,
) -> Path:
    """Train a byte-level BPE tokenizer on ``corpus`` and save it as a transformers fast tokenizer in ``path``.

    Args:
        path: Output folder (created).
        corpus: Training texts. Default :data:`TINY_CORPUS`.
        vocab_size: Target vocabulary size, special tokens and the 256 byte symbols included.
        special_tokens: Added first, in this order (ids 0, 1, ...); :data:`EOS_TOKEN` must be among them. All
            but the EOS and pad tokens become ``additional_special_tokens``.
        split_digits: Pre-tokenize every digit alone, so numbers are spelled digit by digit.
        padding_side: ``"right"`` or ``"left"``.
        pad_token: The pad token, or ``None`` for a tokenizer without one.
        chat_template: Jinja chat template saved with the tokenizer, or ``None`` for none.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if EOS_TOKEN not in special_tokens:
        raise ValueError(
            f"special_tokens must include the EOS token {EOS_TOKEN!r}, got {list(special_tokens)}."
        )
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}.")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if split_digits
        else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(special_tokens),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(TINY_CORPUS if corpus is None else corpus), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        pad_token=pad_token,
        padding_side=padding_side,
        additional_special_tokens=[t for t in special_tokens if t not in (EOS_TOKEN, PAD_TOKEN)],
    )
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(path)
    return path


__all__ = [
    "CHATML_TEMPLATE",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "STEP_TAG",
    "TINY_CORPUS",
    "build_bpe_tokenizer",
]
