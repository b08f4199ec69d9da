"""Run by tests/workers/test_colocated.py in a subprocess: a reward model loaded while DeepSpeed ZeRO-3 is on.

DeepSpeed's ZeRO-3 state (the ``HfDeepSpeedConfig`` weak reference, ``torch.distributed`` brought up by
``deepspeed.zero.Init``) is process-wide, so it is exercised in a process of its own. Prints one JSON line.

Usage: ``python -m tests.workers.zero3_probe CHECKPOINT``
"""

from __future__ import annotations

import json
import os
import socket
import sys


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _param_report(module) -> dict:
    params = list(module.named_parameters())
    return {
        "n": len(params),
        "ds_attrs": [n for n, p in params if hasattr(p, "ds_id") or hasattr(p, "ds_shape")],
        "empty": [n for n, p in params if p.numel() == 0],
    }


def main(path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1",
                      LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    import deepspeed
    import torch
    import transformers
    from transformers.integrations import HfDeepSpeedConfig

    from rlhf_rewards import LLM
    from rlhf_rewards.workers import ColocatedWorker
    from rlhf_rewards.workers.zero3 import zero3_enabled

    texts = ["Hello, my name is", "What is 12 + 7? The answer is 19.", "ok"]
    reference = LLM(path, device="cpu")
    expected = [o.outputs.data.tolist() for o in reference.encode(texts, pooling_task="classify", use_tqdm=False)]
    shapes = {n: tuple(p.shape) for n, p in reference.model.named_parameters()}
    report: dict = {"expected": expected}

    ds_config = {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1, "bf16": {"enabled": False}}
    hf_ds = HfDeepSpeedConfig(ds_config)  # what TrainingArguments(deepspeed=...) keeps alive during training
    report["zero3_enabled"] = zero3_enabled()

    # Control: plain from_pretrained partitions under this config, so the check below means something.
    control = transformers.AutoModelForSequenceClassification.from_pretrained(path)
    report["control"] = _param_report(control)

    worker = ColocatedWorker(path, device="cpu")
    report["worker"] = _param_report(worker.llm.model)
    report["worker_shapes_intact"] = {n: tuple(p.shape) for n, p in worker.llm.model.named_parameters()} == shapes
    report["zero3_enabled_after"] = zero3_enabled()  # restored for the trainer
    report["scores"] = [o.outputs.data.tolist() for o in worker.encode(texts, pooling_task="classify")]
    worker.sleep()
    worker.wake_up()
    report["scores_after_sleep"] = [o.outputs.data.tolist() for o in worker.encode(texts, pooling_task="classify")]

    # An explicit `with deepspeed.zero.Init():` block (module construction patched) is suspended as well.
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        inside = ColocatedWorker(path, device="cpu")
        probe = torch.nn.Linear(4, 4)  # the block still partitions the caller's own modules
    report["init_block_worker"] = _param_report(inside.llm.model)
    report["init_block_scores"] = [o.outputs.data.tolist() for o in inside.encode(texts, pooling_task="classify")]
    report["init_block_still_partitions"] = hasattr(probe.weight, "ds_id")

    # An LLM built under ZeRO-3 without the guard is refused with advice, not scored with empty weights.
    try:
        ColocatedWorker(_partitioned_llm(path))
        report["partitioned_llm_error"] = None
    except ValueError as exc:
        report["partitioned_llm_error"] = str(exc)
    del hf_ds
    print("ZERO3_REPORT " + json.dumps(report))


def _partitioned_llm(path: str):
    from rlhf_rewards import LLM

    llm = LLM.__new__(LLM)
    import transformers

    llm.model = transformers.AutoModelForSequenceClassification.from_pretrained(path)  # partitioned
    return llm


if __name__ == "__main__":
    main(sys.argv[1])
