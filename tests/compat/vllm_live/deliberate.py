"""The differences from vLLM 0.32 this project keeps on purpose, one key each.

A differential test that finds a difference names its key here; a difference without a key is a mismatch
and fails the test. Each value is ``"<what vLLM does> || <what this project does, and why>"`` (the two
columns of the table the run writes). With strict compatibility (``LLM(..., strict_vllm_compat=True)``,
``rlhf-rewards serve --strict-vllm-compat``) every one of these requests gets vLLM's answer instead; the
differential suite checks that too.
"""

from __future__ import annotations

DELIBERATE: dict[str, str] = {
    "mixed-lora-batch": (
        "a batch mixing adapter rows with base-model rows scores the base rows wrong on the CPU build "
        "(-1.06 where the base model alone gives -0.46) || each row gets its own adapter or none, as peft "
        "computes it (the test checks peft's own numbers); kept, and a known vLLM difference"
    ),
}
