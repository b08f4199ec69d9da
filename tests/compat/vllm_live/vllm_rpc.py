"""Runs inside ``.venv-vllm`` (vLLM's CPU build): one ``vllm.LLM`` driven over stdin/stdout, JSON per line.

Started by :class:`tests.compat.vllm_live.oracle.VllmOffline`; imports nothing of this project, so what it
answers is vLLM's own behaviour. Requests: ``{"method": name, "args": [...], "kwargs": {...}}``; special
values are tagged dicts (``{"__pooling_params__": {...}}``, ``{"__lora__": [name, id, path]}``). Answers:
``{"ok": result}`` or ``{"error": {"type": ..., "message": ...}}``.
"""

from __future__ import annotations

import json
import sys
import traceback


def _decode(value, vllm_mod):
    if isinstance(value, dict):
        if "__pooling_params__" in value:
            return vllm_mod.PoolingParams(**value["__pooling_params__"])
        if "__lora__" in value:
            from vllm.lora.request import LoRARequest

            name, lora_id, path = value["__lora__"]
            return LoRARequest(name, lora_id, path)
        return {k: _decode(v, vllm_mod) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v, vllm_mod) for v in value]
    return value


def _tensor(x):
    import torch

    if isinstance(x, torch.Tensor):
        return x.float().tolist()
    return x


def _encode_output(out):
    """One vLLM request output as plain JSON: its prompt ids and its data (whatever the output class)."""
    inner = getattr(out, "outputs", None)
    item = {"prompt_token_ids": list(getattr(out, "prompt_token_ids", []) or [])}
    for name in ("data", "probs", "embedding", "score"):
        if inner is not None and hasattr(inner, name):
            item[name] = _tensor(getattr(inner, name))
    return item


#: vLLM logs to stdout too; answers are the lines that start with this.
MARK = "@@vllm-rpc@@ "


def _answer(obj) -> None:
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    import vllm

    spec = json.loads(sys.argv[1])
    llm_kwargs = _decode(spec.get("kwargs", {}), vllm)
    if "pooler_config" in llm_kwargs and isinstance(llm_kwargs["pooler_config"], dict):
        from vllm.config import PoolerConfig

        llm_kwargs["pooler_config"] = PoolerConfig(**llm_kwargs["pooler_config"])
    llm = vllm.LLM(spec["model"], **llm_kwargs)
    _answer({"ready": True})
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            method = request["method"]
            args = _decode(request.get("args", []), vllm)
            kwargs = _decode(request.get("kwargs", {}), vllm)
            if method == "tokenize":
                result = llm.get_tokenizer()(*args, **kwargs)["input_ids"]
            elif method == "attr":
                result = getattr(llm, args[0])
                result = list(result) if isinstance(result, (tuple, set)) else result
            else:
                outputs = getattr(llm, method)(*args, use_tqdm=False, **kwargs)
                result = [_encode_output(o) for o in outputs]
            answer = {"ok": result}
        except Exception as exc:  # the caller compares errors as data
            answer = {
                "error": {
                    "type": type(exc).__name__,
                    "message": str(exc),
                    "traceback": traceback.format_exc()[-2000:],
                }
            }
        _answer(answer)


if __name__ == "__main__":
    main()
