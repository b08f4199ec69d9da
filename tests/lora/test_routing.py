"""Row routing on a toy model, against peft's own single-adapter forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rlhf_rewards.lora.routing import BASE, active_adapter, mixed_adapter_batch


class _Toy(nn.Module):
    """``up`` sees rows as given; ``flat`` sees tokens flattened (as MoE experts do)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.Linear(6, 6)
        self.flat = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor, flatten: bool = False) -> torch.Tensor:
        h = self.up(x)
        if flatten:
            return self.flat(h.reshape(-1, h.shape[-1])).reshape(h.shape)
        return h


def _toy_with_adapters() -> nn.Module:
    from peft import LoraConfig
    from peft.functional import inject_adapter_in_model

    torch.manual_seed(0)
    model = _Toy()
    for name in ("a", "b"):
        inject_adapter_in_model(
            LoraConfig(r=2, target_modules=["up", "flat"], init_lora_weights=False), model, adapter_name=name
        )
    return model


def test_each_row_gets_its_own_adapter():
    model = _toy_with_adapters()
    x = torch.randn(3, 4, 6)
    names = ["a", BASE, "b"]
    with mixed_adapter_batch(model, names):
        mixed = model(x)
    for row, name in enumerate(names):
        if name == BASE:
            with active_adapter(model, "none-such"):  # no adapter active: the base layers alone
                want = model(x[row : row + 1])
        else:
            with active_adapter(model, name):
                want = model(x[row : row + 1])
        torch.testing.assert_close(mixed[row : row + 1], want, atol=1e-6, rtol=0)
    assert not torch.allclose(mixed[0], mixed[2], atol=1e-3)


def test_layer_that_flattens_rows_is_refused_not_misrouted():
    model = _toy_with_adapters()
    with (
        mixed_adapter_batch(model, ["a", "b"]),
        pytest.raises(RuntimeError, match=r"'flat' sees an input of shape \(8, 6\)"),
    ):
        model(torch.randn(2, 4, 6), flatten=True)
    # The hooks are gone afterwards: a plain forward works.
    assert model(torch.randn(2, 4, 6), flatten=True).shape == (2, 4, 6)
