"""Run by tests/workers/test_colocated.py in a subprocess: a reward model loaded while DeepSpeed ZeRO-3 is on.

DeepSpeed's ZeRO-3 state (the ``HfDeepSpeedConfig`` weak reference, ``torch.distributed`` brought up by
``deepspeed.zero.Init``) is process-wide, so it is exercised in a process of its own. Prints one JSON line.

Two modes:

- ``python -m tests.workers.zero3_probe CHECKPOINT``: one process, ``HfDeepSpeedConfig`` and ``zero.Init``.
- ``accelerate launch --num_processes 2 --use_deepspeed --deepspeed_config_file DS.json --zero3_init_flag true
  -m tests.workers.zero3_probe trainer RM POLICY``: a real two-rank ZeRO-3 run on CPU (gloo). Each rank loads the
  policy (partitioned over the ranks), builds a ``ColocatedWorker`` for the reward model, lets accelerate wrap
  the policy in a DeepSpeed engine and trains two steps, scoring with the worker between them. Each rank prints
  ``ZERO3_TRAINER_REPORT {json}``.
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
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(_free_port()),
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        LOCAL_WORLD_SIZE="1",
    )
    import deepspeed
    import torch
    import transformers
    from transformers.integrations import HfDeepSpeedConfig

    from rlhf_rewards import LLM
    from rlhf_rewards.workers import ColocatedWorker
    from rlhf_rewards.workers.zero3 import zero3_enabled

    texts = ["Hello, my name is", "What is 12 + 7? The answer is 19.", "ok"]
    reference = LLM(path, device="cpu")
    expected = [
        o.outputs.data.tolist() for o in reference.encode(texts, pooling_task="classify", use_tqdm=False)
    ]
    shapes = {n: tuple(p.shape) for n, p in reference.model.named_parameters()}
    report: dict = {"expected": expected}

    ds_config = {
        "zero_optimization": {"stage": 3},
        "train_micro_batch_size_per_gpu": 1,
        "bf16": {"enabled": False},
    }
    hf_ds = HfDeepSpeedConfig(ds_config)  # what TrainingArguments(deepspeed=...) keeps alive during training
    report["zero3_enabled"] = zero3_enabled()

    # Control: plain from_pretrained partitions under this config, so the check below means something.
    control = transformers.AutoModelForSequenceClassification.from_pretrained(path)
    report["control"] = _param_report(control)

    worker = ColocatedWorker(path, device="cpu")
    report["worker"] = _param_report(worker.llm.model)
    report["worker_shapes_intact"] = {
        n: tuple(p.shape) for n, p in worker.llm.model.named_parameters()
    } == shapes
    report["zero3_enabled_after"] = zero3_enabled()  # restored for the trainer
    report["scores"] = [o.outputs.data.tolist() for o in worker.encode(texts, pooling_task="classify")]
    worker.sleep()
    worker.wake_up()
    report["scores_after_sleep"] = [
        o.outputs.data.tolist() for o in worker.encode(texts, pooling_task="classify")
    ]

    # An explicit `with deepspeed.zero.Init():` block (module construction patched) is suspended as well.
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        inside = ColocatedWorker(path, device="cpu")
        probe = torch.nn.Linear(4, 4)  # the block still partitions the caller's own modules
    report["init_block_worker"] = _param_report(inside.llm.model)
    report["init_block_scores"] = [
        o.outputs.data.tolist() for o in inside.encode(texts, pooling_task="classify")
    ]
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


def trainer(rm_path: str, policy_path: str) -> None:
    import torch
    import transformers
    from accelerate import Accelerator, PartialState

    from rlhf_rewards.workers import ColocatedWorker
    from rlhf_rewards.workers.zero3 import partitioned_parameters, zero3_enabled

    accelerator = Accelerator()  # DeepSpeed ZeRO-3 from `accelerate launch`; registers HfDeepSpeedConfig
    report: dict = {
        "distributed_type": str(accelerator.distributed_type),
        "zero_stage": accelerator.state.deepspeed_plugin.zero_stage,
        "zero3_enabled": zero3_enabled(),
    }
    # The trainer's model: loaded under zero.Init (which brings up torch.distributed over the launched ranks),
    # so each rank holds only its shard of every weight.
    policy = transformers.AutoModelForCausalLM.from_pretrained(policy_path)
    # Without an accelerator, accelerate's own process_index says 0 on every rank: ask torch.distributed.
    report["rank"], report["world_size"] = torch.distributed.get_rank(), torch.distributed.get_world_size()
    report["policy"] = _param_report(policy)
    report["policy_shard_numel"] = sum(
        p.ds_tensor.numel() for p in policy.parameters() if hasattr(p, "ds_tensor")
    )
    report["policy_full_numel"] = sum(p.ds_numel for p in policy.parameters() if hasattr(p, "ds_numel"))

    worker = ColocatedWorker(rm_path)  # device: PartialState().device, this rank's
    rm = worker.llm.model
    report["worker_device"] = str(worker.device)
    report["partial_state_device"] = str(PartialState().device)
    report["rm"] = _param_report(rm)
    report["rm_partitioned"] = partitioned_parameters(rm)
    report["rm_numel"] = sum(p.numel() for p in rm.parameters())
    report["rm_param_ids_before"] = sorted(id(p) for p in rm.parameters())

    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-3)
    engine, optimizer = accelerator.prepare(policy, optimizer)
    report["engine_type"] = type(engine).__name__
    report["wrapped_modules"] = [type(getattr(m, "module", m)).__name__ for m in accelerator._models]
    report["rm_wrapped"] = any(getattr(m, "module", m) is rm or m is rm for m in accelerator._models)
    engine_params = {id(p) for p in engine.parameters()}
    report["rm_params_in_engine"] = sum(1 for p in rm.parameters() if id(p) in engine_params)

    texts = ["Hello, my name is", "What is 12 + 7? The answer is 19.", "ok"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(policy_path)
    batch = tokenizer(["The quick brown fox jumps over the lazy dog."], return_tensors="pt").to(
        accelerator.device
    )
    report["scores"], report["losses"] = [], []
    for _ in range(2):
        worker.sleep()  # what RewardWorkerCallback does between scoring phases
        loss = engine(**batch, labels=batch["input_ids"]).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        report["losses"].append(float(loss.detach()))
        report["scores"].append(
            [o.outputs.data.tolist() for o in worker.encode(texts, pooling_task="classify")]
        )
    report["rm_param_ids_after"] = sorted(id(p) for p in rm.parameters()) == report.pop("rm_param_ids_before")
    report["rm_partitioned_after"] = partitioned_parameters(rm)
    # One write per report: both ranks share the pipe, and print's separate newline let them run together.
    sys.stdout.flush()
    os.write(sys.stdout.fileno(), ("ZERO3_TRAINER_REPORT " + json.dumps(report) + "\n").encode())
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    if sys.argv[1] == "trainer":
        trainer(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1])
