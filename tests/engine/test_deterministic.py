"""``LLM(..., deterministic=True)``: every score of a text is bit-identical (``torch.equal``) to that text
scored alone, whatever its batch, order, neighbours, shared prefixes, token budget and LoRA neighbours.

- Kernel checks: a row's result at every position of a fixed tile (the design's premise), and the blocked
  attention of a sequence alone vs. inside packed rows with shared prefixes, neighbours and pruning.
- Property tests (hypothesis) on a sequence RM with LoRA adapters, a token RM (Qwen2ForRewardModel, ALL
  pooling) and a PRM (Qwen2ForProcessRewardModel, STEP pooling): drawn GRPO-like groups (shared prompts,
  prompts that are prefixes of other texts, duplicates), unrelated texts, orders, budgets and adapters.
- Accuracy: deterministic scores equal the default engine's to 1e-4 and plain transformers' to 1e-5.
- One thread vs two; architectures that run one request per forward; the serve flag's validation.
- Slow: a bigger hypothesis run, a real ``rlhf-rewards serve --deterministic`` through ``RemoteWorker``, a
  ``RayWorkerPool`` of deterministic replicas, and ``RewardFunction(llm_kwargs={"deterministic": True})``.
"""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlhf_rewards import LLM, LoRARequest, PoolingParams
from rlhf_rewards.engine import deterministic as det
from rlhf_rewards.engine.attention import blocked
from rlhf_rewards.engine.attention.interface import segment_attention_forward
from rlhf_rewards.engine.attention.plan import Segment, SegmentPlan, Workspace, active_plan

RAW = PoolingParams(use_activation=False)
BUDGETS = [40, 130, 257, 700, 16384]
#: Default-suite property runs: drawn batches per model (the slow run draws many more).
EXAMPLES = 60
SLOW_EXAMPLES = 400


# ---------------------------------------------------------------------- kernel checks
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("tile", [64, det.ROW_TILE])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_row_gets_the_same_result_at_every_position_of_a_fixed_tile(dtype, tile, threads):
    torch.manual_seed(0)
    hidden = 256
    proj = torch.nn.Linear(hidden, 4 * hidden, dtype=dtype)
    down = torch.nn.Linear(2 * hidden, hidden, bias=False, dtype=dtype)
    norm_w = 1 + 0.1 * torch.randn(hidden, dtype=dtype)

    def rowwise(x):  # the shape of a decoder layer's row-wise work: norm, projection, SwiGLU, projection
        h = x.float()
        h = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)).to(dtype) * norm_w
        gate, up = proj(h).chunk(2, dim=-1)
        return down(torch.nn.functional.silu(gate) * up) + x

    row = torch.randn(hidden, dtype=dtype)
    # Every position of a 64-row tile; in the engine's tile every position of its first and last 16 rows
    # (the edges of the kernel's row blocks) and every 29th one between.
    positions = (
        range(tile) if tile <= 64 else sorted({*range(16), *range(tile - 16, tile), *range(0, tile, 29)})
    )
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        results = []
        for pos in positions:
            x = torch.randn(tile, hidden, dtype=dtype)
            x[pos] = row
            results.append(rowwise(x)[pos])
        padded = torch.zeros(tile, hidden, dtype=dtype)
        padded[0] = row
        results.append(rowwise(padded)[0])  # the zero-padded last tile
        results.append(
            det.tiled_rows(rowwise, torch.cat([torch.randn(300, hidden, dtype=dtype), row[None]]), tile)[-1]
        )
    finally:
        torch.set_num_threads(saved)
    assert all(torch.equal(r, results[0]) for r in results)


def _packed(seqs, prefix_of=None):
    """q/k/v rows of sequences laid out in one packed row; ``prefix_of[i] = (j, n)``: sequence ``i``'s first
    ``n`` rows are sequence ``j``'s (read from there, as a shared prefix)."""
    prefix_of = prefix_of or {}
    segments, q, k, v, where = [], [], [], [], {}
    start = 0
    for i, (sq, sk, sv) in enumerate(seqs):
        chain = []
        skip = 0
        if i in prefix_of:
            j, n = prefix_of[i]
            chain = [(where[j], where[j] + n)]
            skip = n
        segments.append(Segment(start=start, end=start + len(sq) - skip, prefix=chain))
        where[i] = start
        q.append(sq[skip:])
        k.append(sk[skip:])
        v.append(sv[skip:])
        start += len(sq) - skip
    cat = lambda parts: torch.cat(parts).transpose(0, 1).unsqueeze(0)  # noqa: E731  [1, heads, T, d]
    return segments, start, cat(q), cat(k), cat(v)


class _Layer:
    layer_idx = 0


def _attend(segments, total, q, k, v, deterministic=True, prune=None):
    if prune is not None:
        for seg, rows in zip(segments, prune, strict=True):
            seg.rows = rows
    plan = SegmentPlan(
        segments=segments,
        total=total,
        prune_layer=0 if prune is not None else None,
        deterministic=deterministic,
    )
    with active_plan(plan):
        return segment_attention_forward(_Layer(), q, k, v, None, scaling=0.25)[0][0]


@given(st.data())
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_blocked_attention_is_the_same_alone_shared_and_among_neighbours(data):
    heads, kv_heads, d = 4, 2, 16
    gen = torch.Generator().manual_seed(data.draw(st.integers(0, 2**31)))
    rand = lambda n, h: torch.randn(n, h, d, generator=gen)  # noqa: E731
    prompt = data.draw(st.integers(2, 200), "prompt")
    target = (rand(prompt, heads), rand(prompt, kv_heads), rand(prompt, kv_heads))
    tail = data.draw(st.integers(0, 150), "tail")
    seq = tuple(torch.cat([a, rand(tail, a.shape[1])]) for a in target)
    alone = _attend(*_packed([seq]))
    default = _attend(*_packed([seq]), deterministic=False)
    torch.testing.assert_close(alone, default, rtol=1e-5, atol=1e-5)
    # The same sequence behind unrelated neighbours, and after a sibling that shares its prompt.
    before = [
        tuple(rand(n, h) for h in (heads, kv_heads, kv_heads))
        for n in data.draw(st.lists(st.integers(1, 90), max_size=3))
    ]
    extra = data.draw(st.integers(1, 60), "sibling's own rows")
    sibling = tuple(torch.cat([a, rand(extra, a.shape[1])]) for a in target)
    layouts = [before + [seq], before + [sibling, seq]]
    # The shared run stops one row early when the sequence is exactly the prompt (segments are never empty).
    prefix = [{}, {len(before) + 1: (len(before), prompt if tail else prompt - 1)}]
    for seqs, shared in zip(layouts, prefix, strict=True):
        segments, total, q, k, v = _packed(seqs, shared)
        out = _attend(segments, total, q, k, v)
        own = segments[-1]
        rows = out[own.start : own.end]
        assert torch.equal(rows, alone[own.prefix_length :])
    # A pruned layer computes only some rows of the last sequence: those rows are the same numbers.
    keep = sorted(data.draw(st.sets(st.integers(0, own.length - 1), min_size=1, max_size=own.length)))
    segments, total, q, k, v = _packed(layouts[1], prefix[1])
    prune = [torch.empty(0, dtype=torch.long)] * (len(segments) - 1) + [torch.tensor(keep)]
    out = _attend(segments, total, q, k, v, prune=prune)
    own = segments[-1]
    assert torch.equal(out[own.start + torch.tensor(keep)], alone[own.prefix_length + torch.tensor(keep)])


def _mixed_layout(gen, heads=4, kv_heads=2, d=16):
    """A packed row with unrelated sequences and a sibling that reads its prompt from another sequence."""
    rand = lambda n, h: torch.randn(n, h, d, generator=gen)  # noqa: E731
    prompt = tuple(rand(70, h) for h in (heads, kv_heads, kv_heads))
    seqs = [tuple(rand(n, h) for h in (heads, kv_heads, kv_heads)) for n in (5, 33, 130)]
    seqs.append(prompt)
    seqs.append(tuple(torch.cat([a, rand(41, a.shape[1])]) for a in prompt))
    return _packed(seqs, {4: (3, 70)})


@pytest.mark.parametrize("pruned", [False, True])
def test_batched_calls_equal_per_tile_views(pruned):
    """The CUDA path (tiles batched by block on gathered rows) computes the CPU path's numbers exactly."""
    gen = torch.Generator().manual_seed(5)
    segments, total, q, k, v = _mixed_layout(gen)
    if pruned:
        for seg, keep in zip(segments, ([0, 4], [], [31, 32, 129], [69], [0, 40]), strict=True):
            seg.rows = torch.tensor(keep, dtype=torch.long)
    outs = [
        blocked.blocked_attention(
            blocked.BlockedLayout(segments, total, pruned, q.device, batched=batched), q, k, v, 0.25
        )
        for batched in (False, True)
    ]
    assert len(blocked.BlockedLayout(segments, total, pruned, q.device, batched=True).calls(q.device)) > 1
    assert torch.equal(outs[0], outs[1])
    if pruned:  # rows no tile owns read as zero through the attention interface
        owned = blocked.BlockedLayout(segments, total, True, q.device).owned_rows(q.device)
        rest = torch.ones(total, dtype=torch.bool)
        rest[owned] = False
        assert rest.any() and not outs[0][0, rest].any()


def test_a_shared_workspace_gives_the_numbers_of_a_fresh_one():
    """Layouts of different sizes take turns on one workspace (it grows; views are rebuilt): same results."""
    gen = torch.Generator().manual_seed(6)
    small = _packed([tuple(torch.randn(n, h, 16, generator=gen) for h in (4, 2, 2)) for n in (9, 40)])
    big = _mixed_layout(gen)
    ws = Workspace()
    shared = {
        name: blocked.BlockedLayout(case[0], case[1], False, torch.device("cpu"), workspace=ws)
        for name, case in (("small", small), ("big", big))
    }
    for name in ("small", "big", "small", "big"):
        segments, total, q, k, v = small if name == "small" else big
        fresh = blocked.blocked_attention(
            blocked.BlockedLayout(segments, total, False, q.device), q, k, v, 0.25
        )
        assert torch.equal(blocked.blocked_attention(shared[name], q, k, v, 0.25), fresh)


# ---------------------------------------------------------------------- models
@pytest.fixture(scope="module")
def seq_rm(checkpoint_factory):
    return checkpoint_factory("Qwen3ForSequenceClassification", num_labels=2, seed=21)


@pytest.fixture(scope="module")
def adapters(seq_rm, tmp_path_factory):
    from tests.support.lora import build_adapter

    root = tmp_path_factory.mktemp("det-adapters")
    specs = {
        "attn": {
            "seed": 1,
            "r": 4,
            "target_modules": ["q_proj", "v_proj"],
            "modules_to_save": ["embed_tokens"],
        },
        "saved_head": {
            "seed": 2,
            "r": 8,
            "target_modules": ["k_proj", "o_proj", "gate_proj"],
            "modules_to_save": ["score"],
        },
    }
    return {
        name: LoRARequest(name, i + 1, str(build_adapter(seq_rm, root / name, **cfg)))
        for i, (name, cfg) in enumerate(specs.items())
    }


@pytest.fixture(scope="module")
def engines(seq_rm, checkpoint_factory):
    """name -> (deterministic LLM, default LLM, task, pooling params)."""
    token_rm = checkpoint_factory("Qwen2ForRewardModel", seed=22)
    prm = checkpoint_factory("Qwen2ForProcessRewardModel", seed=23)
    out = {}
    for name, path, task, params, kw in (
        ("sequence RM", seq_rm, "classify", RAW, {"enable_lora": True}),
        ("token RM", token_rm, "token_classify", RAW, {}),
        ("PRM", prm, "token_classify", PoolingParams(use_activation=True), {}),
    ):
        out[name] = (
            LLM(str(path), device="cpu", deterministic=True, **kw),
            LLM(str(path), device="cpu", **kw),
            task,
            params,
        )
    return out


def _step_tag(llm: LLM) -> int | None:
    config = llm.task_configs.get("token_classify")
    return config.step_tag_id if config is not None and config.pooling_type == "STEP" else None


def _tokens(rng: random.Random, n: int, step_tag: int | None) -> list[int]:
    return [
        step_tag if step_tag is not None and rng.random() < 0.08 else rng.randrange(10, 400) for _ in range(n)
    ]


@st.composite
def batches(draw, step_tag: int | None = None, adapters: tuple = (None,)):
    """Texts (GRPO-like groups, prefixes, duplicates, unrelated texts), an order, a budget and adapters."""
    rng = random.Random(draw(st.integers(0, 2**31)))
    texts: list[list[int]] = []
    for _ in range(draw(st.integers(1, 3))):
        prompt = _tokens(rng, draw(st.integers(1, 260)), step_tag)
        for _ in range(draw(st.integers(1, 4))):
            texts.append(prompt + _tokens(rng, draw(st.integers(0, 140)), step_tag))
    texts += [_tokens(rng, draw(st.integers(1, 400)), step_tag) for _ in range(draw(st.integers(0, 2)))]
    texts += [list(texts[draw(st.integers(0, len(texts) - 1))]) for _ in range(draw(st.integers(0, 2)))]
    order = draw(st.permutations(range(len(texts))))
    loras = [draw(st.sampled_from(adapters)) for _ in texts]
    return [texts[i] for i in order], [loras[i] for i in order], draw(st.sampled_from(BUDGETS))


class Alone:
    """Each (text, adapter) scored alone, once, with the default budget: the reference of every draw."""

    def __init__(self, llm: LLM, task: str, params) -> None:
        self.llm, self.task, self.params, self.cache = llm, task, params, {}

    def __call__(self, text: list[int], lora: LoRARequest | None) -> torch.Tensor:
        key = (tuple(text), lora.lora_name if lora else None)
        if key not in self.cache:
            self.cache[key] = _encode(self.llm, [text], [lora], self.task, self.params)[0]
        return self.cache[key]


def _encode(llm: LLM, texts, loras, task, params, budget: int | None = None) -> list[torch.Tensor]:
    saved = llm.runner.max_num_batched_tokens
    if budget is not None:
        llm.runner.max_num_batched_tokens = budget
    try:
        lora = loras if any(x is not None for x in loras) else None
        outs = llm.encode(
            [{"prompt_token_ids": t} for t in texts],
            params,
            pooling_task=task,
            lora_request=lora,
            use_tqdm=False,
        )
    finally:
        llm.runner.max_num_batched_tokens = saved
    return [o.outputs.data for o in outs]


def _check_property(engines, adapters, name: str, examples: int) -> int:
    llm, _, task, params = engines[name]
    choices = (None, *adapters.values()) if name == "sequence RM" else (None,)
    alone = Alone(llm, task, params)
    drawn = []

    @given(batches(_step_tag(llm), choices))
    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    def run(batch):
        texts, loras, budget = batch
        got = _encode(llm, texts, loras, task, params, budget)
        drawn.append(len(texts))
        for i, (text, lora, out) in enumerate(zip(texts, loras, got, strict=True)):
            want = alone(text, lora)
            assert torch.equal(out, want), (
                f"text {i} ({len(text)} tokens, adapter {lora.lora_name if lora else None}, budget {budget}) "
                f"differs from its score alone by {(out - want).abs().max():.3e}"
            )

    run()
    return len(drawn)


@pytest.mark.parametrize("name", ["sequence RM", "token RM", "PRM"])
def test_every_score_equals_the_text_scored_alone(engines, adapters, name):
    assert _check_property(engines, adapters, name, EXAMPLES) == EXAMPLES


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sequence RM", "token RM", "PRM"])
def test_every_score_equals_the_text_scored_alone_many_draws(engines, adapters, name):
    assert _check_property(engines, adapters, name, SLOW_EXAMPLES) == SLOW_EXAMPLES


def _fixed_batch(step_tag=None, seed=5):
    rng = random.Random(seed)
    prompt = _tokens(rng, 150, step_tag)
    texts = [prompt + _tokens(rng, n, step_tag) for n in (1, 40, 130)] + [list(prompt)]
    texts += [_tokens(rng, n, step_tag) for n in (1, 7, 64, 65, 300, 450)]
    return texts


def _transformers_reference(llm: LLM, name: str, text: list[int]) -> torch.Tensor:
    model = llm.model.hf_model
    ids = torch.tensor([text])
    with torch.inference_mode():
        if name == "sequence RM":
            return model(input_ids=ids).logits[0].float()
        logits = model.token_logits(ids)[0].float()
    if name == "token RM":
        return logits
    return torch.softmax(logits, dim=-1)[torch.tensor(text) == _step_tag(llm)]


@pytest.mark.parametrize("name", ["sequence RM", "token RM", "PRM"])
def test_deterministic_scores_equal_the_default_engine_and_transformers(engines, name):
    llm, default, task, params = engines[name]
    texts = _fixed_batch(_step_tag(llm))
    got = _encode(llm, texts, [None] * len(texts), task, params)
    base = _encode(default, texts, [None] * len(texts), task, params)
    for text, g, b in zip(texts, got, base, strict=True):
        torch.testing.assert_close(g, b, rtol=0, atol=1e-4)
        torch.testing.assert_close(g, _transformers_reference(llm, name, text), rtol=1e-5, atol=1e-5)
    assert llm.runner.last_stats.tokens_run < sum(len(t) for t in texts)  # the shared prompt ran once


def test_lora_scores_equal_the_default_engine(engines, adapters):
    llm, default, task, params = engines["sequence RM"]
    texts = _fixed_batch()
    loras = [list(adapters.values())[i % 2] if i % 3 else None for i in range(len(texts))]
    for g, b in zip(
        _encode(llm, texts, loras, task, params), _encode(default, texts, loras, task, params), strict=True
    ):
        torch.testing.assert_close(g, b, rtol=0, atol=1e-4)


def test_one_thread_alone_equals_two_threads_in_a_batch(engines):
    llm, _, task, params = engines["sequence RM"]
    texts = _fixed_batch()
    saved_threads, saved_flops = torch.get_num_threads(), llm.runner.small_forward_flops
    llm.runner.small_forward_flops = 0  # never switch to one thread: the count set here is the one used
    try:
        torch.set_num_threads(1)
        alone = [_encode(llm, [t], [None], task, params)[0] for t in texts]
        torch.set_num_threads(2)
        batch = _encode(llm, texts, [None] * len(texts), task, params, budget=300)
    finally:
        torch.set_num_threads(saved_threads)
        llm.runner.small_forward_flops = saved_flops
    assert all(torch.equal(a, b) for a, b in zip(alone, batch, strict=True))


def test_bfloat16_scores_equal_the_text_scored_alone(seq_rm):
    llm = LLM(str(seq_rm), device="cpu", dtype="bfloat16", deterministic=True)
    texts = _fixed_batch()
    alone = [_encode(llm, [t], [None], "classify", RAW)[0] for t in texts]
    for budget in (130, 16384):
        batch = _encode(llm, texts[::-1], [None] * len(texts), "classify", RAW, budget)[::-1]
        assert all(torch.equal(a, b) for a, b in zip(alone, batch, strict=True))


@pytest.mark.parametrize("architecture", ["JambaForSequenceClassification", "InternLM2ForRewardModel"])
def test_other_architectures_run_one_request_per_forward(checkpoint_factory, architecture):
    path = checkpoint_factory(architecture)
    llm = LLM(str(path), device="cpu", deterministic=True)
    task = "classify" if "classify" in llm.supported_tasks else llm.spec.default_task
    texts = _fixed_batch()[:6]
    alone = [_encode(llm, [t], [None], task, None)[0] for t in texts]
    batch = _encode(llm, texts, [None] * len(texts), task, None)
    assert llm.runner.last_stats.forwards == len(texts)
    assert all(torch.equal(a, b) for a, b in zip(alone, batch, strict=True))
    reference = _encode(LLM(str(path), device="cpu"), texts, [None] * len(texts), task, None)
    for g, b in zip(batch, reference, strict=True):
        torch.testing.assert_close(g, b, rtol=0, atol=1e-4)


def test_the_switch_is_checked(qwen3_rm):
    with pytest.raises(ValueError, match="deterministic must be True or False"):
        LLM(str(qwen3_rm), device="cpu", deterministic="yes")
    with pytest.raises(ValueError, match="enforce_eager=True"):
        LLM(str(qwen3_rm), device="cpu", deterministic=True, enforce_eager=False)


def test_serve_passes_the_flag():
    import argparse

    from rlhf_rewards.cli import serve

    parser = argparse.ArgumentParser()
    serve.add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "model", "--deterministic"])
    assert args.deterministic is True
    assert parser.parse_args(["serve", "model"]).deterministic is False


# ---------------------------------------------------------------------- workers (slow)
def _worker_texts(seed=9):
    rng = random.Random(seed)
    texts = []
    for _ in range(4):
        prompt = _tokens(rng, rng.randint(60, 250), None)
        texts += [prompt + _tokens(rng, rng.randint(1, 120), None) for _ in range(5)]
    return texts + [_tokens(rng, n, None) for n in (1, 33, 200, 480)]


@pytest.mark.slow  # a server subprocess
def test_a_deterministic_server_scores_like_the_text_alone_in_process(qwen3_rm):
    from rlhf_rewards.workers import RemoteWorker
    from tests.support.server import ServerProcess

    texts = _worker_texts()
    local = LLM(str(qwen3_rm), device="cpu", deterministic=True)
    alone = [_encode(local, [t], [None], "classify", None)[0] for t in texts]
    with ServerProcess(qwen3_rm, "--deterministic", "--batch-wait-ms", "20") as server:
        for batch_size, concurrency in ((1, 8), (3, 4), (64, 1)):  # different server-side batches each time
            worker = RemoteWorker(server.url, max_batch_size=batch_size, max_concurrency=concurrency)
            try:
                outs = worker.encode([{"prompt_token_ids": t} for t in texts], pooling_task="classify")
            finally:
                worker.close()
            for out, want in zip(outs, alone, strict=True):
                assert torch.equal(torch.as_tensor(out.outputs.data, dtype=torch.float32), want)


@pytest.mark.slow  # a Ray cluster and two replica processes
def test_deterministic_ray_replicas_score_like_the_text_alone_in_process(qwen3_rm):
    ray = pytest.importorskip("ray")
    from rlhf_rewards.workers import RayWorkerPool

    texts = _worker_texts(seed=10)
    local = LLM(str(qwen3_rm), device="cpu", deterministic=True)
    alone = [_encode(local, [t], [None], "classify", None)[0] for t in texts]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with RayWorkerPool(
            str(qwen3_rm), num_replicas=2, num_cpus_per_replica=1, max_batch_size=5, deterministic=True
        ) as pool:
            outs = pool.encode([{"prompt_token_ids": t} for t in texts], pooling_task="classify")
    finally:
        ray.shutdown()
    for out, want in zip(outs, alone, strict=True):
        assert torch.equal(torch.as_tensor(out.outputs.data, dtype=torch.float32), want)


@pytest.mark.slow
def test_reward_function_llm_kwargs_make_rewards_batch_invariant(qwen3_rm):
    from rlhf_rewards import RewardFunction

    texts = _worker_texts(seed=11)
    fn = RewardFunction(str(qwen3_rm), llm_kwargs={"deterministic": True, "device": "cpu"})
    alone = [fn.score_token_ids([t])[0] for t in texts]
    assert fn.score_token_ids(texts) == alone
    assert fn.score_token_ids(texts[::-1]) == alone[::-1]
