"""Engine tests run their plain-transformers references on one thread.

The models here are tiny: with two intra-op threads on a busy 2-core machine every kernel call of the
reference can wait for a scheduler slice, which made these tests many times slower without testing
anything more. The engine itself picks one thread for such small forwards (``engine/threads.py``).
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
