"""Run engine cases on N ranks launched the way ``torchrun`` launches them (each rank its own process group
member, every rank calling ``encode`` with the same prompts), and collect each rank's outputs.

One process group serves every case, so the start-up of the ranks (interpreter, torch and transformers
imports: most of the cost on a small CPU) is paid once for all the models a test compares.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch


@dataclass
class Call:
    """One ``encode`` call."""

    prompts: list[Any]
    task: str
    params: Any = None


@dataclass
class Case:
    """A model, its ``LLM`` arguments (the parallel sizes included) and the calls to make."""

    name: str
    model: str
    llm_kwargs: dict[str, Any]
    calls: list[Call] = field(default_factory=list)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rank_main(rank: int, world: int, init_method: str, cases: list[Case], out_dir: str) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
    )
    torch.set_num_threads(1)
    import torch.distributed as dist

    from rlhf_rewards import LLM

    dist.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=world, timeout=timedelta(seconds=600)
    )
    results: dict[str, Any] = {}
    for case in cases:
        llm = LLM(case.model, device="cpu", dtype="float32", **case.llm_kwargs)
        outputs, stats = [], []
        for c in case.calls:
            outputs.append(
                [o.outputs.data for o in llm.encode(c.prompts, c.params, pooling_task=c.task, use_tqdm=False)]
            )
            stats.append(dataclasses.asdict(llm.runner.last_stats))
        results[case.name] = {
            "outputs": outputs,
            "resident_bytes": llm._parallel.resident_bytes,
            "stats": stats,
        }
        llm.shutdown()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.destroy_process_group()


def run_spmd(world: int, cases: list[Case], out_dir: Path) -> list[dict[str, Any]]:
    """Every case on ``world`` ranks; one result dict per rank (``{case: {"outputs", "resident_bytes", ...}}``)."""
    torch.multiprocessing.start_processes(
        _rank_main,
        args=(world, f"tcp://127.0.0.1:{_free_port()}", cases, str(out_dir)),
        nprocs=world,
        start_method="spawn",
    )
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(world)]
