"""HTTP routes, one module per route family."""

from rlhf_rewards.server.routes import (
    classify,
    embeddings,
    generative_scoring,
    get_reward,
    health,
    invocations,
    models,
    pooling,
    score,
)

ROUTERS = (
    pooling.router,
    classify.router,
    embeddings.router,
    score.router,
    invocations.router,
    get_reward.router,
    models.router,
    health.router,
    generative_scoring.router,
)

__all__ = ["ROUTERS"]
