"""The FastAPI app: routes, error handlers, API key, limits and metrics around one :class:`ServingEngine`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from rlhf_rewards.server.auth import AuthMiddleware
from rlhf_rewards.server.errors import install_error_handlers
from rlhf_rewards.server.limits import LimitsMiddleware
from rlhf_rewards.server.metrics import MetricsMiddleware
from rlhf_rewards.server.routes import ROUTERS
from rlhf_rewards.server.service import ServingEngine

DESCRIPTION = """Reward model server with vLLM 0.33's pooling API (`/pooling`, `/classify`, `/v1/embeddings`,
`/v2/embed`, `/score`, `/rerank`, `/invocations`, `/tokenize`, `/v1/models`), vLLM 0.32's `/generative_scoring` on
causal LMs (judges read through their answer token) and OpenRLHF's `/get_reward`.
Concurrent requests are batched together on the server. Errors are vLLM's `{"error": {"message", "type", "param",
"code"}}`; a route that does not exist (or that the served model does not offer) answers `{"detail": "Not Found"}`.
Every route but `/health` needs `Authorization: Bearer <key>` when the server runs with `--api-key`."""


def build_app(engine: ServingEngine, *, api_key: str | None = None) -> FastAPI:
    """The ASGI app serving ``engine``; the batching loop starts and drains with the app's lifespan."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.draining = True
            await engine.stop()

    from rlhf_rewards import __version__

    app = FastAPI(title="rlhf-rewards", version=__version__, description=DESCRIPTION, lifespan=lifespan)
    app.state.engine = engine
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
        LimitsMiddleware, max_body_bytes=engine.limits.max_body_bytes, is_draining=lambda: engine.draining
    )
    app.add_middleware(AuthMiddleware, api_key=api_key)
    app.add_middleware(MetricsMiddleware, metrics=engine.metrics, routes=paths)
    return app


__all__ = ["build_app"]
