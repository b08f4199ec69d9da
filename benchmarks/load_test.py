"""Load test of ``rlhf-rewards serve``: a loopback client at high concurrency for a bounded time.

    python -m benchmarks.load_test --model PATH                       # starts a server, 256 clients, 20 s
    python -m benchmarks.load_test --model PATH --max-queue-size 128 --duration 30 --json out.json
    python -m benchmarks.load_test --url http://127.0.0.1:8000 --api-key KEY   # an already running server

Each client sends ``/pooling`` requests in a loop until the time is up. Request ``k`` carries
``request_id=load-k`` and a known set of prompts (token ids), so every answer is checked: the response id
must echo ``k`` and every item must equal the reference score of its own prompt (the in-process engine's
when ``--model`` is given, else the idle server's). A 503 (queue full) is retried after its
``Retry-After``, like ``RemoteWorker`` does; the retry is the same logical request.

Reported: accepted/rejected requests, dropped (a logical request never answered in full), duplicated or
mismatched results, server errors, latency p50/p90/p99 of accepted requests, throughput, the server's
resident memory (before, peak, after) and queue depth, and recovery after the load stops (time until
``/health`` is ok with an empty queue, then latency and correctness of single requests).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

N_PROMPTS = 64  # distinct prompts; request k uses prompts k, k+1, ... (mod N_PROMPTS)


def make_prompts(n: int = N_PROMPTS, vocab: int = 400) -> list[list[int]]:
    """Distinct token-id prompts of 8..63 tokens (ids in ``[5, vocab)``), deterministic."""
    return [[5 + (i * 37 + j * 11) % (vocab - 5) for j in range(8 + (i * 13) % 56)] for i in range(n)]


@dataclass
class LoadReport:
    """What one load run measured (all latencies in seconds, memory in MiB)."""

    concurrency: int
    duration_s: float
    prompts_per_request: int
    logical_requests: int = 0
    accepted: int = 0
    rejected_503: int = 0
    client_errors_4xx: int = 0
    server_errors_5xx: int = 0
    transport_errors: int = 0
    dropped: int = 0
    duplicated: int = 0
    mismatched: int = 0
    max_abs_diff: float = 0.0
    latency_p50: float | None = None
    latency_p90: float | None = None
    latency_p99: float | None = None
    latency_max: float | None = None
    throughput_prompts_per_s: float = 0.0
    rss_before_mib: float | None = None
    rss_peak_mib: float | None = None
    rss_after_mib: float | None = None
    max_queue_depth: float = 0.0
    server_mean_latency: float | None = None
    server_mean_requests_per_engine_call: float | None = None
    server_mean_prompts_per_engine_call: float | None = None
    recovered: bool = False
    recovery_s: float | None = None
    after_latency_p50: float | None = None
    after_correct: bool = False
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Human-readable lines."""

        def ms(v: float | None) -> str:
            return "n/a" if v is None else f"{1000 * v:.0f} ms"

        return "\n".join(
            [
                f"concurrency {self.concurrency}, {self.duration_s:.0f} s, {self.prompts_per_request} prompts/request",
                f"logical requests {self.logical_requests}: accepted {self.accepted}, 503 answers {self.rejected_503} "
                f"(retried), 4xx {self.client_errors_4xx}, 5xx {self.server_errors_5xx}, "
                f"transport errors {self.transport_errors}",
                f"dropped {self.dropped}, duplicated {self.duplicated}, mismatched {self.mismatched} "
                f"(max |diff| {self.max_abs_diff:.2e})",
                f"latency of accepted requests: p50 {ms(self.latency_p50)}, p90 {ms(self.latency_p90)}, "
                f"p99 {ms(self.latency_p99)}, max {ms(self.latency_max)}; "
                f"throughput {self.throughput_prompts_per_s:.0f} prompts/s",
                f"server RSS: before {self.rss_before_mib} MiB, peak {self.rss_peak_mib} MiB, after {self.rss_after_mib} MiB;"
                f" max queue depth {self.max_queue_depth:.0f} prompts",
                f"server side (/metrics): mean /pooling latency {ms(self.server_mean_latency)} (503s included), "
                f"{_fmt(self.server_mean_requests_per_engine_call)} requests and "
                f"{_fmt(self.server_mean_prompts_per_engine_call)} prompts per engine call",
                f"recovered: {self.recovered} in {self.recovery_s if self.recovery_s is None else round(self.recovery_s, 2)}"
                f" s; single requests after: p50 {ms(self.after_latency_p50)}, correct {self.after_correct}",
                *self.notes,
            ]
        )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


_SERVER_SERIES = {
    "latency": (
        'rlhf_rewards_request_latency_seconds_sum{route="/pooling"}',
        'rlhf_rewards_request_latency_seconds_count{route="/pooling"}',
    ),
    "requests": ("rlhf_rewards_batch_size_requests_sum", "rlhf_rewards_batch_size_requests_count"),
    "prompts": ("rlhf_rewards_batch_size_prompts_sum", "rlhf_rewards_batch_size_prompts_count"),
}


def _server_means(before: str, after: str) -> dict[str, float | None]:
    """Mean of each histogram in :data:`_SERVER_SERIES` over the observations between two scrapes."""
    means: dict[str, float | None] = {}
    for key, (total, count) in _SERVER_SERIES.items():
        n = _metric(after, count) - _metric(before, count)
        means[key] = (_metric(after, total) - _metric(before, total)) / n if n > 0 else None
    return means


class _TransportError(Exception):
    """The request got no HTTP answer (connection refused or reset, timeout)."""


@dataclass
class _Answer:
    status_code: int
    headers: dict[str, str]
    text: str

    def json(self) -> Any:
        return json.loads(self.text)


class _Http:
    """A pooled async HTTP client: aiohttp when installed (light enough for hundreds of concurrent requests
    in one process, so the client is not what gets measured), else httpx."""

    def __init__(self, url: str, headers: dict[str, str], connections: int, timeout: float) -> None:
        self.url, self.headers, self.connections, self.timeout = url, headers, connections, timeout
        self._session: Any = None
        try:
            import aiohttp  # noqa: F401

            self.backend = "aiohttp"
        except ImportError:
            self.backend = "httpx"

    async def __aenter__(self) -> _Http:
        if self.backend == "aiohttp":
            import aiohttp

            self._session = aiohttp.ClientSession(
                headers=self.headers,
                connector=aiohttp.TCPConnector(limit=self.connections),
                timeout=aiohttp.ClientTimeout(total=self.timeout, connect=30.0),
            )
        else:
            import httpx

            limits = httpx.Limits(
                max_connections=self.connections, max_keepalive_connections=self.connections
            )
            self._session = httpx.AsyncClient(
                headers=self.headers, limits=limits, timeout=httpx.Timeout(self.timeout, connect=30.0)
            )
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self.backend == "aiohttp":
            await self._session.close()
        else:
            await self._session.aclose()

    async def request(self, method: str, path: str, body: Any = None) -> _Answer:
        """One request; raises :class:`_TransportError` when no HTTP answer came back."""
        if self.backend == "aiohttp":
            import aiohttp

            try:
                async with self._session.request(method, self.url + path, json=body) as r:
                    return _Answer(r.status, {k.lower(): v for k, v in r.headers.items()}, await r.text())
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise _TransportError(str(exc)) from exc
        import httpx

        try:
            r = await self._session.request(method, self.url + path, json=body)
        except httpx.HTTPError as exc:
            raise _TransportError(str(exc)) from exc
        return _Answer(r.status_code, {k.lower(): v for k, v in r.headers.items()}, r.text)

    async def get(self, path: str) -> _Answer:
        """GET ``path``."""
        return await self.request("GET", path)

    async def post(self, path: str, json: Any) -> _Answer:  # noqa: A002 - mirrors httpx's keyword
        """POST ``json`` to ``path``."""
        return await self.request("POST", path, json)


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


async def run_load(
    url: str,
    reference: list[float],
    *,
    concurrency: int = 256,
    duration: float = 20.0,
    prompts_per_request: int = 2,
    api_key: str | None = None,
    server_pid: int | None = None,
    atol: float = 1e-4,
    grace: float = 120.0,
) -> LoadReport:
    """Drive ``url`` with ``concurrency`` clients for ``duration`` seconds and check every answer.

    Args:
        url: Server base URL.
        reference: Expected score (``data[0]`` of task ``classify`` without activation) of each of
            :func:`make_prompts`'s prompts.
        concurrency: Clients sending at once.
        duration: Seconds during which new logical requests start.
        prompts_per_request: Prompts per request.
        api_key: Bearer key, if the server needs one.
        server_pid: Server process id, to sample its resident memory.
        atol: Largest accepted difference from the reference.
        grace: Seconds after ``duration`` that started requests may take to finish (else they count as dropped).
    """
    prompts = make_prompts()
    report = LoadReport(concurrency=concurrency, duration_s=duration, prompts_per_request=prompts_per_request)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    latencies: list[float] = []
    answered: dict[int, int] = {}
    counter = iter(range(10**9))
    stop_at = time.monotonic() + duration
    hard_stop = stop_at + grace
    report.rss_before_mib = _rss_mib(server_pid)
    peak = [report.rss_before_mib or 0.0]
    sampling = threading.Event()

    def sample_memory() -> None:
        while not sampling.wait(0.2):
            rss = _rss_mib(server_pid)
            if rss is not None:
                peak[0] = max(peak[0], rss)

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    async with _Http(url, headers, concurrency + 4, grace + duration) as client:
        report.notes.append(f"client: {client.backend}")

        async def watch_queue() -> None:
            while time.monotonic() < stop_at:
                try:
                    text = (await client.get("/metrics")).text
                    report.max_queue_depth = max(
                        report.max_queue_depth, _metric(text, "rlhf_rewards_queue_depth")
                    )
                except _TransportError:
                    pass
                await asyncio.sleep(0.25)

        async def one_client() -> None:
            while time.monotonic() < stop_at:
                k = next(counter)
                report.logical_requests += 1
                idx = [(k + j) % len(prompts) for j in range(prompts_per_request)]
                body = {
                    "input": [prompts[i] for i in idx],
                    "task": "classify",
                    "use_activation": False,
                    "request_id": f"load-{k}",
                }
                done = False
                while not done and time.monotonic() < hard_stop:
                    start = time.monotonic()
                    try:
                        response = await client.post("/pooling", json=body)
                    except _TransportError:
                        report.transport_errors += 1
                        await asyncio.sleep(0.5)
                        continue
                    if response.status_code == 503:
                        report.rejected_503 += 1
                        await asyncio.sleep(float(response.headers.get("retry-after", "1")))
                        continue
                    done = True
                    if response.status_code >= 500:
                        report.server_errors_5xx += 1
                    elif response.status_code >= 400:
                        report.client_errors_4xx += 1
                    else:
                        latencies.append(time.monotonic() - start)
                        report.accepted += 1
                        answered[k] = answered.get(k, 0) + 1
                        _check(report, response.json(), k, idx, reference, atol)
                if not done:
                    report.dropped += 1

        metrics_before = (await client.get("/metrics")).text
        run_start = time.monotonic()
        watcher = asyncio.ensure_future(watch_queue())
        await asyncio.gather(*(one_client() for _ in range(concurrency)))
        elapsed = time.monotonic() - run_start
        await watcher
        sampling.set()
        sampler.join(2)
        report.rss_peak_mib = peak[0] or None
        means = _server_means(metrics_before, (await client.get("/metrics")).text)
        report.server_mean_latency = means["latency"]
        report.server_mean_requests_per_engine_call = means["requests"]
        report.server_mean_prompts_per_engine_call = means["prompts"]
        report.duplicated += sum(n - 1 for n in answered.values() if n > 1)
        report.latency_p50, report.latency_p90 = _quantile(latencies, 0.5), _quantile(latencies, 0.9)
        report.latency_p99, report.latency_max = (
            _quantile(latencies, 0.99),
            (max(latencies) if latencies else None),
        )
        report.throughput_prompts_per_s = report.accepted * prompts_per_request / elapsed

        # Recovery: the queue empties and single requests are answered correctly again.
        start = time.monotonic()
        while time.monotonic() - start < 120:
            try:
                health = await client.get("/health")
                depth = _metric((await client.get("/metrics")).text, "rlhf_rewards_queue_depth")
                if health.status_code == 200 and depth == 0:
                    report.recovered, report.recovery_s = True, time.monotonic() - start
                    break
            except _TransportError:
                pass
            await asyncio.sleep(0.1)
        after: list[float] = []
        correct = True
        for k in range(5):
            idx = [k]
            t0 = time.monotonic()
            response = await client.post(
                "/pooling",
                json={
                    "input": [prompts[k]],
                    "task": "classify",
                    "use_activation": False,
                    "request_id": f"after-{k}",
                },
            )
            after.append(time.monotonic() - t0)
            bad_before = report.mismatched
            if response.status_code != 200:
                correct = False
                continue
            _check(report, response.json(), f"after-{k}", idx, reference, atol)
            correct = correct and report.mismatched == bad_before
        report.after_latency_p50 = statistics.median(after)
        report.after_correct = correct
        report.rss_after_mib = _rss_mib(server_pid)
    return report


def _check(
    report: LoadReport, body: dict[str, Any], k: Any, idx: list[int], reference: list[float], atol: float
) -> None:
    """Count a mismatch unless ``body`` answers request ``k`` with the reference score of each prompt."""
    data = body.get("data") or []
    ok = body.get("id") == f"pooling-{k}" if isinstance(k, str) else body.get("id") == f"pooling-load-{k}"
    ok = ok and len(data) == len(idx) and [d.get("index") for d in data] == list(range(len(idx)))
    if ok:
        for d, i in zip(data, idx, strict=True):
            value = d.get("data")
            if not isinstance(value, list) or not value or not isinstance(value[0], (int, float)):
                ok = False
                break
            diff = abs(value[0] - reference[i])
            report.max_abs_diff = max(report.max_abs_diff, diff)
            ok = ok and diff <= atol
    if not ok:
        report.mismatched += 1


def reference_scores(model: str | None, url: str | None = None, api_key: str | None = None) -> list[float]:
    """Scores of :func:`make_prompts`: from the in-process engine if ``model`` is given, else from ``url``
    one prompt at a time (an idle server)."""
    prompts = make_prompts()
    if model is not None:
        from rlhf_rewards import LLM, PoolingParams

        llm = LLM(model, device="cpu")
        outputs = llm.encode(
            [{"prompt_token_ids": p} for p in prompts],
            PoolingParams(use_activation=False),
            pooling_task="classify",
            use_tqdm=False,
        )
        return [float(o.outputs.data[0]) for o in outputs]
    import httpx

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return [
        float(
            httpx.post(
                f"{url}/pooling",
                json={"input": [p], "task": "classify", "use_activation": False},
                headers=headers,
                timeout=60,
            ).json()["data"][0]["data"][0]
        )
        for p in prompts
    ]


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; exits 1 if any answer was dropped, duplicated, wrong or a 5xx."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--model", help="Start `rlhf-rewards serve MODEL` for the test (and score it in-process)."
    )
    where.add_argument("--url", help="Test an already running server.")
    p.add_argument("--api-key", default=os.environ.get("RLHF_REWARDS_API_KEY"))
    p.add_argument("--concurrency", type=int, default=256)
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--prompts-per-request", type=int, default=2)
    p.add_argument(
        "--max-queue-size", type=int, default=256, help="Passed to the server started with --model."
    )
    p.add_argument("--json", default=None, help="Write the report here as JSON.")
    args = p.parse_args(argv)
    server = None
    url = args.url
    if args.model:
        from tests.support.server import ServerProcess

        server_args = ["--max-queue-size", str(args.max_queue_size)]
        if args.api_key:
            server_args += ["--api-key", args.api_key]
        server = ServerProcess(args.model, *server_args, omp_threads=None).start(timeout=300)
        url = server.url
    try:
        reference = reference_scores(args.model, url, args.api_key)
        report = asyncio.run(
            run_load(
                url,
                reference,
                concurrency=args.concurrency,
                duration=args.duration,
                prompts_per_request=args.prompts_per_request,
                api_key=args.api_key,
                server_pid=server.proc.pid if server else None,
            )
        )
    finally:
        if server is not None:
            server.stop()
    print(report.summary())
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2))
    bad = (
        report.dropped
        or report.duplicated
        or report.mismatched
        or report.server_errors_5xx
        or not report.recovered
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
