"""ColocatedWorker: same outputs as LLM.encode, sleep/wake, and loading under DeepSpeed ZeRO-3."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from rlhf_rewards import LLM, PoolingParams
from rlhf_rewards.callbacks import RewardWorkerCallback
from rlhf_rewards.workers import ColocatedWorker, RewardWorker
from rlhf_rewards.workers.zero3 import partitioned_parameters, unsharded_loading, zero3_enabled
from tests.conftest import MIXED_TEXTS
from tests.support.server import free_port

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reference(qwen3_rm) -> LLM:
    return LLM(str(qwen3_rm), device="cpu")


def _scores(outputs) -> list[list[float]]:
    return [o.outputs.data.tolist() for o in outputs]


def _assert_same(got, want) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.error is None and w.error is None
        assert g.prompt_token_ids == w.prompt_token_ids
        assert g.outputs.data.dtype == torch.float32 and g.outputs.data.device.type == "cpu"
        torch.testing.assert_close(g.outputs.data, w.outputs.data, rtol=1e-5, atol=1e-5)


def test_scores_equal_the_engine(qwen3_rm, reference):
    worker = ColocatedWorker(str(qwen3_rm), device="cpu")
    assert isinstance(worker, RewardWorker)
    want = reference.encode(MIXED_TEXTS, pooling_task="classify", use_tqdm=False)
    _assert_same(worker.encode(MIXED_TEXTS, pooling_task="classify"), want)
    _assert_same(asyncio.run(worker.aencode(MIXED_TEXTS, pooling_task="classify")), want)
    raw = PoolingParams(use_activation=False)
    _assert_same(
        worker.encode(MIXED_TEXTS, raw, pooling_task="token_classify"),
        reference.encode(MIXED_TEXTS, raw, pooling_task="token_classify", use_tqdm=False),
    )
    assert worker.model_info() == reference.model_info()
    conv = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]]
    assert worker.render_chat(conv) == reference.render_chat(conv)
    assert worker.stats.requests == 3 and worker.stats.prompts == 3 * len(MIXED_TEXTS)
    assert worker.stats.tokens == 3 * sum(len(o.prompt_token_ids) for o in want)
    assert worker.stats.busy_seconds > 0


def test_wraps_an_llm_and_errors_match_the_engine(reference):
    worker = ColocatedWorker(reference)
    assert worker.llm is reference
    with pytest.raises(ValueError, match="pooling_task"):
        worker.encode(["x"], pooling_task="nope")
    with pytest.raises(ValueError, match="only apply when loading from a path"):
        ColocatedWorker(reference, device="cpu")
    with pytest.raises(ValueError, match="LLM or a model path"):
        ColocatedWorker(42)  # type: ignore[arg-type]


def test_default_device_is_the_ranks(qwen3_rm):
    from accelerate import PartialState

    worker = ColocatedWorker(str(qwen3_rm))
    assert worker.device == PartialState().device
    assert worker.weight_device == worker.device


def test_sleep_and_wake_up_state(qwen3_rm, reference):
    worker = ColocatedWorker(str(qwen3_rm), device="cpu")
    params = dict(worker.llm.model.named_parameters())
    want = reference.encode(MIXED_TEXTS, pooling_task="classify", use_tqdm=False)
    assert not worker.is_sleeping
    worker.sleep()
    assert worker.is_sleeping and worker.weight_device.type == "cpu"
    assert worker.health().ok and worker.health().details["sleeping"] is True
    worker.sleep()  # idempotent
    worker.wake_up()
    assert not worker.is_sleeping and worker.weight_device == worker.device
    worker.wake_up()  # idempotent
    worker.sleep()
    _assert_same(worker.encode(MIXED_TEXTS, pooling_task="classify"), want)  # scoring wakes it
    assert not worker.is_sleeping
    # The same Parameter objects throughout (tied weights and peft references stay valid).
    assert all(p is params[n] for n, p in worker.llm.model.named_parameters())


def test_offload_false_never_sleeps(qwen3_rm):
    worker = ColocatedWorker(str(qwen3_rm), device="cpu", offload=False)
    worker.sleep()
    assert not worker.is_sleeping


def test_sleeps_between_scoring_calls_under_the_callback(qwen3_rm, reference):
    """RewardWorkerCallback's protocol: asleep at train begin, awake only while a call runs."""
    worker = ColocatedWorker(str(qwen3_rm), device="cpu")
    seen = []
    original = worker.llm.encode

    def spy(*a, **k):
        seen.append(worker.is_sleeping)
        return original(*a, **k)

    worker.llm.encode = spy
    callback = RewardWorkerCallback([worker])
    callback.on_train_begin(None, None, None)
    assert worker.is_sleeping

    async def concurrent():
        return await asyncio.gather(*(worker.aencode(MIXED_TEXTS, pooling_task="classify") for _ in range(3)))

    results = asyncio.run(concurrent())
    want = reference.encode(MIXED_TEXTS, pooling_task="classify", use_tqdm=False)
    for got in results:
        _assert_same(got, want)
    assert seen == [False, False, False] and worker.is_sleeping
    callback.on_train_end(None, None, None)
    assert not worker.is_sleeping


def test_concurrent_callers_are_serialized(qwen3_rm, reference):
    """Two async reward functions (and a thread toggling sleep) share one worker: one model call at a time,
    every result correct."""
    worker = ColocatedWorker(str(qwen3_rm), device="cpu")
    original = worker.llm.encode
    active, peak = [0], [0]
    guard = threading.Lock()

    def spy(*a, **k):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.02)  # widen the window in which an unserialized second call would overlap
            assert not worker.is_sleeping  # never scored with offloaded weights
            return original(*a, **k)
        finally:
            with guard:
                active[0] -= 1

    worker.llm.encode = spy
    stop = threading.Event()

    def toggler():
        while not stop.is_set():
            worker.sleep()
            worker.wake_up()

    thread = threading.Thread(target=toggler)
    thread.start()

    async def two_reward_functions():
        calls = [worker.aencode(MIXED_TEXTS, pooling_task="classify") for _ in range(6)]
        return await asyncio.gather(*calls)

    try:
        results = asyncio.run(two_reward_functions())
    finally:
        stop.set()
        thread.join()
    want = reference.encode(MIXED_TEXTS, pooling_task="classify", use_tqdm=False)
    for got in results:
        _assert_same(got, want)
    assert peak[0] == 1
    assert worker.stats.requests == 6


def test_close(qwen3_rm, reference):
    worker = ColocatedWorker(str(qwen3_rm), device="cpu")
    worker.close()
    worker.close()
    assert not worker.health().ok
    with pytest.raises(RuntimeError, match="closed"):
        worker.encode(["x"], pooling_task="classify")
    # An LLM passed in belongs to the caller: closing the worker leaves it usable.
    with ColocatedWorker(reference) as borrowed:
        borrowed.sleep()
    assert reference.encode(["x"], pooling_task="classify", use_tqdm=False)[0].error is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sleep_frees_cuda_memory(qwen3_rm, reference):
    worker = ColocatedWorker(str(qwen3_rm), device="cuda", dtype="float32")
    want = reference.encode(MIXED_TEXTS, pooling_task="classify", use_tqdm=False)
    _assert_same(worker.encode(MIXED_TEXTS, pooling_task="classify"), want)
    tied = worker.llm.model.hf_model.get_input_embeddings().weight
    weights = sum(p.numel() * p.element_size() for p in worker.llm.model.parameters())
    allocated = torch.cuda.memory_allocated()
    worker.sleep()
    assert worker.weight_device.type == "cpu"
    assert all(p.is_pinned() for p in worker.llm.model.parameters())
    assert torch.cuda.memory_allocated() <= allocated - weights
    assert torch.cuda.memory_reserved() <= torch.cuda.memory_allocated() + (2 << 20)  # cache emptied
    _assert_same(worker.encode(MIXED_TEXTS, pooling_task="classify"), want)  # woke up
    assert worker.weight_device.type == "cuda"
    assert worker.llm.model.hf_model.get_input_embeddings().weight is tied


def test_sleep_on_cuda_empties_the_cache(monkeypatch):
    """Without a GPU here: the release path syncs and empties the cache of the worker's own CUDA device."""
    from rlhf_rewards.workers import colocated

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(("sync", str(device))))
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(("empty_cache",)))

    class FakeDeviceContext:
        def __init__(self, device):
            self.device = device

        def __enter__(self):
            calls.append(("enter", str(self.device)))

        def __exit__(self, *exc):
            calls.append(("exit",))

    monkeypatch.setattr(torch.cuda, "device", FakeDeviceContext)
    colocated._release_accelerator_memory(torch.device("cuda:1"))
    assert calls == [("sync", "cuda:1"), ("enter", "cuda:1"), ("empty_cache",), ("exit",)]
    calls.clear()
    colocated._release_accelerator_memory(torch.device("cpu"))
    assert calls == []


# ---------------------------------------------------------------- DeepSpeed ZeRO-3
def test_loads_whole_while_zero3_is_configured(qwen3_rm, reference):
    """An ``HfDeepSpeedConfig`` of stage 3 is alive (as during ZeRO-3 training): the reward model still loads whole."""
    pytest.importorskip("deepspeed")
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    ds_config = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1}
    hf_ds = HfDeepSpeedConfig(ds_config)
    try:
        assert zero3_enabled()  # from_pretrained would now partition every weight
        worker = ColocatedWorker(str(qwen3_rm), device="cpu")
        assert zero3_enabled()  # restored for the trainer
        assert partitioned_parameters(worker.llm.model) == []
        shapes = {n: p.shape for n, p in reference.model.named_parameters()}
        assert {n: p.shape for n, p in worker.llm.model.named_parameters()} == shapes
        assert not any(hasattr(p, "ds_id") or hasattr(p, "ds_shape") for p in worker.llm.model.parameters())
        _assert_same(
            worker.encode(MIXED_TEXTS, pooling_task="classify"),
            reference.encode(MIXED_TEXTS, pooling_task="classify", use_tqdm=False),
        )
        with unsharded_loading():
            assert not zero3_enabled()
            with unsharded_loading():  # re-entrant
                assert not zero3_enabled()
            assert not zero3_enabled()
        assert zero3_enabled()
    finally:
        unset_hf_deepspeed_config()
        del hf_ds


def test_unsharded_loading_turns_off_fsdp_ram_efficient_loading(monkeypatch):
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    with unsharded_loading():
        assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "false"
    assert os.environ["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true"
    monkeypatch.delenv("FSDP_CPU_RAM_EFFICIENT_LOADING")
    with unsharded_loading():
        assert "FSDP_CPU_RAM_EFFICIENT_LOADING" not in os.environ


@pytest.mark.slow
def test_zero3_partitioning_in_a_real_deepspeed_process(qwen3_rm):
    """With DeepSpeed really partitioning (``zero.Init`` over torch.distributed), in a process of its own."""
    pytest.importorskip("deepspeed")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tests.workers.zero3_probe", str(qwen3_rm)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("ZERO3_REPORT ")), None)
    assert proc.returncode == 0 and line, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(line.split(" ", 1)[1])
    assert report["zero3_enabled"] and report["zero3_enabled_after"]
    # Control: transformers partitions under this config.
    assert report["control"]["ds_attrs"] and len(report["control"]["empty"]) == report["control"]["n"]
    for key in ("worker", "init_block_worker"):
        assert report[key]["n"] > 0 and report[key]["ds_attrs"] == [] and report[key]["empty"] == []
    assert report["worker_shapes_intact"]
    assert report["init_block_still_partitions"]  # the caller's own zero.Init block keeps working
    for key in ("scores", "scores_after_sleep", "init_block_scores"):
        assert torch.allclose(torch.tensor(report[key]), torch.tensor(report["expected"]), atol=1e-5), key
    assert "partitioned by DeepSpeed ZeRO-3" in (report["partitioned_llm_error"] or "")


@pytest.mark.slow
def test_two_rank_zero3_training_leaves_the_reward_model_whole(
    qwen3_rm, checkpoint_factory, reference, tmp_path
):
    """``accelerate launch`` with DeepSpeed ZeRO-3 over two CPU ranks (gloo): the policy is partitioned and wrapped
    in a DeepSpeed engine and trains; the colocated reward model is whole on both ranks, never wrapped, and
    scores exactly as the in-process engine between training steps."""
    pytest.importorskip("deepspeed")
    policy = checkpoint_factory("Qwen3ForCausalLM", seed=13, tokenizer_dir=str(qwen3_rm))
    ds_config = tmp_path / "ds_zero3.json"
    ds_config.write_text(
        json.dumps(
            {
                "zero_optimization": {"stage": 3},
                "train_micro_batch_size_per_gpu": 1,
                "gradient_accumulation_steps": 1,
                "bf16": {"enabled": False},
                "fp16": {"enabled": False},
            }
        )
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "MASTER_PORT": str(free_port()),
    }
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_port",
        env["MASTER_PORT"],
        "--use_deepspeed",
        "--deepspeed_config_file",
        str(ds_config),
        "--zero3_init_flag",
        "true",
        "-m",
        "tests.workers.zero3_probe",
        "trainer",
        str(qwen3_rm),
        str(policy),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    # Each rank's report is one JSON object after the marker (decoded from there, whatever follows it).
    chunks = proc.stdout.split("ZERO3_TRAINER_REPORT ")[1:]
    assert proc.returncode == 0 and len(chunks) == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = sorted((json.JSONDecoder().raw_decode(c)[0] for c in chunks), key=lambda r: r["rank"])
    texts = ["Hello, my name is", "What is 12 + 7? The answer is 19.", "ok"]
    expected = torch.tensor(
        [o.outputs.data.tolist() for o in reference.encode(texts, pooling_task="classify", use_tqdm=False)]
    )
    rm_numel = sum(p.numel() for p in reference.model.parameters())
    assert [r["rank"] for r in reports] == [0, 1] and all(r["world_size"] == 2 for r in reports)
    full = reports[0]["policy_full_numel"]
    for r in reports:
        assert r["zero_stage"] == 3 and r["zero3_enabled"]
        # The trainer's model: every weight partitioned, each rank holding about half, wrapped by DeepSpeed.
        assert len(r["policy"]["ds_attrs"]) == r["policy"]["n"] > 0
        assert 0 < r["policy_shard_numel"] < full
        assert r["engine_type"] == "DeepSpeedEngine" and r["wrapped_modules"] == ["Qwen3ForCausalLM"]
        assert all(math.isfinite(x) for x in r["losses"]) and r["losses"][1] != r["losses"][0]  # it trained
        # The reward model: whole, on this rank's device, not wrapped, not touched by the engine.
        assert r["worker_device"] == r["partial_state_device"]
        assert r["rm"]["ds_attrs"] == [] and r["rm"]["empty"] == [] and r["rm_partitioned"] == []
        assert r["rm_numel"] == rm_numel
        assert not r["rm_wrapped"] and r["rm_params_in_engine"] == 0
        assert r["rm_param_ids_after"] and r["rm_partitioned_after"] == []
        for step_scores in r["scores"]:
            torch.testing.assert_close(torch.tensor(step_scores), expected, rtol=1e-5, atol=1e-5)
    assert sum(r["policy_shard_numel"] for r in reports) >= full
