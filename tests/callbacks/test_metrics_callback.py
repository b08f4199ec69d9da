"""``RewardMetricsCallback`` in a real ``GRPOTrainer`` run: per-reward-function latency, tokens/s,
retries/failures and raw-score distribution reach ``state.log_history`` and the other callbacks' ``logs``,
and equal what TRL itself recorded for the same generation batch."""

from __future__ import annotations

import math
import statistics

import pytest
from transformers import TrainerCallback

from rlhf_rewards.callbacks import RewardMetricsCallback
from rlhf_rewards.reward import RewardFunction
from rlhf_rewards.workers import RemoteWorker
from tests.callbacks.conftest import grpo_trainer

# Two prompts fit the short-context reward model with their completion; two never do (so they get None).
SHORT = ["What is 12 + 7?", "Hello, my name is"]
LONG = [
    "Tell me, in detail, " + "why the sky looks blue at noon and red at dusk, " * 6,
    "Summarize: " + "reward models score completions for policy training. " * 6,
]
MAX_LEN = 40


class LogsSeen(TrainerCallback):
    """Stands for a reporting integration (wandb, tensorboard): keeps the ``logs`` dicts it is given."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


def _stats(values: list[float]) -> dict[str, float]:
    valid = [v for v in values if not math.isnan(v)]
    return {
        "raw_mean": statistics.fmean(valid),
        "raw_std": statistics.stdev(valid),
        "raw_min": min(valid),
        "raw_max": max(valid),
        "raw_none_frac": 1 - len(valid) / len(values),
    }


def test_logged_figures_match_the_batches_trl_scored(policy_path, rm_path, tmp_path):
    from tests.workers.fake_server import FakeServer

    with FakeServer("500", "ok") as fake:  # the first scoring request fails once, then is retried
        remote = RemoteWorker(fake.url, timeout=10, max_retries=2)
        try:
            rm = RewardFunction(str(rm_path), name="rm", llm_kwargs={"device": "cpu"})
            short = RewardFunction(
                str(rm_path), name="short", llm_kwargs={"device": "cpu", "max_model_len": MAX_LEN}
            )
            served = RewardFunction(remote, name="served")
            seen = LogsSeen()
            # Listed before the metrics callback: the callback must still move ahead of it to be seen.
            trainer, snapshot = grpo_trainer(
                policy_path,
                [rm, short, served],
                [seen, RewardMetricsCallback([rm, short, served])],
                tmp_path,
                prompts=SHORT + LONG,
            )
            trainer.train()
        finally:
            remote.close()

    logged = [h for h in trainer.state.log_history if "rewards/rm/mean" in h]
    assert trainer.state.global_step == 2 and len(logged) == 2 and len(snapshot.steps) == 2
    nones = 0
    for i, (step, log) in enumerate(zip(snapshot.steps, logged, strict=True)):
        for name in ("rm", "short", "served"):
            values = step["rewards"][name]
            assert len(values) == 4
            if all(math.isnan(v) for v in values):
                assert log[f"rewards/{name}/raw_none_frac"] == 1.0
                assert f"rewards/{name}/raw_mean" not in log
                continue
            for key, want in _stats(values).items():
                assert log[f"rewards/{name}/{key}"] == pytest.approx(want, abs=1e-5), (i, name, key)
            assert log[f"rewards/{name}/latency_s"] > 0
            assert log[f"rewards/{name}/tokens_per_s"] > 0
            assert log[f"rewards/{name}/failures"] == 0
        nones += sum(math.isnan(v) for v in step["rewards"]["short"])
        assert log["rewards/rm/raw_none_frac"] == 0 and log["rewards/served/raw_none_frac"] == 0
        # Colocated workers never retry; the remote one retried the request the fake server failed, once.
        assert log["rewards/rm/retries"] == 0
        assert log["rewards/served/retries"] == (1 if i == 0 else 0)
        # The fake server's score is the length of the text it was sent: prompt + completion.
        want = [float(len(p + c)) for p, c in zip(step["prompt"], step["completion"], strict=True)]
        assert step["rewards"]["served"] == want
    # Both steps together saw every prompt twice, so the two long prompts' 4 completions got None.
    assert nones == 4
    # A reporting callback gets the same entries.
    reported = [entry for entry in seen.logs if "rewards/rm/mean" in entry]
    for entry, log in zip(reported, logged, strict=True):
        assert {k: v for k, v in entry.items() if "/raw_" in k} == {
            k: v for k, v in log.items() if "/raw_" in k
        }
        assert entry["rewards/served/retries"] == log["rewards/served/retries"]
