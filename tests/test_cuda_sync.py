"""On CUDA a measured pass never waits for the device until its one copy to the host, and a
watched training run waits once per recorded step (its one copy, after the step's backward),
never inside a step, recorded or not."""

from __future__ import annotations

import pytest
import torch

from actstat.activations import make_activation
from actstat.capture import capture, capture_stacked
from actstat.inits import make_bias_init, make_init
from actstat.model import build_mlp, initialise, stack_mlps
from actstat.watch import Schedule, watch

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
        if stacked:
            capture_stacked(model, x, labels, groups=len(models), grad=with_grad, bins=40)
        else:
            capture(model, x, labels, grad=with_grad, bins=40)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(copies) == 1


@pytest.mark.parametrize("bins", [0, 40])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_waits_only_once_per_recorded_step(optimizer, bins, monkeypatch):
    """Sync debug mode raises on any synchronising call inside `watch`; the one wait a recorded
    step makes (its one copy to the host, `tolist`, or a torch.cuda.synchronize) is let
    through and counted: 12 steps recorded every 4 (steps 0, 4, 8 and the last) make 4 waits.
    With histograms too: their ranges, fixed at step 0, must not cost a wait of their own."""
    device = torch.device("cuda")
    activation = make_activation("relu")
    model = initialise(build_mlp(in_features=64, widths=[128] * 4, num_classes=10, bias=True,
                                 activation=activation), make_init("kaiming"),
                       make_bias_init("zeros"), act_gain=activation.gain, seed=0,
                       device=device, dtype=torch.float32)
    x = torch.randn(512, 64, device=device)
    y = torch.randint(10, (512,), device=device)
    schedule = Schedule(steps=12, every=4, batch_size=64, lr=0.01, optimizer=optimizer,
                        momentum=0.9)
    waits = []
    real_synchronize, real_tolist = torch.cuda.synchronize, torch.Tensor.tolist

    def allowed(real):
        def wait(*args, **kwargs):
            waits.append(real.__name__)
            torch.cuda.set_sync_debug_mode(0)
            try:
                return real(*args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("error")
        return wait

    monkeypatch.setattr(torch.cuda, "synchronize", allowed(real_synchronize))
    monkeypatch.setattr(torch.Tensor, "tolist", allowed(real_tolist))
    real_synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trajectory = watch(model, x, y, schedule, torch.nn.functional.cross_entropy,
                           labelled=True, near_zero=0.01, bins=bins)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert len(waits) == len(schedule.recorded()) == 4, waits
    assert len(trajectory.steps) == 4
