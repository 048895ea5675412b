"""Allocation: the engine's passes reuse one scratch buffer (the C kernel needs none); the CLI
tunes glibc's malloc."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from actstat import allocator, fused
from actstat.activations import make_activation
from actstat.capture import capture
from actstat.inits import make_bias_init, make_init
from actstat.model import build_mlp, initialise

BATCH, WIDTH, DEPTH = 256, 64, 6


def large_allocations(fn) -> int:
    """How many allocations of at least one activation's size `fn` makes (CPU profiler)."""
    size = BATCH * WIDTH * 4
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return sum(1 for event in prof.events() if event.self_cpu_memory_usage >= size)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", [True, False], ids=["kernel", "torch"])
@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid"])
def test_a_pass_allocates_one_scratch_buffer_beyond_the_forward_itself(act, kernel, monkeypatch):
    """A forward-only pass of the engine (actstat/capture.py) over the built-in MLP: the torch
    reductions work in one scratch buffer per pass; the C kernel reads each tensor where it
    lies and allocates nothing of a layer's size."""
    if kernel and not fused.AVAILABLE:
        pytest.skip("actstat._kernels was not built (no C compiler at install)")
    monkeypatch.setattr(fused, "ENABLED", kernel)
    activation = make_activation(act)
    model = initialise(build_mlp(in_features=WIDTH, widths=[WIDTH] * DEPTH, num_classes=10,
                                 bias=True, activation=activation), make_init("kaiming"),
                       make_bias_init("zeros"), act_gain=activation.gain, seed=0,
                       device=torch.device("cpu"), dtype=torch.float32)
    x = torch.randn(BATCH, WIDTH)

    def bare():
        with torch.inference_mode():
            model(x)

    def ours():
        capture(model, x, grad=False)

    bare(), ours()
    assert large_allocations(ours) == large_allocations(bare) + (0 if kernel else 1)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_tune_malloc_is_accepted_by_glibc():
    code = "from actstat.allocator import tune_malloc; print(tune_malloc())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_tune_malloc_is_a_no_op_elsewhere(monkeypatch):
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.tune_malloc() is False


def test_the_cli_tunes_malloc_before_measuring(cli, monkeypatch):
    from actstat import pipeline

    calls = []
    measure = pipeline.profile
    monkeypatch.setattr("actstat.cli.tune_malloc", lambda: calls.append("tune") or True)
    monkeypatch.setattr(pipeline, "profile",
                        lambda *args, **kwargs: calls.append("profile") or measure(*args, **kwargs))
    cli("run", "--depth", "2", "--width", "8", "--batch-size", "16", "--device", "cpu",
        "-f", "json")
    assert calls == ["tune", "profile"]


# the CLI as the console script runs it, in a fresh process: does tune_malloc run before torch
# is imported? (A process of the test suite has imported torch long before.)
ORDER = """
import json, sys
from actstat import allocator, cli

seen = []


def spy():
    seen.append("torch" in sys.modules)
    return allocator.tune_malloc()


cli.tune_malloc = spy
sys.argv = ["actstat", *json.loads(sys.argv[1])]
try:
    cli.main()
except SystemExit as done:
    code = done.code
print(json.dumps({"code": code, "torch_when_tuned": seen, "torch_at_end": "torch" in sys.modules}))
"""


@pytest.mark.parametrize("command", [
    ["run", "--init", "kaiming", "--act", "tanh"],
    ["compare", "--init", "kaiming,lecun", "--act", "relu"],
    ["check", "--max-drift", "1000"],
])
@pytest.mark.slow
def test_the_cli_tunes_malloc_before_torch_is_imported(command, tmp_path):
    import json

    args = [*command, "--depth", "2", "--width", "8", "--batch-size", "16", "--device", "cpu",
            "--no-theory"]
    if command[0] != "check":
        args += ["-f", "json", "-o", str(tmp_path / "out.json")]
    out = subprocess.run([sys.executable, "-c", ORDER, json.dumps(args)], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen == {"code": 0, "torch_when_tuned": [False], "torch_at_end": True}, out.stderr


@pytest.mark.parametrize("value, tuned", [("1", False), ("yes", False), ("0", True), ("", True)])
def test_the_environment_variable_turns_the_tuning_off(monkeypatch, value, tuned):
    calls = []

    class Libc:
        def mallopt(self, option, value):
            calls.append((option, value))
            return 1

    monkeypatch.setattr(allocator.sys, "platform", "linux")
    monkeypatch.setattr(allocator.ctypes, "CDLL", lambda name: Libc())
    monkeypatch.setenv(allocator.NO_TUNING_VARIABLE, value)
    assert allocator.tune_malloc() is tuned
    assert calls == (list(allocator.SETTINGS.items()) if tuned else [])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_the_cli_keeps_glibcs_defaults_when_told(tmp_path):
    import json
    import os

    env = {**os.environ, "ACTSTAT_NO_MALLOC_TUNING": "1"}
    args = ["run", "--depth", "2", "--width", "8", "--batch-size", "16", "--device", "cpu",
            "-f", "json", "-o", str(tmp_path / "out.json")]
    code = ORDER.replace("return allocator.tune_malloc()", "return print('tuned', allocator.tune_malloc())")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert "tuned False" in out.stdout
    assert json.loads((tmp_path / "out.json").read_text())["runs"]
