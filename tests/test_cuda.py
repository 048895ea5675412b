"""The CUDA path: same weights and batch as on the CPU, so the same statistics (skipped without CUDA)."""

from __future__ import annotations

import pytest
import torch

from actstat.config import load_config
from actstat.pipeline import profile

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("dtype, rtol", [("float32", 1e-3), ("float64", 1e-9),
                                         ("bfloat16", 5e-2)])
def test_cuda_matches_cpu(dtype, rtol):
    overrides = {"init": ["kaiming", "randn", "zeros"], "activation": ["relu", "tanh"],
                 "model.depth": 6, "dtype": dtype}
    cpu = profile(load_config(None, {**overrides, "device": "cpu"}))
    gpu = profile(load_config(None, {**overrides, "device": "cuda"}))
    assert gpu.device.startswith("cuda")
    for a, b in zip(cpu.runs, gpu.runs):
        assert a.verdict == b.verdict
        for la, lb in zip(a.layers, b.layers):
            assert la.flags == lb.flags
            assert lb.post.std == pytest.approx(la.post.std, rel=rtol, abs=1e-6)
            assert lb.pre.mean == pytest.approx(la.pre.mean, rel=rtol, abs=rtol)


def test_auto_picks_cuda():
    assert profile(load_config(None, {"model.depth": 2})).device.startswith("cuda")
