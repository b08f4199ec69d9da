"""Test tooling for rlhf-rewards' own tests, benchmarks and recipe smoke runs; not part of the library's API.

- :mod:`~rlhf_rewards.testing.checkpoints`: tiny local checkpoints of every supported architecture.
- :mod:`~rlhf_rewards.testing.tokenizer`: the one byte-level BPE tokenizer builder (tests, benchmarks, assets).
- :mod:`~rlhf_rewards.testing.lora`: random peft LoRA adapters and their merged references.
- :mod:`~rlhf_rewards.testing.server`: the one launcher of ``rlhf-rewards serve`` on 127.0.0.1.
- :mod:`~rlhf_rewards.testing.tiny_models`: the recipes' tiny policy and reward models (``--build_tiny_models``).
- :mod:`~rlhf_rewards.testing.references`: model-card reference code tests compare against.

Nothing in the library imports this package: it sits above every other layer.
"""
