"""One command that proves the CUDA paths on one GPU (issue 19), and runs the same checks on a CPU as a test.

    bash scripts/gpu_check.sh                               # on a CUDA machine (see README "GPU check")
    python -m benchmarks.gpu_check --device cuda            # the same, without the script's environment set-up
    python -m benchmarks.gpu_check --device cpu --tiny      # every check on this CPU, tiny shapes (the test)

Models, built locally with random weights (transformers' own initialisation, norm weights perturbed) and the
real configs' shapes, saved in bfloat16 as the hub checkpoints are:

- ``qwen3-0.6b``: ``Qwen3ForSequenceClassification`` shaped as Qwen3-0.6B (all 28 layers);
- ``llama-3.2-1b``: ``LlamaForSequenceClassification`` shaped as Llama-3.2-1B (all 16 layers, llama3 RoPE);
- ``qwen2.5-math-prm``: ``Qwen2ForProcessRewardModel`` shaped as Qwen2.5-Math-PRM-7B, 4 of its 28 layers.

``--tiny`` shrinks every model to 2 layers x hidden 128 and the workloads to a few texts.

Checks (one final line each: ``PASS``, ``FAIL``, ``SKIP`` or ``N/A`` and the check's name):

- ``accuracy <model> <dtype> varlen=<on|off>``: the engine's raw scores against transformers' own forward of
  the same checkpoint (one unpadded forward per text), with ``RLHF_REWARDS_VARLEN`` unset and ``=0``.
  float32: max abs diff <= 1e-4. bfloat16/float16: against the float32 forward, the engine's error is at
  most 5% of the largest float32 score, or, if larger, twice transformers' own error in that dtype plus 1%
  of that score (at full depth bf16 rounding alone can pass 5% on random weights; a wrong attention path
  is off by far more). With the varlen path on, CUDA half precision must actually call the FlashAttention varlen
  kernel; float32 and CPU must not (they keep the bucket path: on a CPU the varlen lines say N/A).
- ``sleep <model>``: ``ColocatedWorker.sleep()`` gives back to the driver (``torch.cuda.mem_get_info``) at
  least 90% of the bytes of the weights (N/A on a CPU, where weights stay put);
  ``wake <model>``: after ``wake_up()`` the scores are bit-identical to those before ``sleep()``.
- ``deterministic <model> <dtype>`` (the RM and the PRM; float32 and bfloat16): ``LLM(deterministic=True)``
  scores every text alone, then all together, in reverse order and under a small ``max_num_batched_tokens``
  (several micro-batches): every text's scores must be ``torch.equal`` to its scores alone, and within the
  accuracy tolerance of the default engine (float32: 1e-4; half: 5% of the largest score). On CUDA this is
  the batched blocked-attention path and cuBLAS on fixed row tiles; the line also reports the deterministic
  mode's throughput on the bench workload against the default engine's.
- ``bench <workload> <model>``: the GRPO workload of ``benchmarks/`` (16 prompts x 8 completions) and the PRM
  workload (8 problems x 8 solutions) on the engine, TRL's built-in path (``GRPOTrainer._calculate_rewards``,
  or its line-for-line replica when TRL is not importable; the JSON says which) and the HF loop (padded
  batches of 8; the PRM model card's per-sample loop); throughput, peak memory and max abs diff against the
  engine; the scores must agree within the tolerance above. ``bench-compiled <workload> <model>``: the same
  with ``LLM(..., enforce_eager=False)``.

Every check is isolated: one that raises prints FAIL with the error and the others still run. Exit code 1
if any check FAILs. The report is written as JSON to ``--out`` after every check (and copied to ``$OUT`` when
that is set), so a run cut short still leaves its results.

The package: :mod:`.cases` (the models and which checks run on each), :mod:`.reference` (transformers' own
forward, the engine's scores laid out the same way, the tolerances), :mod:`.checks` (accuracy, sleep/wake,
deterministic), :mod:`.bench` (engine against TRL's path and the HF loop), :mod:`.report` (outcomes, the JSON
report, the table) and :mod:`.__main__` (the command line).
"""

import os

# Set before torch, transformers or tokenizers load (every module of the package imports them).
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
