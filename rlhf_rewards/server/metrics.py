"""Prometheus metrics of one server (a registry per app, so several apps in one process never collide)."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
_TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)


class ServerMetrics:
    """The counters, gauges and histograms ``GET /metrics`` exposes (prefix ``rlhf_rewards_``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "rlhf_rewards_requests",
            "HTTP requests by route and status code.",
            ["route", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            "rlhf_rewards_request_latency_seconds",
            "End-to-end request latency.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompts = Counter(
            "rlhf_rewards_prompts", "Prompts scored, by pooling task.", ["task"], registry=r
        )
        self.prompt_tokens = Counter("rlhf_rewards_prompt_tokens", "Prompt tokens scored.", registry=r)
        self.item_errors = Counter(
            "rlhf_rewards_item_errors", "Items answered with an error (NaN/inf output).", registry=r
        )
        self.rejected = Counter(
            "rlhf_rewards_rejected", "Requests refused before scoring, by reason.", ["reason"], registry=r
        )
        self.queue_prompts = Gauge("rlhf_rewards_queue_depth", "Prompts waiting in the queue.", registry=r)
        self.queue_requests = Gauge(
            "rlhf_rewards_queue_requests", "Requests waiting in the queue.", registry=r
        )
        self.running_prompts = Gauge("rlhf_rewards_running_prompts", "Prompts in the engine now.", registry=r)
        self.batch_prompts = Histogram(
            "rlhf_rewards_batch_size_prompts", "Prompts per engine call.", buckets=_SIZE_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "rlhf_rewards_batch_size_requests",
            "Requests merged into one engine call.",
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_tokens = Histogram(
            "rlhf_rewards_batch_tokens", "Tokens per engine call.", buckets=_TOKEN_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "rlhf_rewards_queue_wait_seconds",
            "Time a request waits before its engine call.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.engine_latency = Histogram(
            "rlhf_rewards_engine_seconds",
            "Duration of one engine call.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def watch_prefix_cache(self, cache: Any) -> None:
        """Expose the engine's cross-call prefix cache (:class:`~rlhf_rewards.engine.kv_cache.PrefixKVCache`):
        read at every scrape. ``None`` (no cache) exposes nothing."""
        if cache is None or getattr(self, "_watching_cache", False):
            return
        self._watching_cache = True
        for name, key, doc in (
            ("bytes", "bytes", "Bytes of keys/values the prefix cache holds now."),
            ("max_bytes", "max_bytes", "Bound of the prefix cache in bytes."),
            ("nodes", "nodes", "Cached prefix runs (radix-tree nodes) held now."),
            ("hit_tokens", "hit_tokens", "Prompt tokens served from the prefix cache (cumulative)."),
            ("queried_tokens", "queried_tokens", "Prompt tokens looked up in the prefix cache (cumulative)."),
            ("inserted_tokens", "inserted_tokens", "Tokens inserted into the prefix cache (cumulative)."),
            ("evictions", "evictions", "Prefix cache nodes evicted (cumulative)."),
        ):
            gauge = Gauge(f"rlhf_rewards_prefix_cache_{name}", doc, registry=self.registry)
            gauge.set_function(
                lambda key=key: float(getattr(cache, key) if key != "nodes" else cache.num_nodes)
            )

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware counting requests by route and status, and timing them.

    Args:
        app: The wrapped ASGI app.
        metrics: Where to count.
        routes: Paths reported by name; any other path is counted as ``other`` (bounded label values).
    """

    def __init__(self, app: Any, metrics: ServerMetrics, routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = scope["path"] if scope["path"] in self.routes else "other"
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.request_latency.labels(route).observe(time.perf_counter() - start)


__all__ = ["MetricsMiddleware", "ServerMetrics"]
