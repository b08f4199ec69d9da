"""The online differential: the same HTTP request to vLLM 0.32's server and to ``rlhf-rewards serve``.

:class:`Servers` holds, for one checkpoint, vLLM's server (:class:`~tests.compat.vllm_live.oracle.VllmServer`),
ours, and optionally ours with ``--strict-vllm-compat``; :meth:`Servers.compare` sends one request to each and
records the comparison with ``compat.check("online", ...)``. An answer is ``{"status": code, "body": ...}``:
the JSON body (or the text), with

- error messages left out unless the case asks for them (the status, ``type``, ``param`` and ``code`` are
  always compared; messages differ on purpose: this server's name the field, the limit and the fix);
- ``base64`` data decoded to numbers (so the numbers compare to the tolerance, not their last bits);
- ``bytes``/``bytes_only`` bodies decoded to numbers, with the ``metadata`` header beside them.

A request whose difference is kept on purpose names its ``DELIBERATE`` key; with a strict server the same
request must then get vLLM's answer from it (``strict: <case>``).
"""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.compat.vllm_live.oracle import VllmServer
from tests.support.checkpoints import build_checkpoint
from tests.support.server import ServerProcess

#: vLLM's CPU attention refuses head_dim 16: every online checkpoint has head_dim 64.
DIMS = {"hidden_size": 128, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 64}
#: Deliberate differences that strict mode keeps (informational answers, not refusals).
NOT_STRICT = frozenset({"models-owned-by", "version-route"})
#: Fields of an answer that are never compared (ids and clocks; oracle.VOLATILE holds the rest).
_NOT_COMPARED = "<not compared>"


def build(architecture: str, path: Path, **fields: Any) -> str:
    """A tiny checkpoint vLLM's CPU build can run."""
    return str(build_checkpoint(architecture, path, **{**DIMS, **fields}))


def _decode_b64(text: str) -> list[float]:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").astype(float).tolist()


def _normalize_body(body: Any, messages: bool) -> Any:
    if isinstance(body, dict):
        out = {}
        for key, value in body.items():
            if key == "error" and isinstance(value, dict) and not messages:
                value = {**value, "message": _NOT_COMPARED}
            elif key in ("data", "embedding") and isinstance(value, str):
                value = _decode_b64(value)  # base64 (float32, little-endian on this machine)
            else:
                value = _normalize_body(value, messages)
            out[key] = value
        return out
    if isinstance(body, list):
        return [_normalize_body(v, messages) for v in body]
    return body


def ask(
    base: str,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
    messages: bool = False,
    timeout: float = 120.0,
) -> dict[str, Any]:
    """``{"status", "body"}`` of one request (JSON bodies parsed, binary bodies decoded, messages dropped)."""
    kw: dict[str, Any] = {"headers": dict(headers or {})}
    if raw is not None:
        kw["content"] = raw
        kw["headers"].setdefault("content-type", "application/json")
    elif body is not None:
        kw["json"] = body
    r = httpx.request(method, base + path, timeout=timeout, **kw)
    content_type = r.headers.get("content-type", "")
    parsed: Any
    if content_type.startswith("application/octet-stream"):
        meta = r.headers.get("metadata")
        parsed = {
            "numbers": np.frombuffer(r.content, dtype="<f4").astype(float).tolist(),
            "metadata": json.loads(meta) if meta else None,
        }
    else:
        try:
            parsed = r.json()
        except ValueError:
            parsed = r.text
    return {"status": r.status_code, "body": _normalize_body(parsed, messages)}


class Servers:
    """vLLM's server and ours (and ours in strict mode) on one checkpoint; see the module docstring."""

    def __init__(self, compat: Any, model: str, name: str, *flags: str, strict: bool = True) -> None:
        self.compat = compat
        self.model = model
        self.name = name
        self.failures: list[str] = []
        self.vllm = VllmServer(model, *flags, threads=1)
        self._stack = contextlib.ExitStack()
        self._stack.callback(self.vllm.close)
        try:
            self.ours = self._stack.enter_context(ServerProcess(model, *flags)).url
            self.strict = (
                self._stack.enter_context(ServerProcess(model, *flags, "--strict-vllm-compat")).url
                if strict
                else None
            )
        except BaseException:
            self._stack.close()
            raise

    def close(self) -> None:
        """Stop every server."""
        self._stack.close()

    def compare(
        self,
        case: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        deliberate: str | None = None,
        messages: bool = False,
        atol: float = 1e-5,
        select: Any = None,
    ) -> dict[str, Any]:
        """Send the request to both; fail unless equal (or, with ``deliberate``, different, and equal from the
        strict server). ``select``: a function of an answer keeping what is compared. Returns vLLM's answer."""
        pick = select or (lambda a: a)
        theirs = pick(ask(self.vllm.url, method, path, body, raw=raw, messages=messages))
        ours = pick(ask(self.ours, method, path, body, raw=raw, messages=messages))
        self._check(case, ours, theirs, deliberate, atol)
        if deliberate is not None and deliberate not in NOT_STRICT and self.strict is not None:
            strict = pick(ask(self.strict, method, path, body, raw=raw, messages=messages))
            self._check(f"strict: {case}", strict, theirs, None, atol)
        return theirs

    def _check(self, case: str, ours: Any, theirs: Any, deliberate: str | None, atol: float) -> None:
        try:
            self.compat.check("online", case, self.name, ours, theirs, deliberate=deliberate, atol=atol)
        except AssertionError as exc:
            self.failures.append(str(exc).split("\nassert ")[0])

    def done(self) -> None:
        """Fail with every mismatch of the test (all are recorded; one test reports them all)."""
        failures, self.failures = self.failures, []
        assert not failures, f"{len(failures)} online mismatches:\n" + "\n".join(failures)

    def compare_strict(self, case: str, method: str, path: str, body: Any = None, **kw: Any) -> None:
        """The strict server's answer equals vLLM's (a request the default server also answers as vLLM)."""
        assert self.strict is not None
        theirs = ask(self.vllm.url, method, path, body, **kw)
        self._check(f"strict: {case}", ask(self.strict, method, path, body, **kw), theirs, None, 1e-5)


@contextlib.contextmanager
def servers(compat: Any, model: str, name: str, *flags: str, strict: bool = True) -> Iterator[Servers]:
    """:class:`Servers` for the duration of a block (a module-scoped fixture)."""
    pair = Servers(compat, model, name, *flags, strict=strict)
    try:
        yield pair
    finally:
        pair.close()


# --- the shared corpus ------------------------------------------------------------------------------------

#: Requests every pooling server refuses the same way (route, body or raw bytes, case name).
INVALID_COMMON: list[tuple[str, str, Any, bytes | None]] = [
    ("missing body fields", "/pooling", {}, None),
    ("bad JSON", "/pooling", None, b'{"input": "hi"'),
    ("body not an object", "/pooling", None, b'["hi"]'),
    ("empty body", "/pooling", None, b""),
    ("input of wrong type", "/pooling", {"input": 42}, None),
    ("input mixing strings and ids", "/pooling", {"input": ["a", 1]}, None),
    ("float token ids with fraction", "/pooling", {"input": [1.5, 2.0]}, None),
    ("empty input list", "/pooling", {"input": []}, None),
    ("empty string", "/pooling", {"input": ""}, None),
    ("empty string in a list", "/pooling", {"input": ["ok", ""]}, None),
    ("empty token list", "/pooling", {"input": [[1, 2], []]}, None),
    ("token id out of vocabulary", "/pooling", {"input": [[1, 2, 100000]]}, None),
    ("negative token id", "/pooling", {"input": [3, -1]}, None),
    ("over max_model_len", "/pooling", {"input": [list(range(5, 25)) * 30]}, None),
    (
        "truncate_prompt_tokens over max_model_len",
        "/pooling",
        {"input": "hi", "truncate_prompt_tokens": 600},
        None,
    ),
    ("truncate_prompt_tokens 0", "/pooling", {"input": "hi", "truncate_prompt_tokens": 0}, None),
    ("truncate_prompt_tokens -2", "/pooling", {"input": "hi", "truncate_prompt_tokens": -2}, None),
    ("truncate_prompt_tokens 2.5", "/pooling", {"input": "hi", "truncate_prompt_tokens": 2.5}, None),
    ("truncation_side unknown", "/pooling", {"input": "hi", "truncation_side": "middle"}, None),
    ("unknown task", "/pooling", {"input": "hi", "task": "bogus"}, None),
    ("removed task encode", "/pooling", {"input": "hi", "task": "encode"}, None),
    ("removed task reward", "/pooling", {"input": "hi", "task": "reward"}, None),
    ("task plugin", "/pooling", {"input": "hi", "task": "plugin"}, None),
    ("unknown model", "/pooling", {"input": "hi", "model": "no-such-model"}, None),
    ("use_activation not a boolean", "/pooling", {"input": "hi", "use_activation": "maybe"}, None),
    ("encoding_format unknown", "/pooling", {"input": "hi", "encoding_format": "nope"}, None),
    ("embed_dtype unknown", "/pooling", {"input": "hi", "embed_dtype": "int8"}, None),
    ("empty messages", "/pooling", {"messages": []}, None),
    ("message without role", "/pooling", {"messages": [{"content": "x"}]}, None),
    ("messages not a list", "/pooling", {"messages": "x"}, None),
    (
        "continue_final_message and add_generation_prompt",
        "/pooling",
        {
            "messages": [{"role": "user", "content": "x"}],
            "add_generation_prompt": True,
            "continue_final_message": True,
        },
        None,
    ),
    ("empty cache_salt", "/pooling", {"input": "hi", "cache_salt": ""}, None),
    ("cache_salt with a slash", "/pooling", {"input": "hi", "cache_salt": "a/b"}, None),
    ("mm_processor_kwargs", "/pooling", {"input": "hi", "mm_processor_kwargs": {"a": 1}}, None),
    ("tokenize without prompt", "/tokenize", {}, None),
    ("tokenize prompt of wrong type", "/tokenize", {"prompt": 5}, None),
    ("tokenize unknown model", "/tokenize", {"prompt": "hi", "model": "no-such-model"}, None),
    ("detokenize tokens of wrong type", "/detokenize", {"tokens": "a"}, None),
    ("detokenize negative id", "/detokenize", {"tokens": [-1]}, None),
    ("detokenize unknown model", "/detokenize", {"tokens": [1], "model": "no-such-model"}, None),
]

#: Lax-mode values vLLM's schemas accept (pydantic's lax mode coerces them).
LAX_VALUES: list[tuple[str, dict[str, Any]]] = [
    ("use_activation 'yes'", {"use_activation": "yes"}),
    ("use_activation 0", {"use_activation": 0}),
    ("use_activation 'false'", {"use_activation": "false"}),
    ("truncate_prompt_tokens '2'", {"truncate_prompt_tokens": "2", "truncation_side": "left"}),
    ("truncate_prompt_tokens 2.0", {"truncate_prompt_tokens": 2.0, "truncation_side": "left"}),
    ("add_special_tokens 'no'", {"add_special_tokens": "no"}),
    ("priority 1", {"priority": 1}),
]

#: Routes and methods every server answers the same way whatever the model.
PLAIN_ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/health", None),
    ("GET", "/ping", None),
    ("POST", "/ping", None),
    ("GET", "/v1/models", None),
    ("POST", "/tokenize", {"prompt": "hello world"}),
    ("POST", "/tokenize", {"prompt": "hello world", "add_special_tokens": False, "return_token_strs": True}),
    ("POST", "/tokenize", {"messages": [{"role": "user", "content": "hi"}]}),
    ("POST", "/tokenize", {"messages": [{"role": "user", "content": "hi"}], "add_generation_prompt": False}),
    ("POST", "/detokenize", {"tokens": [1, 2, 3, 264, 393, 84]}),
    ("POST", "/detokenize", {"tokens": []}),
    ("POST", "/detokenize", {"tokens": [100000]}),
    ("GET", "/no-such-route", None),
    ("POST", "/no-such-route", {"input": "hi"}),
    ("GET", "/pooling", None),
    ("PUT", "/pooling", {"input": "hi"}),
    ("DELETE", "/health", None),
    ("GET", "/tokenizer_info", None),
]


def run_common(pair: Servers) -> None:
    """The routes, invalid requests and lax values every checkpoint answers as vLLM does."""
    for method, path, body in PLAIN_ROUTES:
        deliberate = "models-owned-by" if path == "/v1/models" else None
        pair.compare(
            f"{method} {path} {json.dumps(body) if body is not None else ''}".strip(),
            method,
            path,
            body,
            deliberate=deliberate,
        )
    pair.compare("GET /version", "GET", "/version", deliberate="version-route")
    pair.compare("GET /metrics (status)", "GET", "/metrics", select=lambda a: a["status"])
    for case, path, body, raw in INVALID_COMMON:
        pair.compare(f"invalid: {case}", "POST", path, body, raw=raw)
    for case, fields in LAX_VALUES:
        pair.compare(f"lax: {case}", "POST", "/pooling", {"input": "hi there you", **fields})
