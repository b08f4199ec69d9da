"""Test tooling for rlhf-rewards' own tests, benchmarks and recipe smoke runs; not part of the library's API.

- :mod:`~tests.support.checkpoints`: tiny local checkpoints of every supported architecture.
- :mod:`~tests.support.lora`: random peft LoRA adapters and their merged references.
- :mod:`~tests.support.server`: the one launcher of ``rlhf-rewards serve`` on 127.0.0.1.
- :mod:`~tests.support.references`: model-card reference code tests compare against.

Nothing in the library imports this package: it sits above every other layer.
"""
