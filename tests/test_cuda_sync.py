"""On CUDA a measured pass never waits for the device until its one copy to the host."""

from __future__ import annotations

import pytest
import torch

from actstat.activations import make_activation
from actstat.inits import make_bias_init, make_init
from actstat.model import build_mlp, initialise, stack_mlps
from actstat.probe import measure, measure_stacked

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("act", ["relu", "tanh", "general_relu"])
@pytest.mark.parametrize("with_grad", [False, True])
@pytest.mark.parametrize("stacked", [False, True])
def test_no_host_sync_inside_a_pass(act, with_grad, stacked, monkeypatch):
    device = torch.device("cuda")
    activation = make_activation(act)
    models = [initialise(build_mlp(in_features=64, widths=[128] * 6, num_classes=10, bias=True,
                                   activation=activation), make_init(init),
                         make_bias_init("zeros"), act_gain=activation.gain, seed=0,
                         device=device, dtype=torch.float32) for init in ("kaiming", "lecun")]
    model = stack_mlps(models) if stacked else models[0]
    x = torch.randn(256, 64, device=device)
    labels = torch.randint(10, (256,), device=device) if with_grad else None
    copies = []
    real_tolist = torch.Tensor.tolist

    def tolist(tensor):
        # the pass's one host copy: allowed, and counted
        copies.append(tensor.numel())
        torch.cuda.set_sync_debug_mode(0)
        try:
            return real_tolist(tensor)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(torch.Tensor, "tolist", tolist)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        (measure_stacked if stacked else measure)(model, x, labels, activation=activation,
                                                  near_zero=0.01, saturation_cut=0.97, bins=40)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(copies) == 1
