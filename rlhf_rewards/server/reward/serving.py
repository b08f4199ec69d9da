"""``POST /get_reward``: OpenRLHF's remote reward model API (``--reward.remote_url``, formerly ``--remote_rm_url``).

OpenRLHF 0.11 (``openrlhf.utils.agent.SingleTurnAgentExecutor``) sends one sample per request,
``{"query": [prompt + response decoded with skip_special_tokens=False], "prompts": [...], "labels": [...]}``,
and reads ``rewards``. Each query is scored as OpenRLHF's own server (``openrlhf/cli/serve_rm.py``) scores it:

- tokenized **without** adding special tokens (the decoded query already carries the BOS text of a
  BOS-adding tokenizer; adding another one would change the reward);
- truncated to ``--get-reward-max-len`` tokens (default ``max_model_len``) on the tokenizer's
  ``truncation_side``, as serve_rm's ``--max_len`` does, never refused for its length (OpenRLHF retries a
  refused sample 5 times and then trains on ``None``);
- the reward is the raw score: the last label's logit for a sequence classifier, the last token's score
  for a token reward model;
- a process reward model answers the aggregated step reward: the response (the query after its
  ``prompts`` entry, or the whole query without one) is split into steps and tagged exactly as
  :class:`~rlhf_rewards.reward.RewardFunction` does, and the step rewards are aggregated with
  ``--get-reward-step-aggregation`` (default ``min``, as ``RewardFunctionConfig``).

``labels`` are accepted and not used (the model scores the full text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from rlhf_rewards.contract import ModelInfo
from rlhf_rewards.pooling.step import step_score_column
from rlhf_rewards.reward.aggregation import AGGREGATIONS, aggregate_steps
from rlhf_rewards.reward.config import RewardFunctionConfig
from rlhf_rewards.reward.steps import tag_completion
from rlhf_rewards.server.base.api_utils import json_response, make_params
from rlhf_rewards.server.base.preprocess import prepare_prompts
from rlhf_rewards.server.base.serving import ServedModel
from rlhf_rewards.server.errors import APIError
from rlhf_rewards.server.reward.protocol import GetRewardRequest, GetRewardResponse

_DEFAULTS = RewardFunctionConfig()


@dataclass(frozen=True)
class GetRewardOptions:
    """The ``serve`` flags of ``/get_reward`` (kept on ``app.state.get_reward_options``).

    Args:
        max_len: Tokens kept per query (serve_rm's ``--max_len``); ``None``: the model's ``max_model_len``.
        step_aggregation: How a process reward model's step rewards become one reward (``min``, ``last``,
            ``mean``, ``prod``); default as ``RewardFunctionConfig.step_aggregation``.
        step_separator: What separates a response's steps; default as ``RewardFunctionConfig.step_separator``.
    """

    max_len: int | None = None
    step_aggregation: str = _DEFAULTS.step_aggregation  # type: ignore[assignment]
    step_separator: str = _DEFAULTS.step_separator

    def __post_init__(self) -> None:
        if self.max_len is not None and self.max_len < 1:
            raise ValueError(f"--get-reward-max-len must be a positive integer (got {self.max_len}).")
        if self.step_aggregation not in AGGREGATIONS:
            raise ValueError(
                f"--get-reward-step-aggregation={self.step_aggregation!r}; choose one of "
                f"{sorted(AGGREGATIONS)}."
            )
        if not self.step_separator:
            raise ValueError("--get-reward-step-separator must be a non-empty string.")


def options_of(request: Request) -> GetRewardOptions:
    """The app's :class:`GetRewardOptions` (the defaults when the app was built without them)."""
    return getattr(request.app.state, "get_reward_options", None) or GetRewardOptions()


async def create_get_reward(
    served: ServedModel, body: GetRewardRequest, options: GetRewardOptions
) -> Response:
    """One reward per query (``rewards`` and ``scores`` are equal); ``null`` with a reason in ``errors``."""
    info = served.info
    if info.kind not in ("outcome", "token", "process") or info.default_task not in (
        "classify",
        "token_classify",
    ):
        raise APIError(
            400, f"/get_reward scores reward models; {info.model} is a {info.kind} model: use /pooling."
        )
    if body.prompts is not None and len(body.prompts) != len(body.query):
        raise APIError(
            400,
            f"`prompts` has {len(body.prompts)} entries but `query` has {len(body.query)}; send one "
            "prompt per query (or none).",
            param="prompts",
        )
    tok = served.llm.tokenizer
    if tok is None:
        raise APIError(
            400, "This model has no tokenizer, so /get_reward cannot tokenize `query`.", param="query"
        )
    max_len = min(options.max_len or info.max_model_len, info.max_model_len)
    task = info.default_task
    queries = [_strip_token(q, getattr(tok, "pad_token", None)) for q in body.query]
    n_steps: list[int | None] = [None] * len(queries)
    if info.kind == "process":
        queries, n_steps = _tag_steps(queries, body.prompts, info, options)
    ids_list = [
        _truncate(
            await served.tokenize_text(q, add_special_tokens=False),
            max_len,
            getattr(tok, "truncation_side", "right"),
        )
        for q in queries
    ]
    # Raw scores for outcome and token rewards (token_classify's default applies the activation); a PRM's
    # step rewards are its activation's probabilities, as RewardFunction reads them.
    params = make_params({} if info.kind == "process" else {"use_activation": False})
    # An empty query stays a text, so the engine's check names it ("an empty string") as on every route.
    prompts = [q if not q else {"prompt_token_ids": ids} for q, ids in zip(queries, ids_list, strict=True)]
    items = await prepare_prompts(
        served, prompts, task, params, None, field_name="query", add_special_tokens=False
    )
    outputs = await served.score(task, items)
    rewards: list[float | None] = []
    errors: dict[str, str] = {}
    for i, out in enumerate(outputs):
        reward, error = _reward(out, info, options, n_steps[i])
        rewards.append(reward)
        if error is not None:
            errors[str(i)] = error
    return json_response(GetRewardResponse(rewards=rewards, scores=list(rewards), errors=errors or None))


def _reward(
    out: Any, info: ModelInfo, options: GetRewardOptions, n_steps: int | None
) -> tuple[float | None, str | None]:
    """``(reward, None)`` of one output, or ``(None, reason)``."""
    if out.error is not None:
        return None, out.error
    data = out.outputs.data
    if data.numel() == 0:
        return None, "the model produced no score for this query"
    if info.kind != "process":
        return float(data.reshape(-1)[-1]), None
    rows = data.reshape(data.shape[0], -1) if data.dim() > 1 else data.reshape(-1, 1)
    if n_steps is not None and rows.shape[0] != n_steps:
        return None, (
            f"{n_steps} steps were tagged but the model found {rows.shape[0]} step tags "
            "(a tag was lost in tokenization or truncation)"
        )
    returned = info.pooler_configs.get("token_classify", {}).get("returned_token_ids")
    column = step_score_column(rows.shape[1], returned_token_ids=returned)
    return aggregate_steps(rows[:, column].tolist(), options.step_aggregation), None


def _tag_steps(
    queries: list[str], prompts: list[str] | None, info: ModelInfo, options: GetRewardOptions
) -> tuple[list[str], list[int | None]]:
    """Queries with the PRM's step tag after each step of the response, and each one's step count."""
    if not info.step_tag:
        raise APIError(
            400, f"{info.model} has no step tag text, so /get_reward cannot tag steps; use /pooling."
        )
    tagged_queries: list[str] = []
    counts: list[int | None] = []
    for i, query in enumerate(queries):
        prompt = prompts[i] if prompts is not None else ""
        if not prompt or not query.startswith(prompt):
            prompt = ""  # no prompt to split off: every step of the whole query is scored
        tagged = tag_completion(
            query[len(prompt) :], step_tag=info.step_tag, separator=options.step_separator
        )
        tagged_queries.append(prompt + tagged.text)
        counts.append(tagged.n_steps)
    return tagged_queries, counts


def _truncate(ids: list[int], max_len: int, side: str) -> list[int]:
    """``ids`` cut to ``max_len`` tokens as a transformers tokenizer's ``truncation=True`` cuts them."""
    if len(ids) <= max_len:
        return ids
    return ids[-max_len:] if side == "left" else ids[:max_len]


def _strip_token(text: str, token: str | None) -> str:
    """``text`` without leading and trailing copies of ``token`` (OpenRLHF decodes queries with padding)."""
    if not token:
        return text
    while text.startswith(token):
        text = text[len(token) :]
    while text.endswith(token):
        text = text[: -len(token)]
    return text


__all__ = ["GetRewardOptions", "create_get_reward", "options_of"]
