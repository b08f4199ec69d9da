"""Split engines that never hang: several in one process, and every fault ends in an error within seconds.

Each test is bounded by a pytest timeout marker (a hang fails the test instead of stalling the run). The engines
are ``LLM(..., tensor_parallel_size=2)`` or ``pipeline_parallel_size=2`` built here, on CPU (gloo): this process
is the driver and starts one worker process per rank.
"""

from __future__ import annotations

import gc
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch
import torch.distributed as dist

from rlhf_rewards import LLM
from rlhf_rewards.parallel import ParallelConfig, WorkerFailed
from rlhf_rewards.parallel.config import CALL_TIMEOUT_ENV, START_TIMEOUT_ENV
from rlhf_rewards.parallel.main_guard import first_unguarded_line, guard_hint
from rlhf_rewards.parallel.messages import RemoteError
from rlhf_rewards.parallel.worker_pool import WorkerPool
from tests.parallel.conftest import GROUP_TEXTS, PRM_TEXTS

ATOL = 1e-5
#: The checkout these tests run from: a script started here must import the same rlhf_rewards.
ROOT = str(Path(__file__).resolve().parents[2])


def _scores(llm: LLM, texts: list[str], task: str) -> list[torch.Tensor]:
    return [o.outputs.data for o in llm.encode(texts, pooling_task=task, use_tqdm=False)]


def _assert_parity(got: list[torch.Tensor], want: list[torch.Tensor]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=ATOL, rtol=0)


def _rank_processes() -> list[multiprocessing.Process]:
    """The split engines' worker processes still running (``active_children`` reaps those that ended)."""
    return [c for c in multiprocessing.active_children() if c.name.startswith("rlhf-rewards-rank")]


def _port_is_free(port: int) -> bool:
    """Nothing listens on ``port`` (SO_REUSEADDR: connections closing on it do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _kill_when_started(rank: int, sig: int = signal.SIGKILL) -> threading.Thread:
    """Kill the worker of ``rank`` as soon as it exists (while the engine is still starting)."""

    def kill() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                children = multiprocessing.active_children()
            except RuntimeError:  # the main thread is adding a child right now
                continue
            for child in children:
                if child.name == f"rlhf-rewards-rank{rank}" and child.pid:
                    os.kill(child.pid, sig)
                    return
            time.sleep(0.01)

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------------------------------------------- settings
def test_timeouts_come_from_the_argument_then_the_environment(monkeypatch):
    monkeypatch.delenv(START_TIMEOUT_ENV, raising=False)
    monkeypatch.delenv(CALL_TIMEOUT_ENV, raising=False)
    default = ParallelConfig(2)
    assert (default.start_timeout_s, default.call_timeout_s) == (900.0, 300.0)
    monkeypatch.setenv(CALL_TIMEOUT_ENV, "42")
    assert ParallelConfig(2).call_timeout_s == 42.0
    assert ParallelConfig(2, call_timeout_s=7).call_timeout_s == 7.0  # the argument wins
    monkeypatch.setenv(START_TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="RLHF_REWARDS_PARALLEL_START_TIMEOUT_S='soon'"):
        ParallelConfig(2)
    with pytest.raises(ValueError, match="call_timeout_s must be a number of seconds > 0"):
        ParallelConfig(2, start_timeout_s=5, call_timeout_s=0)


# ---------------------------------------------------------------------------------------------------- start-up
@pytest.mark.timeout(60)
def test_a_worker_killed_at_startup_fails_the_constructor(seq_rm):
    killer = _kill_when_started(1)
    with pytest.raises(WorkerFailed, match=r"rank 1 .* was killed by SIGKILL .* while starting") as failure:
        LLM(str(seq_rm), device="cpu", tensor_parallel_size=2)
    killer.join()
    assert "Last lines of its stderr" in str(failure.value)
    assert _rank_processes() == []  # rank 0 was stopped too
    assert not dist.is_initialized()


@pytest.mark.timeout(60)
def test_a_worker_that_hangs_while_starting_hits_the_start_timeout(seq_rm):
    stopper = _kill_when_started(1, signal.SIGSTOP)  # alive, but never gets anywhere
    with pytest.raises(WorkerFailed, match=r"ranks \[(0, )?1\] .* did not finish starting within 5 s"):
        LLM(str(seq_rm), device="cpu", tensor_parallel_size=2, parallel_start_timeout_s=5)
    stopper.join()
    assert _rank_processes() == []  # terminated, the stopped one included


class FailsOnRank1(LLM):
    """An engine whose rank 1 cannot load its shard (as a GPU out of memory would), in a worker only."""

    def __init__(self, *args, **kwargs):
        if os.environ.get("RLHF_REWARDS_PARALLEL_WORKER") == "1":
            raise ValueError("no room for this shard")
        super().__init__(*args, **kwargs)


@pytest.mark.slow  # the failing worker imports torch, transformers and this test module first (10-25 s)
@pytest.mark.timeout(90)
def test_a_worker_that_fails_to_load_reports_its_own_error(seq_rm):
    with pytest.raises(
        WorkerFailed, match="rank 1 .* failed to start: ValueError: no room for this shard"
    ) as failure:
        FailsOnRank1(str(seq_rm), device="cpu", tensor_parallel_size=2)
    assert isinstance(failure.value.__cause__, ValueError)  # the worker's exception, chained
    assert _rank_processes() == []


def _remote(exc: BaseException) -> RemoteError:
    try:
        raise exc
    except BaseException as raised:  # noqa: BLE001 - captured as a worker captures it
        return RemoteError.capture(raised)


def test_a_call_error_is_raised_as_is_only_when_every_rank_failed_alike():
    pool = WorkerPool.__new__(WorkerPool)  # the decision alone, without processes
    pool.config, pool.model, pool._workers, pool.broken = ParallelConfig(2), "rm", [], None
    with pytest.raises(ValueError, match="bad input"):
        pool._raise_call_errors({0: _remote(ValueError("bad input")), 1: _remote(ValueError("bad input"))})
    assert pool.broken is None  # in step: the engine keeps working, as one process would
    with pytest.raises(WorkerFailed, match=r"rank 1: OutOfMemoryError: .* ranks \[0\] succeeded"):
        pool._raise_call_errors({1: _remote(torch.OutOfMemoryError("out of memory on cuda:1"))})
    assert "no longer in step" in pool.broken
    pool.broken = None
    lost = RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4242")
    with pytest.raises(WorkerFailed, match="failed differently"):  # a collective error: never in step
        pool._raise_call_errors({0: _remote(lost), 1: _remote(lost)})


# ---------------------------------------------------------------------------------------------------- calls
@pytest.mark.timeout(90)
def test_a_worker_killed_mid_call_fails_that_call_and_every_later_one(seq_rm):
    reference = LLM(str(seq_rm), device="cpu", dtype="float32", max_num_batched_tokens=48)
    want = _scores(reference, GROUP_TEXTS, "classify")
    llm = LLM(str(seq_rm), device="cpu", dtype="float32", tensor_parallel_size=2, max_num_batched_tokens=48)
    try:
        _assert_parity(_scores(llm, GROUP_TEXTS, "classify"), want)
        victim = llm._parallel.group.workers[1]
        run = llm.runner.run

        def run_and_kill_at_first_batch(requests, on_batch_done=None):
            def progress(
                n: int,
            ) -> None:  # the first micro-batch is done: the call is under way on every rank
                if victim.is_alive():
                    os.kill(victim.pid, signal.SIGKILL)
                if on_batch_done is not None:
                    on_batch_done(n)

            return run(requests, on_batch_done=progress)

        llm.runner.run = run_and_kill_at_first_batch  # type: ignore[method-assign]
        with pytest.raises(WorkerFailed, match=r"rank 1 .* was killed by SIGKILL .* during a call"):
            llm.encode(GROUP_TEXTS, pooling_task="classify", use_tqdm=False)  # several micro-batches
        del llm.runner.run
        assert _rank_processes() == []  # the other rank was stopped, not left in its collective
        with pytest.raises(WorkerFailed, match="can no longer score: rank 1"):
            llm.encode(GROUP_TEXTS[:1], pooling_task="classify")
    finally:
        llm.shutdown()


@pytest.mark.timeout(90)
def test_a_stuck_worker_hits_the_call_timeout(seq_rm, monkeypatch):
    monkeypatch.setenv(CALL_TIMEOUT_ENV, "3")  # the environment variable, as a server would set it
    llm = LLM(str(seq_rm), device="cpu", dtype="float32", tensor_parallel_size=2)
    try:
        assert llm.parallel_config.call_timeout_s == 3.0
        assert len(llm.encode(GROUP_TEXTS, pooling_task="classify", use_tqdm=False)) == len(GROUP_TEXTS)
        os.kill(llm._parallel.group.workers[1].pid, signal.SIGSTOP)  # alive, but never answers
        # Rank 0 waits for rank 1 in a collective, so both are silent.
        with pytest.raises(WorkerFailed, match=r"ranks \[(0, )?1\] .* sent nothing for 3 s during a call"):
            llm.encode(GROUP_TEXTS, pooling_task="classify", use_tqdm=False)
        assert all(not p.is_alive() for p in llm._parallel.group.workers)  # SIGKILL stops a stopped process
        with pytest.raises(WorkerFailed, match="can no longer score"):
            llm.encode(GROUP_TEXTS[:1], pooling_task="classify")
    finally:
        llm.shutdown()


# ---------------------------------------------------------------------------------------------------- several engines
@pytest.mark.slow  # three split engines start (each imports torch and transformers in two fresh processes)
@pytest.mark.timeout(600)
def test_split_engines_one_after_the_other_and_at_once_score_exactly(seq_rm, prm):
    want_rm = _scores(LLM(str(seq_rm), device="cpu", dtype="float32"), GROUP_TEXTS, "classify")
    want_prm = _scores(LLM(str(prm), device="cpu", dtype="float32"), PRM_TEXTS, "token_classify")

    rm = LLM(str(seq_rm), device="cpu", dtype="float32", tensor_parallel_size=2)
    _assert_parity(_scores(rm, GROUP_TEXTS, "classify"), want_rm)
    # A trainer's RM and PRM: the second is built while the first is alive, and both keep scoring exactly.
    prm_llm = LLM(str(prm), device="cpu", dtype="float32", tensor_parallel_size=2)
    for _ in range(2):
        _assert_parity(_scores(prm_llm, PRM_TEXTS, "token_classify"), want_prm)
        _assert_parity(_scores(rm, GROUP_TEXTS, "classify"), want_rm)
    assert not dist.is_initialized()  # neither engine touched this process's torch.distributed
    rm_workers, rm_port = rm._parallel.group.workers, rm._parallel.group.port
    assert rm_port != prm_llm._parallel.group.port

    rm.shutdown()  # one after the other: the notebook cell run again
    assert all(not p.is_alive() for p in rm_workers) and _port_is_free(rm_port)
    again = LLM(str(seq_rm), device="cpu", dtype="float32", pipeline_parallel_size=2)
    _assert_parity(_scores(again, GROUP_TEXTS, "classify"), want_rm)
    _assert_parity(_scores(prm_llm, PRM_TEXTS, "token_classify"), want_prm)

    # Garbage collection stops an engine's workers and frees its port, as shutdown() does.
    workers, port = again._parallel.group.workers, again._parallel.group.port
    del again
    gc.collect()
    assert all(not p.is_alive() and p.exitcode == 0 for p in workers) and _port_is_free(port)

    # A rank killed between calls (here the pipeline's first stage) fails the next call at once.
    victim = prm_llm._parallel.group.workers[0]
    os.kill(victim.pid, signal.SIGKILL)
    victim.join(10)
    with pytest.raises(WorkerFailed, match=r"rank 0 .* was killed by SIGKILL .* between calls"):
        prm_llm.encode(PRM_TEXTS, pooling_task="token_classify", use_tqdm=False)
    prm_llm.shutdown()
    assert _rank_processes() == []


# ---------------------------------------------------------------------------------------------------- scripts
NO_GUARD_SCRIPT = """
import sys
from rlhf_rewards import LLM

llm = LLM(sys.argv[1], device="cpu", tensor_parallel_size=2)  # no `if __name__ == "__main__":` guard
print("SCORED", llm.encode(["hello"], pooling_task="token_classify", use_tqdm=False))
"""


@pytest.mark.timeout(60)  # a fresh interpreter (imports torch and transformers): about 10 s
def test_a_script_without_main_guard_fails_fast_and_says_how_to_fix_it(prm, tmp_path):
    script = tmp_path / "score_no_guard.py"
    script.write_text(NO_GUARD_SCRIPT)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": ROOT,
    }
    proc = subprocess.Popen(
        [sys.executable, str(script), str(prm)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=os.getcwd(),
    )
    try:
        out, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and "SCORED" not in out
    # Refused before any worker starts, naming the script, the line and the fix.
    assert f'{script} (line 5) that is not under an `if __name__ == "__main__":` guard' in err, err[-3000:]
    assert 'Fix: put the code that builds and uses the LLM under `if __name__ == "__main__":`' in err
    assert "(rlhf-rewards rank" not in err  # no worker ran


def test_the_main_guard_check_reads_the_script():
    source = "import x\nllm = LLM()\nif __name__ == '__main__':\n    llm = LLM()\n    main()\n"
    assert first_unguarded_line(source, [2]) == 2
    assert first_unguarded_line(source, [4]) is None and first_unguarded_line(source, [5]) is None
    assert first_unguarded_line('if "__main__" == __name__ and True:\n    go()\n', [2]) is None


CHILD_TRACEBACK = """Traceback (most recent call last):
  File "/usr/lib/python3.11/multiprocessing/spawn.py", line 140, in _check_not_importing_main
    raise RuntimeError(
RuntimeError:
        An attempt has been made to start a new process before the
        current process has finished its bootstrapping phase."""


def test_a_worker_that_re_ran_an_unguarded_script_is_explained():
    """The fallback where the check above cannot see the script: the dead worker's stderr names the cause."""
    hint = guard_hint(CHILD_TRACEBACK)
    assert 'no `if __name__ == "__main__":` guard' in hint and "Fix: put the code" in hint
    assert guard_hint("RuntimeError: CUDA out of memory") == ""


EXIT_SCRIPT = """
import sys, time
from rlhf_rewards import LLM

if __name__ == "__main__":
    llm = LLM(sys.argv[1], device="cpu", tensor_parallel_size=2)
    llm.encode(["hello"], pooling_task="token_classify", use_tqdm=False)
    print("WORKERS", *[p.pid for p in llm._parallel.group.workers], flush=True)
    if sys.argv[2] == "wait":
        time.sleep(600)  # killed by the test
"""


def _gone(pids: list[int], timeout: float) -> bool:
    """Every pid has exited (a zombie waiting for a reaper counts as exited) within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not alive:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow  # two fresh interpreters, each with its workers
@pytest.mark.timeout(180)
def test_interpreter_exit_and_a_killed_driver_take_the_workers_along(prm, tmp_path):
    script = tmp_path / "score_and_exit.py"
    script.write_text(EXIT_SCRIPT)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": ROOT,
    }
    # The script ends without shutdown(): interpreter exit stops the workers (and does not wait long for them).
    done = subprocess.run(
        [sys.executable, str(script), str(prm), "exit"], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pids = [
        int(p)
        for p in next(line for line in done.stdout.splitlines() if line.startswith("WORKERS")).split()[1:]
    ]
    assert len(pids) == 2 and _gone(pids, 10)
    assert "leaked" not in done.stderr  # the workers released what multiprocessing tracks

    # The driver killed outright (no atexit, no finalizer): each worker notices and exits by itself.
    driver = subprocess.Popen(
        [sys.executable, str(script), str(prm), "wait"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        line = driver.stdout.readline()
        assert line.startswith("WORKERS"), line
        pids = [int(p) for p in line.split()[1:]]
    finally:
        driver.kill()
        driver.wait()
    assert _gone(pids, 10)


TORCHRUN_IN_USER_GROUP = """
import json, sys
import torch
import torch.distributed as dist
from rlhf_rewards import LLM

if __name__ == "__main__":
    dist.init_process_group("gloo")  # the user's own group (a trainer's), made before any engine
    results = {}
    for path, task in (sys.argv[1], "token_classify"), (sys.argv[2], "classify"):
        llm = LLM(path, device="cpu", dtype="float32", tensor_parallel_size=2)
        outs = llm.encode(json.loads(sys.argv[3]), pooling_task=task, use_tqdm=False)
        results[task] = [o.outputs.data.tolist() for o in outs]
        llm.shutdown()
    # The user's group is intact: same world, and a collective on it still works.
    total = torch.ones(1)
    dist.all_reduce(total)
    results["group"] = [dist.is_initialized(), dist.get_world_size(), total.item()]
    with open(f"{sys.argv[4]}/rank{dist.get_rank()}.json", "w") as f:  # one file per rank: stdout interleaves
        json.dump(results, f)
    dist.destroy_process_group()
"""


@pytest.mark.slow  # torchrun starts two fresh interpreters
@pytest.mark.timeout(300)
def test_torchrun_inside_the_users_process_group_scores_and_leaves_it_intact(prm, seq_rm, tmp_path):
    script = tmp_path / "score_in_group.py"
    script.write_text(TORCHRUN_IN_USER_GROUP)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONPATH": ROOT,
    }
    texts = PRM_TEXTS
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            str(script),
            str(prm),
            str(seq_rm),
            json.dumps(texts),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=280,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    want = {
        "token_classify": _scores(LLM(str(prm), device="cpu", dtype="float32"), texts, "token_classify"),
        "classify": _scores(LLM(str(seq_rm), device="cpu", dtype="float32"), texts, "classify"),
    }
    for rank in range(2):  # under torchrun every rank gets the outputs
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for task, expected in want.items():
            got = [
                torch.tensor(g, dtype=torch.float32).reshape(w.shape)
                for g, w in zip(results[task], expected, strict=True)
            ]
            _assert_parity(got, expected)
        assert results["group"] == [True, 2, 2.0]


def test_no_worker_is_left_behind():
    """Runs last in this module: every engine above stopped its workers."""
    assert _rank_processes() == []
    assert [
        p for p in psutil.Process().children(recursive=True) if "spawn_main" in " ".join(p.cmdline())
    ] == []
