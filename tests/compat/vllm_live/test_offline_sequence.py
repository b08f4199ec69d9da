"""Offline differential, sequence (outcome) reward models: ``Qwen3ForSequenceClassification`` and
``LlamaForSequenceClassification`` (Skywork-Reward-V2 style, one label), plus pooler-config variants
(``seq_pooling_type`` MEAN/CLS, ``use_activation=False``) on the Qwen3 one.

Each engine (one per parameter of ``pair``, started once and stopped before the next) answers the same
``encode``/``classify``/``embed``/``score`` calls as vLLM 0.32's CPU build; numbers agree to 1e-5 in fp32 and
token ids exactly.

The Llama classifier's tokenizer writes a BOS before and an EOS after every text (``add_bos_eos``): a
truncation without ``truncation_side`` is the tokenizer's own in vLLM (``truncation=True, max_length=k``,
which keeps both), and one with a side slices the ids afterwards (the EOS goes with the right cut).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.compat.vllm_live.offline import LONG, PROMPTS, Pair, add_bos_eos, build, ours_engine, vllm_engine
from tests.compat.vllm_live.oracle import pooling_params

pytestmark = pytest.mark.slow

#: (name, architecture, pooler_config): every parameter is one vLLM engine.
ENGINES = {
    "qwen3": ("Qwen3ForSequenceClassification", None),
    "llama": ("LlamaForSequenceClassification", None),
    "qwen3-mean": ("Qwen3ForSequenceClassification", {"seq_pooling_type": "MEAN"}),
    "qwen3-cls-raw": ("Qwen3ForSequenceClassification", {"seq_pooling_type": "CLS", "use_activation": False}),
}
BASE = ("qwen3", "llama")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    paths = {
        arch: build(tmp_path_factory, arch, arch.lower())
        for arch in ("Qwen3ForSequenceClassification", "LlamaForSequenceClassification")
    }
    add_bos_eos(paths["LlamaForSequenceClassification"])  # truncation must keep the tokenizer's BOS and EOS
    return paths


@pytest.fixture(scope="module", params=list(ENGINES))
def pair(request, compat, checkpoints) -> Iterator[Pair]:
    arch, pooler = ENGINES[request.param]
    path = checkpoints[arch]
    kwargs = {"pooler_config": pooler} if pooler else {}
    ours = ours_engine(path, **kwargs)
    strict = ours_engine(path, strict_vllm_compat=True, **kwargs)
    for vllm in vllm_engine(path, **kwargs):
        pair = Pair(compat, f"{arch} ({request.param})", vllm, ours, strict)
        pair.name = request.param
        yield pair


def only(pair: Pair, names: tuple[str, ...]) -> None:
    if pair.name not in names:
        pytest.skip(f"runs on {names}")


@pytest.mark.timeout(600)
def test_tasks(pair):
    pair.check("encode classify", "encode", PROMPTS, pooling_task="classify")
    pair.check("classify", "classify", PROMPTS)
    pair.check("supported_tasks", "attr", "supported_tasks", deliberate="supported-tasks")
    pair.check("pooling_task", "attr", "pooling_task")
    pair.check("encode without pooling_task", "encode", PROMPTS)
    pair.check("encode removed task score", "encode", PROMPTS, pooling_task="score")
    pair.check("encode plugin", "encode", PROMPTS, pooling_task="plugin")


@pytest.mark.timeout(600)
def test_tasks_vllm_does_not_serve(pair):
    only(pair, BASE)
    pair.check(
        "encode token_classify",
        "encode",
        PROMPTS,
        pooling_task="token_classify",
        deliberate="task-not-served",
    )
    pair.check("encode embed", "encode", PROMPTS, pooling_task="embed", deliberate="embedding-api")
    pair.check("embed", "embed", PROMPTS, deliberate="embedding-api")
    pair.check(
        "embed dimensions=8",
        "embed",
        PROMPTS,
        pooling_params=pooling_params(dimensions=8),
        deliberate="embedding-api",
    )
    pair.check(
        "encode token_embed", "encode", PROMPTS, pooling_task="token_embed", deliberate="embedding-api"
    )


@pytest.mark.timeout(600)
def test_pooling_params(pair):
    only(pair, BASE + ("qwen3-cls-raw",))
    pair.check(
        "classify use_activation=False",
        "classify",
        PROMPTS,
        pooling_params=pooling_params(use_activation=False),
    )
    pair.check(
        "classify use_activation=True",
        "classify",
        PROMPTS,
        pooling_params=pooling_params(use_activation=True),
    )
    pair.check(
        "classify dimensions=4 (refused)",
        "encode",
        PROMPTS,
        pooling_params(dimensions=4),
        pooling_task="classify",
    )
    pair.check(
        "classify step_tag_id (refused)",
        "encode",
        PROMPTS,
        pooling_params(step_tag_id=3),
        pooling_task="classify",
    )
    pair.check(
        "classify per-prompt params",
        "encode",
        PROMPTS[:2],
        [pooling_params(use_activation=False), pooling_params(use_activation=True)],
        pooling_task="classify",
    )


@pytest.mark.timeout(600)
def test_tokenization_kwargs(pair):
    only(pair, BASE)
    for case, kwargs in [
        ("truncate_prompt_tokens=5", {"truncate_prompt_tokens": 5}),
        ("truncate_prompt_tokens=5 left", {"truncate_prompt_tokens": 5, "truncation_side": "left"}),
        ("truncate_prompt_tokens=5 right", {"truncate_prompt_tokens": 5, "truncation_side": "right"}),
        ("truncate_prompt_tokens=-1", {"truncate_prompt_tokens": -1}),
        ("truncate_prompt_tokens=64 (= max_model_len)", {"truncate_prompt_tokens": 64}),
        ("truncate_prompt_tokens=65 (refused)", {"truncate_prompt_tokens": 65}),
        ("truncation=True max_length=6", {"truncation": True, "max_length": 6}),
        (
            "truncation=True max_length=6 left",
            {"truncation": True, "max_length": 6, "truncation_side": "left"},
        ),
        ("truncation=False", {"truncation": False}),
        ("add_special_tokens=False", {"add_special_tokens": False}),
        ("unknown key ignored", {"padding": "longest", "do_lower_case": False}),
        ("truncation_side=middle (refused)", {"truncate_prompt_tokens": 5, "truncation_side": "middle"}),
    ]:
        pair.check(
            f"tokenization_kwargs {case}",
            "encode",
            PROMPTS + [LONG],
            pooling_task="classify",
            tokenization_kwargs=kwargs,
        )
    ids = {"prompt_token_ids": list(range(10, 30))}
    pair.check(
        "token-id prompt truncate_prompt_tokens=4",
        "encode",
        [ids],
        pooling_task="classify",
        tokenization_kwargs={"truncate_prompt_tokens": 4},
    )
    pair.check(
        "token-id prompt truncate_prompt_tokens=4 left",
        "encode",
        [ids],
        pooling_task="classify",
        tokenization_kwargs={"truncate_prompt_tokens": 4, "truncation_side": "left"},
    )
    pair.check(
        "PoolingParams(truncate_prompt_tokens=5)",
        "encode",
        PROMPTS,
        pooling_params(truncate_prompt_tokens=5),
        pooling_task="classify",
        deliberate="pooling-params-truncate",
    )
    pair.check(
        "classify truncate_prompt_tokens=5",
        "classify",
        PROMPTS,
        tokenization_kwargs={"truncate_prompt_tokens": 5},
    )
    pair.check("prompt over max_model_len (refused)", "encode", [LONG * 2], pooling_task="classify")
    pair.check(
        "prompt dicts",
        "encode",
        [{"prompt": PROMPTS[0]}, {"prompt_token_ids": [5, 6, 7]}],
        pooling_task="classify",
    )


@pytest.mark.timeout(600)
def test_score(pair):
    only(pair, BASE)
    pair.check("score 1->N", "score", PROMPTS[0], PROMPTS[1:])
    pair.check("score N->N", "score", PROMPTS[:2], PROMPTS[1:])
    pair.check("score 1->1", "score", PROMPTS[0], PROMPTS[1])
    pair.check(
        "score truncate_prompt_tokens=6",
        "score",
        PROMPTS[0],
        PROMPTS[1:],
        tokenization_kwargs={"truncate_prompt_tokens": 6},
    )
