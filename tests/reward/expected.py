"""Reference rewards computed directly with ``LLM.encode``, written independently of ``rlhf_rewards.reward``."""

from __future__ import annotations

import math

from rlhf_rewards import LLM, PoolingParams
from tests.support.checkpoints import STEP_TAG

RAW = PoolingParams(use_activation=False)


def close(a, b, tol=1e-5) -> bool:
    """Element-wise closeness of two reward lists (``None``/NaN only matches ``None``/NaN)."""

    def missing(x):
        return x is None or (isinstance(x, float) and math.isnan(x))

    return len(a) == len(b) and all(
        (missing(x) and missing(y))
        or (not missing(x) and not missing(y) and math.isclose(x, y, rel_tol=tol, abs_tol=tol))
        for x, y in zip(a, b, strict=True)
    )


def outcome_expected(llm: LLM, inputs: list) -> list[float]:
    """Raw logit of label 0 at the last token, for texts or ``{"prompt_token_ids": ...}`` inputs."""
    return [
        float(o.outputs.data[0]) for o in llm.encode(inputs, RAW, pooling_task="classify", use_tqdm=False)
    ]


def tagged(completion: str) -> str:
    """Qwen2.5-Math-PRM layout: the step tag after every non-empty step, separators dropped."""
    steps = [s.strip() for s in completion.replace(STEP_TAG, "").split("\n\n") if s.strip()]
    return "".join(s + STEP_TAG for s in steps) or STEP_TAG


def prm_steps_expected(llm: LLM, inputs: list, column: int = 0) -> list[list[float]]:
    """Step scores (STEP pooling, the configured activation) of a PRM."""
    outs = llm.encode(inputs, pooling_task="token_classify", use_tqdm=False)
    return [o.outputs.data[:, column].tolist() for o in outs]


def outcome_rewards(llm: LLM, prompts: list, completions: list) -> list[float]:
    """What an outcome RM gives prompt + completion in either TRL format."""
    if isinstance(prompts[0], str):
        return outcome_expected(llm, [p + c for p, c in zip(prompts, completions, strict=True)])
    ids = llm.render_chat([list(p) + list(c) for p, c in zip(prompts, completions, strict=True)])
    return outcome_expected(llm, [{"prompt_token_ids": i} for i in ids])


def prm_rewards(llm: LLM, prompts: list, completions: list) -> list[float]:
    """``min`` of a PRM's step scores over prompt + tagged completion in either TRL format."""
    if isinstance(prompts[0], str):
        inputs = [p + tagged(c) for p, c in zip(prompts, completions, strict=True)]
    else:
        convs = [
            list(p) + [{"role": "assistant", "content": tagged(c[0]["content"] if c else "")}]
            for p, c in zip(prompts, completions, strict=True)
        ]
        inputs = [{"prompt_token_ids": i} for i in llm.render_chat(convs)]
    return [min(s) for s in prm_steps_expected(llm, inputs)]
