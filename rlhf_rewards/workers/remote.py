"""``RemoteWorker``: the engine behind one or more ``rlhf-rewards serve`` URLs.

A call is split into requests of at most ``max_batch_size`` prompts (prompts that share pooling parameters and
adapter travel together), sent concurrently over a pooled HTTP client to the least-loaded URL, and put back
in input order. A request that fails or times out is sent again, to another URL when there is one, with
back-off; 503/429 answers are retried after their ``Retry-After``; a URL that keeps failing is marked down
and tried again after a cool-down. Texts are sent as texts and token ids as token ids, so the server
tokenizes exactly as the in-process engine does and the scores are the same.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
import uuid
from collections.abc import Coroutine, Sequence
from dataclasses import astuple
from typing import Any, TypeVar

import torch

from rlhf_rewards.engine.inputs import normalize_prompts
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import PoolingOutput, PoolingRequestOutput
from rlhf_rewards.pooling.params import PoolingParams
from rlhf_rewards.pooling.tasks import check_task
from rlhf_rewards.workers.base import ModelInfo, RewardWorker, WorkerHealth, WorkerStats
from rlhf_rewards.workers.retry import EndpointPool, RetryPolicy, classify_status, parse_retry_after

T = TypeVar("T")
API_KEY_ENV = "RLHF_REWARDS_API_KEY"
_PARAM_FIELDS = ("use_activation", "dimensions", "normalize", "step_tag_id", "returned_token_ids")


class RemoteWorkerError(RuntimeError):
    """A request could not be served by any URL within the retry budget (or got an unexpected answer)."""


class _TooLarge(Exception):
    """413: the request must be split."""


class RemoteWorker(RewardWorker):
    """Scores through ``rlhf-rewards serve`` servers; same arguments and outputs as ``LLM.encode``.

    Args:
        urls: One base URL (``"http://host:8000"``) or several; requests are spread over them.
        api_key: Sent as ``Authorization: Bearer``. Default: ``$RLHF_REWARDS_API_KEY`` if set.
        timeout: Seconds to wait for one HTTP answer before retrying elsewhere. Default 120.
        max_retries: Retries per request after the first attempt. Default 4.
        max_concurrency: Most HTTP requests in flight at once, over all URLs. Default 8.
        max_batch_size: Most prompts per HTTP request (also capped by the server's
            ``--max-client-batch-size``). Default 128.
        retry: A full :class:`~rlhf_rewards.workers.retry.RetryPolicy` (overrides ``max_retries``).
        down_after: Consecutive failures that mark a URL down. Default 2.
        down_for: First cool-down of a down URL in seconds (doubles while it keeps failing). Default 5.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        api_key: str | None = None,
        *,
        timeout: float = 120.0,
        max_retries: int = 4,
        max_concurrency: int = 8,
        max_batch_size: int = 128,
        retry: RetryPolicy | None = None,
        down_after: int = 2,
        down_for: float = 5.0,
    ) -> None:
        import httpx

        url_list = [urls] if isinstance(urls, str) else list(urls)
        self.urls = [_normalize_url(u) for u in url_list]
        for name, value in (("max_concurrency", max_concurrency), ("max_batch_size", max_batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if not timeout or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
        self.policy = retry or RetryPolicy(max_retries=max_retries)
        self.pool = EndpointPool(self.urls, down_after=down_after, down_for=down_for)
        self.max_batch_size = max_batch_size
        self.stats = WorkerStats()
        self._info: ModelInfo | None = None
        self._server_limits: dict[str, Any] = {}
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="rlhf-rewards-remote", daemon=True)
        self._thread.start()
        self._closed = False

        async def setup() -> tuple[Any, asyncio.Semaphore]:
            client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                limits=httpx.Limits(max_connections=max_concurrency * len(self.urls),
                                    max_keepalive_connections=max_concurrency * len(self.urls)),
            )
            return client, asyncio.Semaphore(max_concurrency)

        self._client, self._slots = self._run(setup())

    def __repr__(self) -> str:
        return f"RemoteWorker(urls={self.urls})"

    # ------------------------------------------------------------------ plumbing
    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the worker's loop and wait for it (from any thread but the loop's)."""
        if self._closed:
            coro.close()
            raise RuntimeError("This RemoteWorker is closed.")
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("RemoteWorker's blocking methods cannot run on its own event loop; use aencode.")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    async def _arun(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the worker's loop from any other event loop."""
        if self._closed:
            coro.close()
            raise RuntimeError("This RemoteWorker is closed.")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One logical request: sent until a URL answers, with failover, back-off and ``Retry-After``."""
        import httpx

        tried: list[str] = []
        retries = 0
        delay = 0.0
        while True:
            if delay > 0:
                await asyncio.sleep(delay)
                delay = 0.0
            response = None
            error = ""
            async with self._slots:  # pick inside the slot, so the load seen by ``pick`` is real
                endpoint, wait = self.pool.pick(avoid=tried)
                if wait <= 0:
                    endpoint.in_flight += 1
                    try:
                        response = await self._client.request(method, endpoint.url + path, json=body)
                    except httpx.TransportError as exc:  # connection refused/reset, timeouts, broken reads
                        error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                    finally:
                        endpoint.in_flight -= 1
            if wait > 0:  # every URL is down or busy: wait for the first to come back
                delay = min(wait, self.policy.backoff_max)
                continue
            kind = "unreachable"
            if response is not None:
                kind = classify_status(response.status_code)
                if kind == "ok":
                    try:
                        data = response.json()
                    except ValueError:
                        kind = "retry"
                    else:
                        self.pool.success(endpoint)
                        return data
                message = _error_message(response)
                if kind == "too_large":
                    raise _TooLarge(message)
                if kind == "fatal":
                    raise _client_error(response.status_code, message, endpoint.url)
                error = f"HTTP {response.status_code}: {message}"
                if kind == "busy":
                    pause = parse_retry_after(response.headers.get("retry-after"))
                    self.pool.busy(endpoint, self.policy.backoff(retries) if pause is None else pause)
                    endpoint.last_error = error
                else:
                    self.pool.failure(endpoint, error)
            else:
                self.pool.failure(endpoint, error)
            self.stats.failures += 1
            tried.append(endpoint.url)
            retries += 1
            if retries > self.policy.max_retries:
                raise RemoteWorkerError(
                    f"{method} {path} failed {retries} times over {sorted(set(tried))}; last error: {error}")
            self.stats.retries += 1
            if kind != "busy" and self.pool.pick(avoid=tried)[0].url in tried:
                delay = self.policy.backoff(retries - 1)  # nowhere new to go: back off before the same URL

    # ------------------------------------------------------------------ RewardWorker
    def encode(
        self,
        prompts: Any,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        pooling_task: str | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = False,
    ) -> list[PoolingRequestOutput]:
        """Pool ``prompts`` on the servers; see :meth:`rlhf_rewards.LLM.encode`."""
        return self._run(self._encode(prompts, pooling_params, pooling_task, lora_request, truncate_prompt_tokens))

    async def aencode(
        self,
        prompts: Any,
        pooling_params: PoolingParams | Sequence[PoolingParams] | None = None,
        *,
        pooling_task: str | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
        truncate_prompt_tokens: int | None = None,
        use_tqdm: bool = False,
    ) -> list[PoolingRequestOutput]:
        """Async :meth:`encode` (any event loop; the HTTP work runs on the worker's own loop)."""
        return await self._arun(
            self._encode(prompts, pooling_params, pooling_task, lora_request, truncate_prompt_tokens))

    def model_info(self) -> ModelInfo:
        """The served model's :class:`ModelInfo` (``GET /v1/model_info``, cached)."""
        return self._run(self._model_info())

    def render_chat(
        self,
        conversations: Sequence[Sequence[dict[str, Any]]],
        *,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
    ) -> list[list[int]]:
        """Token ids of each conversation rendered by the server with the model's chat template (``/tokenize``)."""
        return self._run(self._render_chat(conversations, chat_template, add_generation_prompt))

    def health(self) -> WorkerHealth:
        """``GET /health`` on every URL; a URL is down if it does not answer 200 or is marked down after
        failing requests (until its cool-down ends). ``ok`` when at least one URL is up."""
        return self._run(self._health())

    def close(self) -> None:
        """Close the connections and stop the worker's event loop."""
        if self._closed:
            return
        try:
            self._run(self._client.aclose())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            self._loop.close()

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            if not self._closed and self._loop.is_running():
                self._loop.call_soon_threadsafe(self._loop.stop)
        except Exception:  # noqa: BLE001
            pass

    # ------------------------------------------------------------------ implementation
    async def _model_info(self) -> ModelInfo:
        if self._info is None:
            data = await self._request("GET", "/v1/model_info")
            self._server_limits = dict(data.get("server_limits") or {})
            self._info = ModelInfo.from_dict(data)
        return self._info

    async def _render_chat(self, conversations: Sequence[Sequence[dict[str, Any]]], chat_template: str | None,
                           add_generation_prompt: bool) -> list[list[int]]:
        info = await self._model_info()
        bodies = []
        for i, conv in enumerate(conversations):
            if not conv:
                raise ValueError(f"conversations[{i}] is empty.")
            body: dict[str, Any] = {"model": info.model, "messages": [dict(m) for m in conv],
                                    "add_generation_prompt": add_generation_prompt}
            if chat_template is not None:
                body["chat_template"] = chat_template
            bodies.append(body)
        answers = await _gather_or_raise([self._request("POST", "/tokenize", b) for b in bodies])
        return [list(a["tokens"]) for a in answers]

    async def _health(self) -> WorkerHealth:
        async def probe(url: str) -> tuple[str, dict[str, Any]]:
            try:
                r = await self._client.get(url + "/health", timeout=5.0)
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
                return url, {**body, "ok": r.status_code == 200, "http_status": r.status_code}
            except Exception as exc:  # noqa: BLE001 - any failure means "not serving"
                return url, {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

        results = dict(await asyncio.gather(*(probe(u) for u in self.urls)))
        marked = set(self.pool.down())  # failed while scoring: down until its cool-down ends
        for url in marked:
            results[url]["marked_down"] = True
        down = [u for u in self.urls if not results[u]["ok"] or u in marked]
        return WorkerHealth(ok=len(down) < len(self.urls), details=results, down=down)

    async def _encode(self, prompts: Any, pooling_params: Any, pooling_task: str | None, lora_request: Any,
                      truncate_prompt_tokens: int | None) -> list[PoolingRequestOutput]:
        from rlhf_rewards.entrypoints.llm import LLM

        start = time.perf_counter()
        info = await self._model_info()
        task = check_task(pooling_task, tuple(info.tasks))
        items = [_prompt_payload(i, p) for i, p in enumerate(normalize_prompts(prompts))]
        if not items:
            raise ValueError("prompts is empty: pass at least one prompt.")
        params_list = LLM._per_prompt("pooling_params", pooling_params, len(items), PoolingParams)
        lora_list = LLM._per_prompt("lora_request", lora_request, len(items), LoRARequest)
        if truncate_prompt_tokens is not None:
            PoolingParams(truncate_prompt_tokens=truncate_prompt_tokens)  # validates the value
        groups: dict[tuple[Any, ...], list[int]] = {}
        bodies: dict[tuple[Any, ...], dict[str, Any]] = {}
        for i, ((kind, _), params, lora) in enumerate(zip(items, params_list, lora_list, strict=True)):
            params = params or PoolingParams()
            params.verify(task)
            if lora is not None and lora.lora_name not in info.lora_modules:
                raise ValueError(
                    f"lora_request[{i}] names the adapter {lora.lora_name!r}, which {self.urls} do not serve "
                    f"(they serve {info.lora_modules}); start the server with --lora-modules NAME=PATH.")
            truncate = params.truncate_prompt_tokens if params.truncate_prompt_tokens is not None else truncate_prompt_tokens
            key = (kind, _params_key(params), truncate, lora.lora_name if lora else None)
            if key not in groups:
                body: dict[str, Any] = {"model": lora.lora_name if lora else info.model, "task": task,
                                        "return_details": True}
                if truncate is not None:
                    body["truncate_prompt_tokens"] = truncate
                for name in _PARAM_FIELDS:
                    if getattr(params, name) is not None:
                        body[name] = getattr(params, name)
                groups[key], bodies[key] = [], body
            groups[key].append(i)
        size = min(self.max_batch_size, int(self._server_limits.get("max_client_batch_size") or self.max_batch_size))
        results: list[PoolingRequestOutput | None] = [None] * len(items)
        jobs = []
        for key, indices in groups.items():
            for lo in range(0, len(indices), size):
                jobs.append(self._send_chunk(bodies[key], indices[lo: lo + size], items, results))
        await _gather_or_raise(jobs)
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:  # cannot happen unless the server answered with fewer items; never return partial results
            raise RemoteWorkerError(f"No result for prompts {missing[:10]}.")
        outputs = [r for r in results if r is not None]
        self.stats.requests += 1
        self.stats.prompts += len(outputs)
        self.stats.tokens += sum(len(o.prompt_token_ids) for o in outputs)
        self.stats.busy_seconds += time.perf_counter() - start
        return outputs

    async def _send_chunk(self, base: dict[str, Any], indices: list[int], items: list[tuple[str, Any]],
                          results: list[PoolingRequestOutput | None]) -> None:
        chunk_id = uuid.uuid4().hex  # the server echoes it in its response id and logs
        body = {**base, "input": [items[i][1] for i in indices], "request_id": chunk_id}
        try:
            answer = await self._request("POST", "/pooling", body)
        except _TooLarge as exc:
            if len(indices) == 1:
                raise ValueError(f"prompts[{indices[0]}] alone is over the server's request limit: {exc}") from None
            half = len(indices) // 2
            await _gather_or_raise([self._send_chunk(base, indices[:half], items, results),
                                    self._send_chunk(base, indices[half:], items, results)])
            return
        except ValueError as exc:  # the server's index is the chunk's: name the caller's prompt instead
            raise ValueError(re.sub(r"\binput\[(\d+)\]", lambda m: f"prompts[{indices[int(m.group(1))]}]"
                                    if int(m.group(1)) < len(indices) else m.group(0), str(exc))) from None
        data = answer.get("data")
        if not isinstance(data, list) or len(data) != len(indices):
            raise RemoteWorkerError(f"The server answered {len(data) if isinstance(data, list) else 'no'} items "
                                    f"for a request of {len(indices)} prompts.")
        for item in data:
            j = item["index"]
            results[indices[j]] = _output(f"{chunk_id}-{j}", item)


def _output(request_id: str, item: dict[str, Any]) -> PoolingRequestOutput:
    shape = tuple(item.get("shape") or ())
    error = item.get("error")
    if error is not None or item.get("data") is None:
        tensor = torch.full(shape or (1,), float("nan"))  # never a usable number, as in LLM.encode
        error = error or "the server returned no data for this item"
    else:
        tensor = torch.tensor(item["data"], dtype=torch.float32)
        if shape:
            tensor = tensor.reshape(shape)
    return PoolingRequestOutput(request_id=request_id, outputs=PoolingOutput(data=tensor),
                                prompt_token_ids=list(item.get("prompt_token_ids") or []), error=error)


def _prompt_payload(i: int, prompt: Any) -> tuple[str, Any]:
    """``("text", str)`` or ``("ids", [int])``; the same checks and messages as the engine's."""
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            ids = prompt["prompt_token_ids"]
            if not isinstance(ids, (list, tuple)):
                raise ValueError(f"prompts[{i}].prompt_token_ids must be a list of ints, got {type(ids).__name__}.")
            if not ids:
                raise ValueError(f"prompts[{i}].prompt_token_ids is empty; every prompt needs at least one token.")
            bad = next((t for t in ids if isinstance(t, bool) or not isinstance(t, int)), None)
            if bad is not None:
                raise ValueError(f"prompts[{i}].prompt_token_ids must hold ints, found {bad!r}.")
            return "ids", list(ids)
        if "prompt" not in prompt:
            raise ValueError(f"prompts[{i}] is a dict without 'prompt' or 'prompt_token_ids' (keys: {sorted(prompt)}).")
        prompt = prompt["prompt"]
    if not isinstance(prompt, str):
        raise ValueError(f"prompts[{i}] must be a string or a dict, got {type(prompt).__name__}.")
    if not prompt:
        raise ValueError(f"prompts[{i}] is an empty string; every prompt needs at least one token.")
    return "text", prompt


def _params_key(params: PoolingParams) -> tuple[Any, ...]:
    return tuple(tuple(v) if isinstance(v, list) else v for v in astuple(params))


def _normalize_url(url: str) -> str:
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"Each URL must be a non-empty string, got {url!r}.")
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"URL {url!r} must use http:// or https://.")
    return url


def _error_message(response: Any) -> str:
    try:
        body = response.json()
    except ValueError:
        return (response.text or "")[:500] or f"HTTP {response.status_code}"
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return str(body)[:500]


def _client_error(status: int, message: str, url: str) -> Exception:
    if status in (400, 404, 422):
        return ValueError(message)  # the request's fault, like the engine's ValueError
    if status in (401, 403):
        return PermissionError(f"{url}: {message}")
    return RemoteWorkerError(f"{url} answered HTTP {status}: {message}")


async def _gather_or_raise(coros: Sequence[Coroutine[Any, Any, T]]) -> list[T]:
    """Run concurrently; on the first exception cancel the rest and raise it."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    if not tasks:
        return []
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for t in done:
            if t.exception() is not None:
                raise t.exception()  # type: ignore[misc]
        return [t.result() for t in tasks]
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["RemoteWorker", "RemoteWorkerError"]
