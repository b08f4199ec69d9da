"""The cross-call prefix cache (engine/kv_cache.py): hits equal misses, bounds, isolation, invalidation, threads."""

from __future__ import annotations

import random
import threading

import pytest
import torch

from rlhf_rewards import LLM, PoolingParams
from rlhf_rewards.engine.kv_cache import CacheSession, PrefixKVCache, weights_fingerprint
from rlhf_rewards.lora.request import LoRARequest

RAW = PoolingParams(use_activation=False)


@pytest.fixture(scope="module")
def seq_rm(checkpoint_factory):
    return checkpoint_factory("Qwen3ForSequenceClassification", num_labels=2, seed=31)


@pytest.fixture(scope="module")
def prm(checkpoint_factory):
    return checkpoint_factory("Qwen2ForProcessRewardModel", seed=32)


@pytest.fixture(scope="module")
def adapter(seq_rm, tmp_path_factory):
    from tests.support.lora import build_adapter

    path = build_adapter(
        seq_rm,
        tmp_path_factory.mktemp("kv-adapter") / "a",
        seed=5,
        r=4,
        target_modules=["q_proj", "k_proj", "v_proj"],
    )
    return LoRARequest("a", 1, str(path))


def _grpo(seed: int, prompts: int = 3, group: int = 4, step_tag: int | None = None) -> list[list[int]]:
    rng = random.Random(seed)

    def tok() -> int:
        return step_tag if step_tag is not None and rng.random() < 0.1 else rng.randrange(10, 400)

    texts = []
    for _ in range(prompts):
        prompt = [rng.randrange(10, 400) for _ in range(rng.randint(20, 90))]
        texts += [prompt + [tok() for _ in range(rng.randint(1, 40))] for _ in range(group)]
    return texts


def _encode(llm: LLM, texts, task="classify", params=RAW, **prompt_fields):
    outs = llm.encode(
        [{"prompt_token_ids": t, **prompt_fields} for t in texts], params, pooling_task=task, use_tqdm=False
    )
    return [o.outputs.data for o in outs]


def _one_by_one(llm: LLM, texts, task="classify", params=RAW, **kw):
    return [_encode(llm, [t], task, params, **kw)[0] for t in texts]


def _max_diff(a, b) -> float:
    """Largest difference relative to max(1, |value|): these tiny random models score up to ~3, and the engine
    without any cache already moves a score by ~2e-6 between a batch and the text alone."""
    return max(
        float(((x - y).abs() / y.abs().clamp(min=1.0)).max()) if x.numel() else 0.0
        for x, y in zip(a, b, strict=True)
    )


#: fp32 tolerance of a hit against a miss (relative, see _max_diff): the engine without a cache differs by up
#: to ~2e-6 between a batch and a text alone on these models (the benchmark model: ~1e-7).
TOL = 5e-6


def _cache(llm: LLM) -> PrefixKVCache:
    cache = llm.runner.prefix_cache
    assert cache is not None
    return cache


# ---------------------------------------------------------------------- hits equal misses
@pytest.mark.parametrize("deterministic", [False, True], ids=["fp32", "deterministic"])
def test_hits_equal_misses_one_text_per_call(seq_rm, deterministic):
    texts = _grpo(1)
    ref = LLM(str(seq_rm), device="cpu", enable_prefix_caching=False, deterministic=deterministic)
    llm = LLM(str(seq_rm), device="cpu", deterministic=deterministic)
    miss = _one_by_one(ref, texts)
    per_call = _one_by_one(llm, texts)  # rollout order: siblings hit their prompt
    stats = _cache(llm).stats()
    assert stats["hit_tokens"] > 0.5 * sum(len(t) for t in texts[4:]) / 2
    again = _encode(llm, texts)  # the same texts again, one call: nearly everything is a hit
    assert llm.runner.last_stats.cached_tokens >= sum(len(t) for t in texts) - 16 * len(texts)
    assert llm.runner.last_stats.tokens_run < 0.3 * sum(len(t) for t in texts)
    if deterministic:
        assert all(torch.equal(a, b) for a, b in zip(per_call, miss, strict=True))
        assert all(torch.equal(a, b) for a, b in zip(again, miss, strict=True))
    else:
        assert _max_diff(per_call, miss) < TOL
        assert _max_diff(again, miss) < TOL


@pytest.mark.parametrize("deterministic", [False, True], ids=["fp32", "deterministic"])
def test_hits_reading_several_pieces_equal_misses(seq_rm, deterministic, monkeypatch):
    # Prompts that open with one template head: the head is a node of its own, so every later hit reads two
    # pieces (the head, then its prompt), alone in its call, and in one call with the others.
    rng = random.Random(7)
    head = [rng.randrange(10, 400) for _ in range(24)]
    texts = []
    for _ in range(3):
        prompt = head + [rng.randrange(10, 400) for _ in range(rng.randint(20, 60))]
        texts += [prompt + [rng.randrange(10, 400) for _ in range(rng.randint(1, 30))] for _ in range(3)]
    ref = LLM(str(seq_rm), device="cpu", enable_prefix_caching=False, deterministic=deterministic)
    llm = LLM(str(seq_rm), device="cpu", deterministic=deterministic)
    miss = _one_by_one(ref, texts)
    seen: list[int] = []
    lookup = CacheSession.lookup

    def counting(self, *args, **kwargs):
        hit = lookup(self, *args, **kwargs)
        seen.append(len(hit.pieces))
        return hit

    monkeypatch.setattr(CacheSession, "lookup", counting)
    per_call = _one_by_one(llm, texts)
    again = _encode(llm, texts)
    assert max(seen[: len(texts)]) >= 2 and min(seen[len(texts) :]) >= 2
    for got in (per_call, again):
        if deterministic:
            assert all(torch.equal(a, b) for a, b in zip(got, miss, strict=True))
        else:
            assert _max_diff(got, miss) < TOL


@pytest.mark.parametrize("deterministic", [False, True], ids=["fp32", "deterministic"])
def test_step_pooling_hits_only_before_the_first_tag(prm, deterministic):
    ref = LLM(str(prm), device="cpu", enable_prefix_caching=False, deterministic=deterministic)
    llm = LLM(str(prm), device="cpu", deterministic=deterministic)
    tag = llm.task_configs["token_classify"].step_tag_id
    texts = _grpo(2, step_tag=tag)
    params = PoolingParams(use_activation=False)
    miss = _one_by_one(ref, texts, "token_classify", params)
    got = _one_by_one(llm, texts, "token_classify", params)
    again = _encode(llm, texts, "token_classify", params)
    for a, b in zip(got + again, miss + miss, strict=True):
        assert a.shape == b.shape
        assert torch.equal(a, b) if deterministic else _max_diff([a], [b]) < TOL
    assert _cache(llm).hit_tokens > 0


def test_all_pooling_never_hits_but_feeds_others(seq_rm):
    llm = LLM(str(seq_rm), device="cpu")
    ref = LLM(str(seq_rm), device="cpu", enable_prefix_caching=False)
    texts = _grpo(3, prompts=1, group=3)
    _encode(llm, texts[:1], "token_classify")  # ALL pooling: every position is read, nothing is taken
    assert _cache(llm).hit_tokens == 0
    got = _encode(llm, texts[:1], "token_classify")
    assert _cache(llm).hit_tokens == 0
    assert _max_diff(got, _encode(ref, texts[:1], "token_classify")) < TOL
    got = _encode(llm, texts[1:], "classify")  # LAST pooling reads the cached prompt of the ALL request
    assert _cache(llm).hit_tokens > 0
    assert _max_diff(got, _encode(ref, texts[1:], "classify")) < TOL


# ---------------------------------------------------------------------- bound and eviction
def test_eviction_keeps_the_byte_bound(seq_rm):
    probe = LLM(str(seq_rm), device="cpu")
    _encode(probe, _grpo(4, prompts=1, group=1))
    per_token = _cache(probe).bytes / sum(len(t) for t in _grpo(4, prompts=1, group=1))
    bound = int(per_token * 300)
    llm = LLM(str(seq_rm), device="cpu", prefix_cache_bytes=bound)
    ref = LLM(str(seq_rm), device="cpu", enable_prefix_caching=False)
    cache = _cache(llm)
    for seed in range(5, 9):
        texts = _grpo(seed)
        got = _one_by_one(llm, texts)
        assert cache.bytes <= bound
        assert _max_diff(got, _encode(ref, texts)) < TOL
    assert cache.evictions > 0 and cache.hit_tokens > 0
    nodes = [n for r in cache._roots.values() for n in _all(r) if n.kv is not None]
    assert sum(n.nbytes for n in nodes) == cache.bytes
    for n in nodes:  # every node continues its parent
        assert n.start == (n.parent.end if n.parent.kv is not None else 0)


def _all(node):
    out, stack = [], [node]
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(n.children.values())
    return out


def test_off_switches(seq_rm):
    assert LLM(str(seq_rm), device="cpu", enable_prefix_caching=False).runner.prefix_cache is None
    assert LLM(str(seq_rm), device="cpu", prefix_cache_bytes=0).runner.prefix_cache is None
    with pytest.raises(ValueError, match="prefix_cache_bytes"):
        LLM(str(seq_rm), device="cpu", prefix_cache_bytes=-1)


# ---------------------------------------------------------------------- isolation
def test_salt_isolation(seq_rm):
    llm = LLM(str(seq_rm), device="cpu")
    cache = _cache(llm)
    texts = _grpo(10, prompts=1, group=2)
    _encode(llm, texts[:1], cache_salt="alice")
    _encode(llm, texts[1:], cache_salt="bob")
    assert cache.hit_tokens == 0  # another salt never reads alice's prefix
    _encode(llm, texts[1:])
    assert cache.hit_tokens == 0  # nor does the unsalted namespace
    _encode(llm, texts[1:], cache_salt="alice")
    assert cache.hit_tokens > 0


def test_adapter_isolation_and_equality(seq_rm, adapter):
    llm = LLM(str(seq_rm), device="cpu", enable_lora=True)
    ref = LLM(str(seq_rm), device="cpu", enable_lora=True, enable_prefix_caching=False)
    cache = _cache(llm)
    texts = _grpo(11, prompts=1, group=3)

    def run(engine, ts, lora):
        outs = engine.encode(
            [{"prompt_token_ids": t} for t in ts],
            RAW,
            pooling_task="classify",
            use_tqdm=False,
            lora_request=lora,
        )
        return [o.outputs.data for o in outs]

    base = run(llm, texts[:1], None)
    adapted = run(llm, texts[:1], adapter)
    assert cache.hit_tokens == 0  # the adapter's keys differ from the base model's: no sharing
    assert not torch.allclose(base[0], adapted[0])
    got = [run(llm, [t], adapter)[0] for t in texts[1:]]
    assert cache.hit_tokens > 0
    assert _max_diff(got, run(ref, texts[1:], adapter)) < TOL
    assert _max_diff(run(llm, texts[1:], None), run(ref, texts[1:], None)) < TOL


# ---------------------------------------------------------------------- invalidation
def test_invalidation_on_reset_weights_and_adapters(seq_rm, adapter):
    llm = LLM(str(seq_rm), device="cpu", enable_lora=True)
    cache = _cache(llm)
    texts = _grpo(12, prompts=1, group=2)
    _encode(llm, texts)
    assert cache.bytes > 0
    assert llm.reset_prefix_cache() and cache.bytes == 0
    _encode(llm, texts)
    llm.add_lora(adapter)  # adapter changes drop everything
    assert cache.bytes == 0
    _encode(llm, texts)
    llm.remove_lora(adapter)
    assert cache.bytes == 0
    # New weights (an in-place load) are noticed on the next call: nothing computed before is read.
    before = _encode(llm, texts)
    with torch.no_grad():
        llm.model.backbone.layers[0].self_attn.v_proj.weight.mul_(1.5)
    hits = cache.hit_tokens
    after = _encode(llm, texts)
    assert cache.hit_tokens == hits and cache.clears >= 4
    fresh = LLM(str(seq_rm), device="cpu", enable_prefix_caching=False)
    with torch.no_grad():
        fresh.model.backbone.layers[0].self_attn.v_proj.weight.mul_(1.5)
    assert _max_diff(after, _encode(fresh, texts)) < TOL
    assert _max_diff(before, after) > 1e-4


def test_sleep_and_wake_drop_the_cache(seq_rm):
    from rlhf_rewards.workers import ColocatedWorker

    worker = ColocatedWorker(str(seq_rm), device="cpu")
    texts = _grpo(13, prompts=1, group=2)
    worker.encode([{"prompt_token_ids": t} for t in texts], RAW, pooling_task="classify")
    cache = _cache(worker.llm)
    assert cache.bytes > 0
    worker.sleep()
    assert cache.bytes == 0
    worker.wake_up()
    worker.encode([{"prompt_token_ids": t} for t in texts], RAW, pooling_task="classify")
    assert cache.bytes > 0


def test_weights_fingerprint_changes_with_weights(seq_rm):
    llm = LLM(str(seq_rm), device="cpu")
    before = weights_fingerprint(llm.model.backbone)
    with torch.no_grad():
        next(llm.model.backbone.parameters()).add_(0.0)
    assert weights_fingerprint(llm.model.backbone) != before


# ---------------------------------------------------------------------- concurrency
def test_concurrent_callers_share_the_cache(seq_rm):
    llm = LLM(str(seq_rm), device="cpu", prefix_cache_bytes=1 << 22)
    ref = LLM(str(seq_rm), device="cpu", enable_prefix_caching=False)
    texts = _grpo(14, prompts=4, group=4)
    expected = _encode(ref, texts)
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for i in range(offset, len(texts), 4):
                results[i] = _encode(llm, [texts[i]], cache_salt=None)[0]
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _max_diff([results[i] for i in range(len(texts))], expected) < TOL
    assert _cache(llm).hit_tokens > 0


def test_cache_sessions_from_threads_keep_the_tree_consistent():
    cache = PrefixKVCache(max_bytes=4 * 1024 * 8)  # ~1k tokens of the fake layout below
    rng = random.Random(0)
    prompts = [[rng.randrange(50) for _ in range(40)] for _ in range(6)]
    errors: list[BaseException] = []

    def kv(ids, start, end):
        pos = torch.arange(start, end, dtype=torch.float32)
        return (
            (torch.tensor(ids[start:end], dtype=torch.float32) * 1000 + pos)
            .view(1, 1, 1, -1, 1)
            .expand(2, 2, 2, -1, 4)
            .contiguous()
        )

    def worker(seed: int) -> None:
        r = random.Random(seed)
        try:
            for _ in range(200):
                ids = r.choice(prompts) + [r.randrange(50) for _ in range(r.randint(1, 30))]
                with cache.session() as s:
                    hit = s.lookup(None, ids, len(ids) - 1)
                    for p in hit.pieces:  # what a hit returns is what was inserted for these tokens
                        start = p.node.start
                        assert torch.equal(p.kv, kv(ids, start, start + p.length))
                    s.extend(None, ids, hit.length, len(ids), kv(ids, hit.length, len(ids)))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert cache.bytes <= cache.max_bytes and cache.evictions > 0 and cache.hit_tokens > 0
    nodes = [n for r in cache._roots.values() for n in _all(r) if n.kv is not None]
    assert sum(n.nbytes for n in nodes) == cache.bytes


# ---------------------------------------------------------------------- the server's hold window
def test_batcher_holds_one_prompt_requests_so_siblings_share_a_call():
    import asyncio
    import time

    from rlhf_rewards.outputs import PoolingOutput, PoolingRequestOutput
    from rlhf_rewards.server.batcher import Batcher, EngineItem

    calls: list[int] = []

    def encode(task, items):
        calls.append(len(items))
        return [
            PoolingRequestOutput(str(i), PoolingOutput(torch.zeros(1)), it.token_ids)
            for i, it in enumerate(items)
        ]

    async def run(hold_s: float) -> float:
        calls.clear()
        batcher = Batcher(encode, max_queue_size=100, max_batch_tokens=10_000, hold_s=hold_s)
        batcher.start()
        try:

            async def one(k: int) -> None:
                await asyncio.sleep(0.001 * k)  # siblings arrive within a few milliseconds of each other
                await batcher.submit("classify", [EngineItem([1, 2, k], PoolingParams())])

            t = time.perf_counter()
            await asyncio.gather(*(one(k) for k in range(4)))
            return time.perf_counter() - t
        finally:
            await batcher.stop()

    asyncio.run(run(0.0))
    assert len(calls) > 1  # without a hold the first request runs alone
    elapsed = asyncio.run(run(0.1))
    assert calls == [4] and elapsed < 1.0
    with pytest.raises(ValueError, match="hold_s"):
        Batcher(encode, max_queue_size=1, max_batch_tokens=1, hold_s=-1)
