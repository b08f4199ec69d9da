"""A scripted stand-in for ``rlhf-rewards serve`` (in a thread) to test the client's retry behaviour exactly."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from rlhf_rewards.errors import ERROR_HEADER, RequestError
from tests.support.server import AppThread

INFO = {
    "model": "fake",
    "architecture": "Fake",
    "kind": "outcome",
    "tasks": ["classify"],
    "default_task": "classify",
    "pooler_configs": {},
    "num_labels": 1,
    "max_model_len": 512,
    "lora_modules": [],
    "server_limits": {"max_client_batch_size": 1024},
}


def score(prompt: Any) -> float:
    """The fake model: a text scores its length, token ids their sum."""
    return float(len(prompt)) if isinstance(prompt, str) else float(sum(prompt))


class FakeServer(AppThread):
    """Answers ``/pooling`` by script: each call pops the next action (the last one repeats).

    Actions: ``"ok"``, ``"503:<seconds>"`` (with Retry-After), ``"500"``, ``"400"`` (with the structured
    error header), ``"400-plain"`` (without), ``"sleep:<seconds>"``
    (then ok), ``"413>N"`` (413 when a request has more than N inputs, else ok).
    """

    def __init__(self, *script: str) -> None:
        self.script = list(script) or ["ok"]
        self.calls: list[int] = []  # number of inputs of each /pooling call
        app = FastAPI()

        @app.get("/v1/model_info")
        async def info() -> dict:
            return INFO

        @app.get("/health")
        async def health() -> dict:
            return {"status": "ok"}

        @app.post("/pooling")
        async def pooling(request: Request) -> JSONResponse:
            body = await request.json()
            inputs = body["input"]
            self.calls.append(len(inputs))
            action = self.script.pop(0) if len(self.script) > 1 else self.script[0]
            if action.startswith("503"):
                return JSONResponse(
                    {
                        "object": "error",
                        "message": "queue full",
                        "type": "ServiceUnavailableError",
                        "param": None,
                        "code": 503,
                    },
                    503,
                    headers={"Retry-After": action.split(":")[1]},
                )
            if action == "500":
                return JSONResponse(
                    {
                        "object": "error",
                        "message": "boom",
                        "type": "InternalServerError",
                        "param": None,
                        "code": 500,
                    },
                    500,
                )
            if action == "400":  # a client mistake, structured in the header as the real server sends it
                error = RequestError("is an empty string", field="input", index=1)
                return JSONResponse(
                    {
                        "object": "error",
                        "message": error.message,
                        "type": "BadRequestError",
                        "param": "input",
                        "code": 400,
                    },
                    400,
                    headers={ERROR_HEADER: json.dumps(error.to_dict())},
                )
            if action == "400-plain":  # the same mistake from a server that sends no structured header
                return JSONResponse(
                    {
                        "object": "error",
                        "message": "input[1] is an empty string",
                        "type": "BadRequestError",
                        "param": "input",
                        "code": 400,
                    },
                    400,
                )
            if action.startswith("413>") and len(inputs) > int(action[4:]):
                return JSONResponse(
                    {
                        "object": "error",
                        "message": "too large",
                        "type": "RequestTooLargeError",
                        "param": None,
                        "code": 413,
                    },
                    413,
                )
            if action.startswith("sleep:"):
                await asyncio.sleep(float(action.split(":")[1]))
            data = [
                {"index": i, "object": "pooling", "data": [score(p)], "shape": [1], "prompt_token_ids": [1]}
                for i, p in enumerate(inputs)
            ]
            return JSONResponse(
                {
                    "id": "pool-fake",
                    "object": "list",
                    "created": 0,
                    "model": "fake",
                    "data": data,
                    "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)},
                }
            )

        super().__init__(app)
