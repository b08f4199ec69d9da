"""Differential against vLLM 0.32 on real tokenizers: Llama-3's (a BOS tokenizer whose chat template also
writes the BOS) and Qwen2's (no BOS, ChatML), from ``tests.support.real_tokenizers``.

Tiny classifiers on those vocabularies (``LlamaForSequenceClassification`` on Llama-3's 128,256 tokens,
``Qwen3ForSequenceClassification`` on Qwen2's 151,646; hidden 128, head_dim 64 as vLLM's CPU attention
needs) answer the same requests as vLLM; token ids must be equal and scores agree to 1e-5:

- offline (``LLM.encode``): plain text with and without special tokens, a conversation rendered with the
  model's chat template (tokenized without special tokens: one BOS, the template's; with them: the double
  BOS both projects give), ``truncate_prompt_tokens`` with and without ``truncation_side``, and
  ``LLM.render_chat`` against vLLM's tokenization of the rendered text;
- online (``rlhf-rewards serve`` against vLLM's server): ``/pooling``, ``/classify`` and ``/tokenize`` with
  ``messages``, and ``/pooling`` with text, ``add_special_tokens`` and truncation.

At most one vLLM process is alive at a time (:class:`_OneVllm`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.compat.vllm_live.oracle import VllmError, VllmOffline, VllmServer, pooling_params

pytestmark = pytest.mark.slow

DIMS: dict[str, Any] = {
    "hidden_size": 128,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "intermediate_size": 256,
    "max_position_embeddings": 512,
}
MAX_MODEL_LEN = 128
PROMPTS = ["Hello, my name is", "What is 12345 + 7? The answer is 12352.", "naïve café: 毕老师！"]
LONG = "Reward models score completions for reinforcement learning from human feedback. " * 3
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 12 + 7?"},
    {"role": "assistant", "content": "19."},
]
NO_SYSTEM = CONVERSATION[1:]
RAW = {"use_activation": False}


def _build(tmp_path_factory, name: str):
    from tests.support.checkpoints import build_checkpoint, build_hf_model
    from tests.support.real_tokenizers import LLAMA3_PAD, real_tokenizer_dir, tokenizer_length

    root = tmp_path_factory.mktemp(f"real-{name}")
    if name == "llama3":
        tok = real_tokenizer_dir("llama3", pad_token=LLAMA3_PAD)
        # build_hf_model, not build_checkpoint: the Llama builder drops head_dim (it would stay 16).
        return build_hf_model(
            "LlamaForSequenceClassification",
            root / "rm",
            config_cls="LlamaConfig",
            num_labels=1,
            seed=31,
            tokenizer_dir=str(tok),
            vocab_size=tokenizer_length(tok),
            pad_token_id=128004,
            bos_token_id=128000,
            eos_token_id=128009,
            head_dim=64,
            **DIMS,
        )
    tok = real_tokenizer_dir("qwen2")
    return build_checkpoint(
        "Qwen3ForSequenceClassification",
        root / "rm",
        seed=32,
        tokenizer_dir=str(tok),
        vocab_size=tokenizer_length(tok),
        pad_token_id=151643,
        bos_token_id=151643,
        eos_token_id=151645,
        head_dim=64,
        **DIMS,
    )


class _OneVllm:
    """Holds the module's one vLLM process: starting another stops the one held first."""

    def __init__(self) -> None:
        self.held: Any = None

    def start(self, factory: Any) -> Any:
        self.stop()
        self.held = factory()
        return self.held

    def stop(self) -> None:
        if self.held is not None:
            self.held.close()
            self.held = None


@pytest.fixture(scope="module")
def one_vllm() -> Iterator[_OneVllm]:
    slot = _OneVllm()
    yield slot
    slot.stop()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return {name: _build(tmp_path_factory, name) for name in ("llama3", "qwen2")}


class Offline:
    """Our ``LLM`` and vLLM's on one checkpoint; :meth:`check` sends a call to both and compares."""

    def __init__(self, compat, name, path, vllm) -> None:
        from rlhf_rewards import LLM

        self.compat, self.name, self.path, self.vllm = compat, name, path, vllm
        self.ours = LLM(str(path), device="cpu", dtype="float32", max_model_len=MAX_MODEL_LEN)

    def ours_encode(self, prompts, **kwargs) -> Any:
        from rlhf_rewards import PoolingParams

        if "pooling_params" in kwargs:
            kwargs["pooling_params"] = PoolingParams(**kwargs["pooling_params"]["__pooling_params__"])
        try:
            outs = self.ours.encode(prompts, use_tqdm=False, **kwargs)
        except (ValueError, TypeError) as exc:
            return {"status": "error", "error": "ValueError", "message": str(exc)}
        return [
            {"prompt_token_ids": list(o.prompt_token_ids), "data": o.outputs.data.float().tolist()}
            for o in outs
        ]

    def theirs_encode(self, prompts, **kwargs) -> Any:
        try:
            return self.vllm.call("encode", prompts, **kwargs)
        except VllmError as exc:
            family = "ValueError" if exc.type in ("ValueError", "VLLMValidationError") else exc.type
            return {"status": "error", "error": family, "message": exc.message}

    def check(self, case: str, prompts, *, deliberate: str | None = None, **kwargs) -> tuple[Any, Any]:
        kwargs.setdefault("pooling_task", "classify")
        kwargs.setdefault("pooling_params", pooling_params(**RAW))
        ours, theirs = self.ours_encode(prompts, **kwargs), self.theirs_encode(prompts, **kwargs)

        def strip(a):
            return {k: v for k, v in a.items() if k != "message"} if isinstance(a, dict) else a

        self.compat.check(
            "offline", f"real tokenizer: {case}", self.name, strip(ours), strip(theirs), deliberate=deliberate
        )
        return ours, theirs

    def tokenizer(self):
        return self.ours.get_tokenizer()


@pytest.fixture(scope="module", params=["llama3", "qwen2"])
def offline(request, compat, checkpoints, one_vllm) -> Iterator[Offline]:
    path = checkpoints[request.param]
    vllm = one_vllm.start(lambda: VllmOffline(path, max_model_len=MAX_MODEL_LEN))
    yield Offline(compat, request.param, path, vllm)
    one_vllm.stop()


# ---------------------------------------------------------------------------------------------- offline


@pytest.mark.timeout(900)
def test_offline_tokenizer_is_the_same(offline):
    tok = offline.tokenizer()
    for text in [*PROMPTS, LONG, ""]:
        for special in (True, False):
            ours = list(tok(text, add_special_tokens=special)["input_ids"])
            theirs = offline.vllm.call("tokenize", text, add_special_tokens=special)
            offline.compat.check(
                "offline",
                f"real tokenizer: tokenize (add_special_tokens={special})",
                offline.name,
                ours,
                theirs,
            )
    if offline.name == "llama3":
        assert ours == [] and offline.vllm.call("tokenize", "x")[0] == 128000


@pytest.mark.timeout(900)
def test_offline_bos_handling(offline):
    ours, _ = offline.check("text, default special tokens", PROMPTS)
    starts_with_bos = [ids[0] == 128000 for ids in (o["prompt_token_ids"] for o in ours)]
    assert all(starts_with_bos) if offline.name == "llama3" else not any(starts_with_bos)
    offline.check(
        "text, add_special_tokens=False", PROMPTS, tokenization_kwargs={"add_special_tokens": False}
    )
    offline.check(
        "text with add_special_tokens=True", PROMPTS, tokenization_kwargs={"add_special_tokens": True}
    )
    offline.check("token ids", [{"prompt_token_ids": o["prompt_token_ids"]} for o in ours])
    offline.check("text, one prompt", PROMPTS[1])


@pytest.mark.timeout(900)
def test_offline_chat_rendered(offline):
    tok = offline.tokenizer()
    texts = [tok.apply_chat_template(c, tokenize=False) for c in (CONVERSATION, NO_SYSTEM)]
    ours, _ = offline.check(
        "rendered chat, add_special_tokens=False", texts, tokenization_kwargs={"add_special_tokens": False}
    )
    rendered = offline.ours.render_chat([CONVERSATION, NO_SYSTEM])
    offline.compat.check(
        "offline",
        "real tokenizer: render_chat = vLLM's ids of the rendered text",
        offline.name,
        rendered,
        [o["prompt_token_ids"] for o in ours],
    )
    if offline.name == "llama3":
        assert all(ids[0] == 128000 and ids[1] != 128000 for ids in rendered)  # one BOS, the template's
    offline.check("render_chat ids", [{"prompt_token_ids": ids} for ids in rendered])
    doubled, _ = offline.check("rendered chat, default special tokens", texts)
    if offline.name == "llama3":  # vLLM adds a second BOS to a text that has one: so do we
        assert all(o["prompt_token_ids"][:2] == [128000, 128000] for o in doubled)


@pytest.mark.timeout(900)
def test_offline_truncation(offline):
    for k in (1, 5, 17):
        offline.check(
            f"truncate_prompt_tokens={k}",
            [LONG, PROMPTS[1]],
            tokenization_kwargs={"truncate_prompt_tokens": k},
        )
        for side in ("left", "right"):
            offline.check(
                f"truncate_prompt_tokens={k}, truncation_side={side}",
                [LONG, PROMPTS[1]],
                tokenization_kwargs={"truncate_prompt_tokens": k, "truncation_side": side},
            )
        offline.check(
            f"truncate_prompt_tokens={k}, add_special_tokens=False",
            [LONG],
            tokenization_kwargs={"truncate_prompt_tokens": k, "add_special_tokens": False},
        )
    offline.check("truncate_prompt_tokens=-1", [LONG * 3], tokenization_kwargs={"truncate_prompt_tokens": -1})
    offline.check(
        "truncation=True, max_length=9", [LONG], tokenization_kwargs={"truncation": True, "max_length": 9}
    )
    offline.check("over max_model_len, untruncated", [LONG * 3])


# ---------------------------------------------------------------------------------------------- online


class Online:
    def __init__(self, compat, name, ours_url, theirs_url) -> None:
        self.compat, self.name, self.ours_url, self.theirs_url = compat, name, ours_url, theirs_url
        self.models = {
            url: httpx.get(url + "/v1/models", timeout=30).json()["data"][0]["id"]
            for url in (ours_url, theirs_url)
        }

    def post(self, url: str, route: str, body: dict[str, Any]) -> tuple[int, Any]:
        r = httpx.post(url + route, json={"model": self.models[url], **body}, timeout=120)
        return r.status_code, r.json()

    def check(
        self,
        case: str,
        route: str,
        body: dict[str, Any],
        keys=("data", "usage"),
        deliberate: str | None = None,
    ) -> tuple[Any, Any]:
        (s1, ours), (s2, theirs) = (
            self.post(self.ours_url, route, body),
            self.post(self.theirs_url, route, body),
        )

        def pick(s, a):
            return {"status": s, **{k: a.get(k) for k in keys}} if s == 200 else {"status": s}

        self.compat.check(
            "online",
            f"real tokenizer: {route} {case}",
            self.name,
            pick(s1, ours),
            pick(s2, theirs),
            deliberate=deliberate,
        )
        return ours, theirs


@pytest.fixture(scope="module", params=["llama3", "qwen2"])
def online(request, compat, checkpoints, one_vllm) -> Iterator[Online]:
    from tests.support.server import serve

    path = checkpoints[request.param]
    args = ("--max-model-len", str(MAX_MODEL_LEN), "--dtype", "float32")
    theirs = one_vllm.start(lambda: VllmServer(path, "--max-model-len", str(MAX_MODEL_LEN)))
    with contextlib.ExitStack() as stack:
        ours_url = stack.enter_context(serve(path, *args))
        yield Online(compat, request.param, ours_url, theirs.url)
    one_vllm.stop()


@pytest.mark.timeout(900)
def test_online_messages(online):
    for conv, what in ((CONVERSATION, "with system"), (NO_SYSTEM, "no system")):
        ours, _ = online.check(
            f"messages ({what})", "/tokenize", {"messages": conv}, keys=("tokens", "count")
        )
        if online.name == "llama3":
            assert ours["tokens"][0] == 128000 and ours["tokens"][1] != 128000
        online.check(
            f"messages ({what})", "/pooling", {"messages": conv, "task": "classify", "use_activation": False}
        )
        online.check(f"messages ({what})", "/classify", {"messages": conv})
        online.check(
            f"messages ({what}), add_special_tokens=true",
            "/pooling",
            {"messages": conv, "task": "classify", "add_special_tokens": True, "use_activation": False},
        )


@pytest.mark.timeout(900)
def test_online_text_bos_and_truncation(online):
    for special in (None, True, False):
        body: dict[str, Any] = {"input": PROMPTS, "task": "classify", "use_activation": False}
        if special is not None:
            body["add_special_tokens"] = special
        online.check(f"text, add_special_tokens={special}", "/pooling", body)
        online.check(
            f"text, add_special_tokens={special}",
            "/tokenize",
            {"prompt": PROMPTS[1], **({"add_special_tokens": special} if special is not None else {})},
            keys=("tokens", "count"),
        )
    for k in (1, 5):
        for side in (None, "left", "right"):
            body = {
                "input": [LONG, PROMPTS[1]],
                "task": "classify",
                "use_activation": False,
                "truncate_prompt_tokens": k,
            }
            if side:
                body["truncation_side"] = side
            online.check(f"truncate_prompt_tokens={k}, truncation_side={side}", "/pooling", body)
