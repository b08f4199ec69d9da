"""The ``judge`` reward kind: a causal LM asked a question about each completion, read through its answer token.

``RewardFunction(judge_model, judge=JudgeConfig(template="...{prompt}...{completion}... Yes or No?"))``: each
completion is put into the template, and its reward is the probability the judge gives the first label
(``"Yes"``) as the next token, softmax over the labels' logits (vLLM's ``/generative_scoring`` with
``apply_softmax=True``), times ``reward_scale`` plus ``reward_offset``. With ``label_values`` the reward is
the expected value ``sum_i p(label_i) * value_i`` instead (e.g. labels ``"1".."5"`` with values 1..5).

- **standard format**: the judge's input is ``template.format(prompt=prompt, completion=completion)``,
  tokenized with the judge's tokenizer (plus its special tokens, e.g. a BOS, with ``add_special_tokens``);
- **conversational format**: the template fills one user message (``{prompt}``: the prompt messages'
  contents, ``{completion}``: the completion's, each joined by blank lines), after an optional
  ``system_prompt``, rendered with the *judge's* chat template (or ``chat_template``) with the generation
  prompt, so the label is read where the judge's answer would start.

One call scores the whole batch with ONE ``generative_score`` request (query: only the special tokens; items:
the inputs, texts or the rendered conversations' token ids). The engine arranges the inputs in a prefix tree, so a rubric shared by
every input, and each GRPO group's prompt shared by its completions, run once
(:mod:`rlhf_rewards.engine.prefix_tree`). An input longer than ``max_model_len - 1`` tokens gets reward
``None`` (vLLM's rule cuts its end, where the question is): conversations are checked before scoring, texts
by the length the worker reports (a remote server does not report it: keep judge inputs within the limit).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from rlhf_rewards.contract import ModelInfo
from rlhf_rewards.reward.calls import GenerativeScore, Plan, RenderChat, Tokenize
from rlhf_rewards.reward.formatting import require_chat_template
from rlhf_rewards.reward.judge_config import JudgeConfig
from rlhf_rewards.reward.plan import PairPlan
from rlhf_rewards.reward.readout import ScoreResult


def _text(messages: Sequence[dict[str, Any]]) -> str:
    return "\n\n".join(m["content"] for m in messages if isinstance(m.get("content"), str))


class JudgePlan(PairPlan):
    """The scoring plan of a judge reward function."""

    pooling_task = "generative_scoring"
    readout = None

    def __init__(self, config: Any, info: ModelInfo) -> None:
        self.config = config
        self.judge: JudgeConfig = config.judge
        self.info = info
        self._label_ids: list[int] | None = None

    def _pairs(
        self, fmt: str, prompts: Sequence[Any], completions: Sequence[Any], owner: str
    ) -> Plan[ScoreResult]:
        """One judge request for the whole call."""
        n = len(completions)
        judge = self.judge
        if fmt == "standard":
            inputs: list[Any] = [
                judge.template.format(prompt=p, completion=c)
                for p, c in zip(prompts, completions, strict=True)
            ]
            add_special = judge.add_special_tokens
        else:
            require_chat_template(self.config.chat_template, self.info.has_chat_template, owner, "judge")
            system = [{"role": "system", "content": judge.system_prompt}] if judge.system_prompt else []
            conversations = [
                [
                    *system,
                    {"role": "user", "content": judge.template.format(prompt=_text(p), completion=_text(c))},
                ]
                for p, c in zip(prompts, completions, strict=True)
            ]
            inputs = list(
                (yield RenderChat(conversations, self.config.chat_template, add_generation_prompt=True))
            )
            add_special = False  # the chat template writes its own special tokens
        labels = yield from self._labels(owner)
        limit = self.info.max_model_len - 1
        unscored: dict[int, str] = {}
        keep = []
        for i, x in enumerate(inputs):
            if not isinstance(x, str) and len(x) > limit:
                unscored[i] = f"{len(x)} tokens, over max_model_len - 1 = {limit}"
            else:
                keep.append(i)
        rewards: list[float | None] = [None] * n
        tokens = 0
        if keep:
            values = judge.label_values
            outputs = yield GenerativeScore(
                query="",
                items=[inputs[i] if isinstance(inputs[i], str) else list(inputs[i]) for i in keep],
                label_token_ids=labels,
                apply_softmax=judge.apply_softmax,
                add_special_tokens=add_special,
                lora_request=self.config.lora,
                all_labels=values is not None,
            )
            self._check_count(outputs, len(keep), owner)
            for i, out in zip(keep, outputs, strict=True):
                n_ids = len(out.prompt_token_ids) if out.prompt_token_ids is not None else None
                tokens += (
                    n_ids if n_ids is not None else (0 if isinstance(inputs[i], str) else len(inputs[i]))
                )
                if isinstance(inputs[i], str) and n_ids is not None and n_ids >= limit:
                    unscored[i] = (
                        f"{n_ids} tokens: cut at max_model_len - 1 = {limit}, the question may be lost"
                    )
                    continue
                if out.error is not None or not math.isfinite(out.score):
                    unscored[i] = out.error or "non-finite judge output"
                    continue
                score = (
                    out.score
                    if values is None
                    else sum(p * v for p, v in zip(out.label_probs, values, strict=True))
                )
                rewards[i] = self.config.reward_scale * score + self.config.reward_offset
        return ScoreResult(rewards, [None] * n, tokens, unscored)

    def token_ids(self, token_ids: Sequence[Sequence[int]], owner: str) -> Plan[ScoreResult]:
        """Refused: a judge's template needs the prompt and completion texts."""
        raise ValueError(
            f"{owner}: a judge scores prompts and completions (its template needs them), not token ids."
        )
        yield  # pragma: no cover - a generator, as every plan

    def _labels(self, owner: str) -> Plan[list[int]]:
        """The label token ids (texts tokenized once with the judge's tokenizer, each one token)."""
        if self._label_ids is None:
            texts = [lab for lab in self.judge.labels if isinstance(lab, str)]
            found: dict[str, list[int]] = {}
            if texts:
                ids = yield Tokenize(texts)
                found = dict(zip(texts, [list(x) for x in ids], strict=True))
            out = []
            for lab in self.judge.labels:
                if isinstance(lab, int):
                    out.append(lab)
                    continue
                if len(found[lab]) != 1:
                    raise ValueError(
                        f"{owner}: the judge label {lab!r} is {len(found[lab])} tokens {found[lab]} in the "
                        "judge's vocabulary; a label must be one token (try a leading space, e.g. "
                        "' Yes', or give token ids)."
                    )
                out.append(found[lab][0])
            self._label_ids = out
        return list(self._label_ids)


__all__ = ["JudgeConfig", "JudgePlan"]
