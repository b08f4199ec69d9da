"""Segment attention: exact attention over packed, prefix-shared token runs.

- :mod:`~rlhf_rewards.engine.attention.plan`: the segments of a packed row and the plan of one forward.
- :mod:`~rlhf_rewards.engine.attention.buckets`: the default backend (padded buckets of similar segments,
  ancestor parts merged by log-sum-exp), with its planner.
- :mod:`~rlhf_rewards.engine.attention.varlen`: FlashAttention's varlen kernel (CUDA, half precision).
- :mod:`~rlhf_rewards.engine.attention.blocked`: the batch-invariant kernel of deterministic mode.
- :mod:`~rlhf_rewards.engine.attention.kernels`: the SDPA calls and the log-sum-exp merge they share.
- :mod:`~rlhf_rewards.engine.attention.interface`: the dispatch between them and the transformers
  registration.
"""
