"""The offline differential's shared pieces: the same ``LLM`` call sent to vLLM (``VllmOffline``) and to
``rlhf_rewards.LLM``, both answers in one JSON shape, compared with ``compat.check("offline", ...)``.

Arguments are written once, in the oracle's form (:func:`~tests.compat.vllm_live.oracle.pooling_params`,
:func:`~tests.compat.vllm_live.oracle.lora_request`), and translated for this project's ``LLM``. An answer
is the list vLLM's ``vllm_rpc`` returns (``prompt_token_ids`` plus ``data``/``probs``/``embedding``/
``score``), or ``{"status": "error", "error": family}`` when the call raises: ``family`` is ``ValueError``
(vLLM's ``ValueError``/``VLLMValidationError``, this project's ``RequestError``) or the exception's own type
name. With ``messages=True`` (strict mode) the message is compared too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.compat.vllm_live.oracle import VllmError, VllmOffline

#: Tiny checkpoints vLLM's CPU attention accepts (it refuses head_dim 16): hidden 128, 2 heads of 64, GQA 2/1.
DIMS: dict[str, Any] = {
    "hidden_size": 128,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 64,
}
#: Every engine of the differential, ours and vLLM's, gets this length (vLLM's check needs a bound).
MAX_MODEL_LEN = 64
PROMPTS = [
    "Hello, my name is Ada and I like mathematics.",
    "The quick brown fox jumps over the lazy dog.",
    "What is 12 + 7? The answer is 19.",
]
#: Over every length used in the truncation cases (tiny tokenizer: about one token per 2 characters).
LONG = "Reward models score completions for reinforcement learning from human feedback. " * 2
_VALUE_ERRORS = {"ValueError", "VLLMValidationError", "RequestError"}


def family(type_name: str) -> str:
    """The exception family compared across the two projects."""
    return "ValueError" if type_name in _VALUE_ERRORS else type_name


def _to_ours(value: Any) -> Any:
    from rlhf_rewards import PoolingParams
    from rlhf_rewards.lora.request import LoRARequest

    if isinstance(value, dict):
        if "__pooling_params__" in value:
            return PoolingParams(**value["__pooling_params__"])
        if "__lora__" in value:
            name, lora_id, path = value["__lora__"]
            return LoRARequest(name, lora_id, path)
        return {k: _to_ours(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_to_ours(v) for v in value]
    return value


def _plain(x: Any) -> Any:
    import torch

    if isinstance(x, torch.Tensor):
        return x.float().tolist()
    return x


def ours_call(llm: Any, method: str, *args: Any, **kwargs: Any) -> Any:
    """``llm.<method>(*args, use_tqdm=False, **kwargs)`` with the oracle's argument and answer shapes."""
    args, kwargs = _to_ours(list(args)), _to_ours(kwargs)
    if method == "attr":
        result = getattr(llm, args[0])
        return list(result) if isinstance(result, (tuple, set)) else result
    outputs = getattr(llm, method)(*args, use_tqdm=False, **kwargs)
    answer = []
    for out in outputs:
        inner = out.outputs
        item: dict[str, Any] = {"prompt_token_ids": list(out.prompt_token_ids)}
        for name in ("data", "probs", "embedding", "score"):
            if hasattr(inner, name):
                item[name] = _plain(getattr(inner, name))
        answer.append(item)
    return answer


def _error(type_name: str, message: str, messages: bool) -> dict[str, Any]:
    err = {"status": "error", "error": family(type_name)}
    if messages:
        err["message"] = message
    return err


def run_ours(llm: Any, method: str, *args: Any, messages: bool = False, **kwargs: Any) -> Any:
    """Our answer, an error as data."""
    try:
        return ours_call(llm, method, *args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - compared as data
        return _error(type(exc).__name__, str(exc), messages)


def run_theirs(vllm: VllmOffline, method: str, *args: Any, messages: bool = False, **kwargs: Any) -> Any:
    """vLLM's answer, an error as data."""
    try:
        return vllm.call(method, *args, **kwargs)
    except VllmError as exc:
        return _error(exc.type, exc.message, messages)


def _sorted(method: str, answer: Any) -> Any:
    if method == "attr" and isinstance(answer, list):
        return sorted(answer)
    return answer


class Pair:
    """One checkpoint served by vLLM and by this project (and, optionally, this project in strict mode).

    :meth:`check` sends one call to both and records it as ``compat.check("offline", case, model, ...)``;
    :meth:`check_strict` also sends it to the strict engine, which must give vLLM's answer exactly (errors:
    family and message).
    """

    def __init__(self, compat: Any, model: str, vllm: VllmOffline, ours: Any, strict: Any = None) -> None:
        self.compat, self.model, self.vllm, self.ours, self.strict = compat, model, vllm, ours, strict

    def answers(self, method: str, *args: Any, messages: bool = False, **kwargs: Any) -> tuple[Any, Any]:
        """``(ours, vLLM's)`` for one call (an attribute's list sorted: vLLM's task lists come from a set)."""
        return (
            _sorted(method, run_ours(self.ours, method, *args, messages=messages, **kwargs)),
            _sorted(method, run_theirs(self.vllm, method, *args, messages=messages, **kwargs)),
        )

    def check(self, case: str, method: str, *args: Any, deliberate: str | None = None, **kwargs: Any) -> Any:
        """Compare one call; with ``deliberate`` the answers must differ and the strict engine must match."""
        ours, theirs = self.answers(method, *args, **kwargs)
        self.compat.check("offline", case, self.model, ours, theirs, deliberate=deliberate)
        if deliberate is not None and self.strict is not None:
            self.check_strict(case, method, *args, **kwargs)
        return theirs

    def check_strict(self, case: str, method: str, *args: Any, **kwargs: Any) -> None:
        """The strict engine's answer equals vLLM's (an error's message included)."""
        ours = _sorted(method, run_ours(self.strict, method, *args, messages=True, **kwargs))
        theirs = _sorted(method, run_theirs(self.vllm, method, *args, messages=True, **kwargs))
        self.compat.check("offline", f"strict: {case}", self.model, ours, theirs)


def vllm_engine(model: str | os.PathLike[str], **kwargs: Any) -> Iterator[VllmOffline]:
    """A fixture body: one vLLM engine (``max_model_len`` = :data:`MAX_MODEL_LEN`), closed afterwards."""
    kwargs.setdefault("max_model_len", MAX_MODEL_LEN)
    engine = VllmOffline(model, **kwargs)
    try:
        yield engine
    finally:
        engine.close()


def ours_engine(model: str | os.PathLike[str], **kwargs: Any) -> Any:
    """This project's ``LLM`` on CPU in float32 with the same length."""
    from rlhf_rewards import LLM

    kwargs.setdefault("max_model_len", MAX_MODEL_LEN)
    return LLM(str(model), device="cpu", dtype="float32", **kwargs)


def build(tmp_path_factory: pytest.TempPathFactory, architecture: str, name: str, **fields: Any) -> Path:
    """A tiny ``architecture`` checkpoint vLLM's CPU build runs (:data:`DIMS`), in a fresh folder."""
    from tests.support.checkpoints import build_checkpoint

    fields = {**DIMS, **fields}
    return build_checkpoint(architecture, tmp_path_factory.mktemp(name), **fields)


def add_bos_eos(path: str | os.PathLike[str], bos: str = "<|im_start|>", eos: str = "<|endoftext|>") -> Path:
    """Give the checkpoint's tokenizer a post-processor that writes ``bos`` before and ``eos`` after every text
    (a pair: ``bos A eos B eos``), so truncation inside the tokenizer (which keeps them) and slicing the ids
    afterwards (which would drop the EOS) differ."""
    import json

    path = Path(path)
    data = json.loads((path / "tokenizer.json").read_text())
    ids = {t["content"]: t["id"] for t in data["added_tokens"]}

    def special(token: str, type_id: int = 0) -> dict[str, Any]:
        return {"SpecialToken": {"id": token, "type_id": type_id}}

    def seq(name: str, type_id: int) -> dict[str, Any]:
        return {"Sequence": {"id": name, "type_id": type_id}}

    data["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [special(bos), seq("A", 0), special(eos)],
        "pair": [special(bos), seq("A", 0), special(eos), seq("B", 1), special(eos, 1)],
        "special_tokens": {t: {"id": t, "ids": [ids[t]], "tokens": [t]} for t in (bos, eos)},
    }
    (path / "tokenizer.json").write_text(json.dumps(data))
    return path


__all__ = [
    "DIMS",
    "LONG",
    "MAX_MODEL_LEN",
    "PROMPTS",
    "Pair",
    "add_bos_eos",
    "build",
    "family",
    "ours_call",
    "ours_engine",
    "run_ours",
    "run_theirs",
    "vllm_engine",
]
