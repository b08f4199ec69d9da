"""``POST /get_reward``: OpenRLHF's remote reward model API (``--remote_rm_url`` / ``--reward.remote_url``).

OpenRLHF sends ``{"query": [full texts], "prompts": [...], "labels": [...]}`` and reads ``rewards``. Each
query is scored as the in-process engine would score that text; the reward is the model's raw score:
the last label's logit for a sequence classifier, the last token's score for a token reward model.
``prompts`` and ``labels`` are accepted and not used (the model scores the full text).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from rlhf_rewards.server.errors import APIError
from rlhf_rewards.server.protocol import ERROR_RESPONSES, GetRewardRequest, GetRewardResponse
from rlhf_rewards.server.routes.common import engine_of, json_response, make_params

router = APIRouter(tags=["scoring"])


@router.post("/get_reward", response_model=GetRewardResponse, responses=ERROR_RESPONSES)
async def get_reward(body: GetRewardRequest, request: Request) -> JSONResponse:
    """One reward per query (``rewards`` and ``scores`` are equal); ``null`` with a reason in ``errors``."""
    engine = engine_of(request)
    info = engine.info
    if info.kind == "process" or info.default_task not in ("classify", "token_classify"):
        raise APIError(400, f"/get_reward scores outcome and token reward models; {info.model} is a {info.kind} "
                            "model: use /pooling (task token_classify) and reduce the step scores yourself.")
    task = info.default_task
    tok = engine.llm.tokenizer
    queries = [_strip_token(q, getattr(tok, "pad_token", None)) for q in body.query]
    params = make_params({"use_activation": False} if task == "classify" else {})
    items = await engine.prepare_prompts(queries, task, params, None, field_name="query")
    outputs = await engine.score(task, items)
    rewards: list[float | None] = []
    errors: dict[str, str] = {}
    for i, out in enumerate(outputs):
        if out.error is not None or out.outputs.data.numel() == 0:
            rewards.append(None)
            errors[str(i)] = out.error or "the model produced no score for this query"
        else:
            rewards.append(float(out.outputs.data.reshape(-1)[-1]))
    return json_response(GetRewardResponse(rewards=rewards, scores=list(rewards), errors=errors or None))


def _strip_token(text: str, token: str | None) -> str:
    """``text`` without leading and trailing copies of ``token`` (OpenRLHF decodes queries with padding)."""
    if not token:
        return text
    while text.startswith(token):
        text = text[len(token):]
    while text.endswith(token):
        text = text[: -len(token)]
    return text
