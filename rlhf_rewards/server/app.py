"""The FastAPI app: every route family's router, error handlers, API key, limits and metrics around one
:class:`~rlhf_rewards.server.base.serving.ServedModel`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from rlhf_rewards.server.auth import AuthMiddleware
from rlhf_rewards.server.base.serving import ServedModel
from rlhf_rewards.server.classify.api_router import router as classify_router
from rlhf_rewards.server.embed.api_router import router as embed_router
from rlhf_rewards.server.errors import install_error_handlers
from rlhf_rewards.server.generative_scoring.api_router import router as generative_scoring_router
from rlhf_rewards.server.generative_scoring.serving import GENERATIVE_SCORING_TASK, encode_label_reads
from rlhf_rewards.server.limits import LimitsMiddleware
from rlhf_rewards.server.metrics import MetricsMiddleware
from rlhf_rewards.server.pooling.api_router import router as pooling_router
from rlhf_rewards.server.reward.api_router import router as reward_router
from rlhf_rewards.server.sagemaker.api_router import router as sagemaker_router
from rlhf_rewards.server.score.api_router import router as score_router
from rlhf_rewards.server.system.api_router import router as system_router
from rlhf_rewards.server.tokenize.api_router import router as tokenize_router

ROUTERS = (
    pooling_router,
    classify_router,
    embed_router,
    score_router,
    sagemaker_router,
    reward_router,
    system_router,
    tokenize_router,
    generative_scoring_router,
)

DESCRIPTION = """Reward model server with vLLM 0.33's pooling API (`/pooling`, `/classify`, `/v1/embeddings`,
`/v2/embed`, `/score`, `/rerank`, `/invocations`, `/tokenize`, `/v1/models`), vLLM 0.32's `/generative_scoring` on
causal LMs (judges read through their answer token) and OpenRLHF's `/get_reward`.
Concurrent requests are batched together on the server. Errors are vLLM's `{"error": {"message", "type", "param",
"code"}}`; a route that does not exist (or that the served model does not offer) answers `{"detail": "Not Found"}`.
Every route but `/health` needs `Authorization: Bearer <key>` when the server runs with `--api-key`."""


def build_app(served: ServedModel, *, api_key: str | None = None) -> FastAPI:
    """The ASGI app serving ``served``; the batching loop starts and drains with the app's lifespan."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        served.start()
        try:
            yield
        finally:
            served.draining = True
            await served.stop()

    from rlhf_rewards import __version__

    app = FastAPI(title="rlhf-rewards", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.served = served
    served.encoders.setdefault(GENERATIVE_SCORING_TASK, encode_label_reads)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    paths = frozenset(
        [
            *(r.path for router in ROUTERS for r in router.routes),
            *(u for u in (app.docs_url, app.redoc_url, app.openapi_url) if u),
        ]
    )
    # Added innermost first: metrics see every answer, the key is checked before the body is read.
    app.add_middleware(
        LimitsMiddleware, max_body_bytes=served.limits.max_body_bytes, is_draining=lambda: served.draining
    )
    app.add_middleware(AuthMiddleware, api_key=api_key)
    app.add_middleware(MetricsMiddleware, metrics=served.metrics, routes=paths)
    return app


__all__ = ["ROUTERS", "build_app"]
