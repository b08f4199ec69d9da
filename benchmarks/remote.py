"""Remote mode: ``POST /pooling`` at a given concurrency against in-process ``LLM.encode`` on the same texts.

The server is the project's own ``rlhf-rewards serve``, started here as a subprocess on 127.0.0.1 with the
benchmark checkpoint in float32 and stopped afterwards. ``concurrency`` clients each send one text per
request (the way a trainer's reward workers call a reward server), so the server must batch concurrent
requests itself to keep up with one in-process call over all texts. Repeats alternate in-process and
remote runs; throughputs are medians.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

#: Seconds to wait for the server's ``/health`` after starting it.
STARTUP_TIMEOUT_S = 300.0
#: ``rlhf-rewards serve`` options of every benchmarked server: local, float32 on the CPU, quiet logs.
SERVE_ARGS = ("--host", "127.0.0.1", "--dtype", "float32", "--device", "cpu", "--log-level", "warning")


@contextlib.contextmanager
def serve(model_dir: Path, port: int, extra_args: list[str], log_path: Path) -> Iterator[str]:
    """Start ``rlhf-rewards serve`` on 127.0.0.1:``port`` (float32, CPU, this process's thread settings);
    yields the base URL once ``/health`` answers."""
    from tests.support.server import serve as serve_model

    with serve_model(
        model_dir,
        *SERVE_ARGS,
        *extra_args,
        port=port,
        log_path=log_path,
        omp_threads=None,
        startup_timeout=STARTUP_TIMEOUT_S,
    ) as url:
        yield url


async def _post_all(url: str, texts: list[str], concurrency: int) -> list[float]:
    """POST each text alone to ``/pooling`` from ``concurrency`` workers; scores in input order.

    The client is aiohttp when installed: on a 2-core machine the client shares the CPU with the server, and
    httpx's async client spent about 6 ms of CPU per request here (512 tiny requests at concurrency 32),
    aiohttp 0.3 ms.
    """
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        return await _post_all_httpx(url, texts, concurrency)
    return await post_each_aiohttp(url, texts, concurrency)


def _body(text: str) -> dict[str, Any]:
    return {"input": text, "task": "classify", "use_activation": False, "add_special_tokens": False}


async def _drain(items: list[Any], concurrency: int, post: Any) -> list[float]:
    scores: list[float | None] = [None] * len(items)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(items)):
        queue.put_nowait(i)

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            scores[i] = await post(items[i])

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return [s for s in scores if s is not None]


async def post_each_aiohttp(
    url: str,
    inputs: list[Any],
    concurrency: int,
    body: Callable[[Any], dict[str, Any]] = _body,
    timeout_s: float = 600.0,
) -> list[float]:
    """POST ``body(input)`` for each input alone to ``/pooling`` with aiohttp, from ``concurrency`` workers on
    one connection pool; the raw scores in input order."""
    import aiohttp

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(base_url=url, connector=connector, timeout=timeout) as session:

        async def post(item: Any) -> float:
            async with session.post("/pooling", json=body(item)) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"/pooling answered {resp.status}: {(await resp.text())[:300]}")
                return float((await resp.json())["data"][0]["data"][0])

        return await _drain(inputs, concurrency, post)


async def _post_all_httpx(url: str, texts: list[str], concurrency: int) -> list[float]:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=600.0, limits=limits) as client:

        async def post(text: str) -> float:
            resp = await client.post("/pooling", json=_body(text))
            if resp.status_code != 200:
                raise RuntimeError(f"/pooling answered {resp.status_code}: {resp.text[:300]}")
            return float(resp.json()["data"][0]["data"][0])

        return await _drain(texts, concurrency, post)


def compare(
    workload: Any,
    model_dir: Path,
    llm: Any,
    *,
    repeats: int,
    concurrency: int,
    port: int,
    extra_args: list[str],
    log_path: Path | None = None,
) -> dict[str, Any]:
    """Remote vs in-process throughput and the largest score difference between them."""
    from rlhf_rewards import PoolingParams

    texts = workload.texts

    def local() -> torch.Tensor:
        outs = llm.encode(
            texts,
            PoolingParams(use_activation=False),
            pooling_task="classify",
            use_tqdm=False,
            add_special_tokens=False,
        )
        return torch.stack([o.outputs.data[0] for o in outs])

    from benchmarks.workloads import CACHE_DIR

    log_path = log_path or CACHE_DIR / "server.log"
    local_times, remote_times = [], []
    with serve(model_dir, port, extra_args, log_path) as url:
        local_scores = local()
        remote_scores = torch.tensor(asyncio.run(_post_all(url, texts, concurrency)))  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            local()
            local_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            remote_scores = torch.tensor(asyncio.run(_post_all(url, texts, concurrency)))
            remote_times.append(time.perf_counter() - t)
    local_s, remote_s = statistics.median(local_times), statistics.median(remote_times)
    return {
        "workload": workload.name,
        "items": len(texts),
        "concurrency": concurrency,
        "local_median_s": local_s,
        "remote_median_s": remote_s,
        "local_times_s": local_times,
        "remote_times_s": remote_times,
        "local_items_per_s": len(texts) / local_s,
        "remote_items_per_s": len(texts) / remote_s,
        "ratio": local_s / remote_s,
        "max_abs_diff": float((remote_scores - local_scores).abs().max()),
    }


__all__ = ["compare", "serve"]
