"""``RemoteWorker``: the engine behind one or more ``rlhf-rewards serve`` URLs.

A call is split into requests of at most ``max_batch_size`` prompts (prompts that share pooling parameters and
adapter travel together), sent concurrently over a pooled HTTP client to the least-loaded URL, and put back
in input order. Failed requests are retried, and failing URLs marked down, by the policy of
:mod:`rlhf_rewards.workers.retry`; a 413 halves the request. Texts are sent as texts and token ids as token
ids, so the server tokenizes exactly as the in-process engine does and the scores are the same.

A client mistake comes back as the server's :class:`~rlhf_rewards.errors.RequestError` (sent in the
``x-rlhf-rewards-error`` header), moved from the request's ``input[i]`` to the caller's ``prompts[j]``.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Sequence
from typing import Any

from rlhf_rewards.checks import check_positive_int
from rlhf_rewards.contract import ModelInfo, params_key, params_to_fields, truncation_of
from rlhf_rewards.entrypoints.generative_scoring import GenerativeScoringOutput
from rlhf_rewards.errors import RequestError
from rlhf_rewards.lora.request import LoRARequest
from rlhf_rewards.outputs import PoolingRequestOutput
from rlhf_rewards.pooling.params import PoolingParams
from rlhf_rewards.workers.base import WorkerHealth
from rlhf_rewards.workers.calls import GenerativeScoreCall
from rlhf_rewards.workers.endpoint_pool import Endpoint, EndpointPool
from rlhf_rewards.workers.http_wire import (
    RemoteWorkerError,
    TooLarge,
    answer_items,
    classify_status,
    client_error,
    error_message,
    normalize_url,
    parse_retry_after,
    pooling_output,
)
from rlhf_rewards.workers.loop import (
    CheckedEncode,
    CheckedPrompt,
    Conversation,
    LoopThreadWorker,
    gather_or_raise,
)
from rlhf_rewards.workers.retry import EndpointBusy, EndpointFailure, RetryPolicy

API_KEY_ENV = "RLHF_REWARDS_API_KEY"


class RemoteWorker(LoopThreadWorker):
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

        # The constructor's arguments: a pickled worker (TRL's AsyncGRPOTrainer spawns its scorer) is built
        # again from them, with its own client, in the new process. A key from the environment is read there.
        self._init_args = (
            (urls, api_key),
            {
                "timeout": timeout,
                "max_retries": max_retries,
                "max_concurrency": max_concurrency,
                "max_batch_size": max_batch_size,
                "retry": retry,
                "down_after": down_after,
                "down_for": down_for,
            },
        )
        url_list = [urls] if isinstance(urls, str) else list(urls)
        self.urls = [normalize_url(u) for u in url_list]
        check_positive_int("max_concurrency", max_concurrency)
        check_positive_int("max_batch_size", max_batch_size)
        if not timeout or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}.")
        self.policy = retry or RetryPolicy(max_retries=max_retries)
        self.pool = EndpointPool(
            self.urls, down_after=down_after, down_for=down_for, max_total_in_flight=max_concurrency
        )
        self.max_batch_size = max_batch_size
        self._server_limits: dict[str, Any] = {}
        key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        super().__init__("rlhf-rewards-remote")

        async def make_client() -> Any:
            connections = max_concurrency * len(self.urls)
            return httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
            )

        self._client = self._run(make_client())

    def __repr__(self) -> str:
        return f"RemoteWorker(urls={self.urls})"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as its constructor call: unpickled, it reconnects to the same URLs (fresh client and stats)."""
        args, kwargs = self._init_args
        return _rebuild_remote, (args, kwargs)

    # ------------------------------------------------------------------ RewardWorker
    def health(self) -> WorkerHealth:
        """``GET /health`` on every URL; a URL is down if it does not answer 200 or is marked down after
        failing requests (until its cool-down ends). ``ok`` when at least one URL is up."""
        return self._run(self._health())

    def _close_resources(self) -> None:
        self._run(self._client.aclose())

    # ------------------------------------------------------------------ HTTP
    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """One logical request, sent through the pool until a URL answers (see :mod:`~rlhf_rewards.workers.retry`)."""
        import httpx

        async def attempt(endpoint: Endpoint) -> dict[str, Any]:
            try:
                response = await self._client.request(method, endpoint.target + path, json=body)
            except httpx.TransportError as exc:  # connection refused/reset, timeouts, broken reads
                raise EndpointFailure(
                    f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                ) from exc
            kind = classify_status(response.status_code)
            if kind == "ok":
                try:
                    return response.json()
                except ValueError:
                    kind = "retry"
            message = error_message(response)
            if kind == "too_large":
                raise TooLarge(message)
            if kind == "fatal":
                raise client_error(response, message, endpoint.name)
            error = f"HTTP {response.status_code}: {message}"
            if kind == "busy":
                raise EndpointBusy(error, parse_retry_after(response.headers.get("retry-after")))
            raise EndpointFailure(error)

        return await self.pool.call(
            attempt, self.policy, what=f"{method} {path}", error=RemoteWorkerError, stats=self.stats
        )

    async def _fetch_model_info(self) -> ModelInfo:
        data = await self._request("GET", "/v1/model_info")
        self._server_limits = dict(data.get("server_limits") or {})
        return ModelInfo.from_dict(data)

    async def _send_render_chat(
        self, conversations: list[Conversation], chat_template: str | None, add_generation_prompt: bool
    ) -> list[list[int]]:
        template = {} if chat_template is None else {"chat_template": chat_template}
        forms = [
            {"messages": c, "add_generation_prompt": add_generation_prompt, **template} for c in conversations
        ]
        return await self._tokenize(forms)

    async def _tokenize(self, forms: list[dict[str, Any]]) -> list[list[int]]:
        """``POST /tokenize`` once per form (a ``prompt`` or ``messages`` body), concurrently."""
        model = (await self._model_info()).model
        answers = await gather_or_raise(
            [self._request("POST", "/tokenize", {"model": model, **f}) for f in forms]
        )
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

    # ------------------------------------------------------------------ scoring
    async def _send_encode(self, call: CheckedEncode) -> list[PoolingRequestOutput]:
        info = await self._model_info()
        task, prompts = call.task, call.prompts
        groups: dict[tuple[Any, ...], list[int]] = {}
        bodies: dict[tuple[Any, ...], dict[str, Any]] = {}
        for i, ((kind, _), params, lora) in enumerate(zip(prompts, call.params, call.loras, strict=True)):
            params = params or PoolingParams()
            params.verify(task)
            self._check_served(info, lora, index=i)
            truncate = truncation_of(params, call.truncate_prompt_tokens)
            key = (kind, params_key(params), truncate, lora.lora_name if lora else None)
            if key not in groups:
                body: dict[str, Any] = {
                    "model": lora.lora_name if lora else info.model,
                    "task": task,
                    "return_details": True,
                    **params_to_fields(params),
                }
                if not call.add_special_tokens:
                    body["add_special_tokens"] = False  # text prompts only; the server's default is true
                if truncate is not None:
                    body["truncate_prompt_tokens"] = truncate
                    body["truncation_side"] = "left"  # the worker contract: keep the last k tokens
                groups[key], bodies[key] = [], body
            groups[key].append(i)
        size = self._batch_size()
        results: list[PoolingRequestOutput | None] = [None] * len(prompts)
        jobs = []
        for key, indices in groups.items():
            for lo in range(0, len(indices), size):
                jobs.append(self._send_chunk(bodies[key], indices[lo : lo + size], prompts, results))
        await gather_or_raise(jobs)
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:  # cannot happen unless the server answered with fewer items; never return partial results
            raise RemoteWorkerError(f"No result for prompts {missing[:10]}.")
        return [r for r in results if r is not None]

    async def _send_chunk(
        self,
        base: dict[str, Any],
        indices: list[int],
        prompts: list[CheckedPrompt],
        results: list[PoolingRequestOutput | None],
    ) -> None:
        chunk_id = uuid.uuid4().hex  # the server echoes it in its response id and logs
        body = {**base, "input": [prompts[i][1] for i in indices], "request_id": chunk_id}
        try:
            answer = await self._request("POST", "/pooling", body)
        except TooLarge as exc:
            if len(indices) == 1:
                raise RequestError(
                    f"alone is over the server's request limit: {exc}", field="prompts", index=indices[0]
                ) from None
            half = len(indices) // 2
            await gather_or_raise(
                [
                    self._send_chunk(base, indices[:half], prompts, results),
                    self._send_chunk(base, indices[half:], prompts, results),
                ]
            )
            return
        except RequestError as exc:  # the server names the chunk's input[j]: name the caller's prompt instead
            if exc.field != "input":
                raise
            j = exc.index
            index = indices[j] if j is not None and 0 <= j < len(indices) else None
            raise exc.located(field="prompts", index=index, subfield=None) from None
        for item in answer_items(answer, len(indices), "prompts"):
            j = item["index"]
            results[indices[j]] = pooling_output(f"{chunk_id}-{j}", item)

    def tokenize(self, texts: Sequence[str], *, add_special_tokens: bool = False) -> list[list[int]]:
        """Token ids of each text, by the server's ``POST /tokenize`` (its ``prompt`` form)."""

        return self._run(
            self._tokenize([{"prompt": t, "add_special_tokens": add_special_tokens} for t in texts])
        )

    async def _send_generative_score(self, call: GenerativeScoreCall) -> list[GenerativeScoringOutput]:
        """``POST /generative_scoring`` (items in chunks of at most ``max_batch_size``; with ``all_labels``, once
        per label with that label first: the server merges the reads, whose prompts are identical, into one
        forward)."""
        info = await self._model_info()
        lora_request, items, all_labels = call.lora_request, call.items, call.all_labels
        self._check_served(info, lora_request)
        start = time.perf_counter()
        labels = [int(t) for t in call.label_token_ids]
        base = {
            "model": lora_request.lora_name if lora_request else info.model,
            "query": call.query,
            "apply_softmax": call.apply_softmax,
            "item_first": call.item_first,
            "add_special_tokens": call.add_special_tokens,
        }
        size = self._batch_size()
        chunks = [(lo, items[lo : lo + size]) for lo in range(0, len(items), size)] or [(0, [])]
        rotations = list(range(len(labels))) if all_labels and len(labels) > 1 else [0]

        async def send(chunk: list[Any], j: int) -> dict[str, Any]:
            order = [labels[j], *labels[:j], *labels[j + 1 :]] if labels else labels
            body = {**base, "items": chunk, "label_token_ids": order, "request_id": uuid.uuid4().hex}
            return await self._request("POST", "/generative_scoring", body)

        answers = await gather_or_raise([send(chunk, j) for j in rotations for _, chunk in chunks])
        probs: list[list[float | None]] = [[None] * len(rotations) for _ in items]
        errors: list[str | None] = [None] * len(items)
        tokens = 0
        for n, answer in enumerate(answers):
            j, (lo, chunk) = rotations[n // len(chunks)], chunks[n % len(chunks)]
            data = answer_items(answer, len(chunk), "items", "generative-scoring ")
            tokens += int((answer.get("usage") or {}).get("prompt_tokens") or 0)
            for item in data:
                i = lo + int(item["index"])
                score = item.get("score")
                if score is None:
                    errors[i] = item.get("error") or "the server returned no score for this item"
                probs[i][rotations.index(j)] = score
        outputs = []
        for i, (row, error) in enumerate(zip(probs, errors, strict=True)):
            values = [float("nan") if p is None else float(p) for p in row]
            outputs.append(
                GenerativeScoringOutput(
                    index=i,
                    score=values[0],
                    error=error,
                    label_probs=values if all_labels or len(labels) == 1 else None,
                )
            )
        self.stats.record(outputs, time.perf_counter() - start, tokens=tokens // len(rotations))
        return outputs

    def _batch_size(self) -> int:
        """Most prompts or items per request: ``max_batch_size``, capped by the server's own limit."""
        return min(
            self.max_batch_size, int(self._server_limits.get("max_client_batch_size") or self.max_batch_size)
        )

    def _check_served(self, info: ModelInfo, lora: LoRARequest | None, index: int | None = None) -> None:
        """Raise a ``RequestError`` on ``lora_request`` if the servers do not serve ``lora`` by name."""
        if lora is not None and lora.lora_name not in info.lora_modules:
            raise RequestError(
                f"names the adapter {lora.lora_name!r}, which {self.urls} do not serve (they serve "
                f"{info.lora_modules}); start the server with --lora-modules NAME=PATH.",
                field="lora_request",
                index=index,
            )


__all__ = ["RemoteWorker"]


def _rebuild_remote(args: tuple[Any, ...], kwargs: dict[str, Any]) -> RemoteWorker:
    """A :class:`RemoteWorker` unpickled: the same constructor call (see ``RemoteWorker.__reduce__``)."""
    return RemoteWorker(*args, **kwargs)
