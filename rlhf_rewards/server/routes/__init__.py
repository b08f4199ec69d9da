"""HTTP routes, one module per route family."""

from rlhf_rewards.server.routes import classify, get_reward, health, models, pooling

ROUTERS = (pooling.router, classify.router, get_reward.router, models.router, health.router)

__all__ = ["ROUTERS"]
