"""The general probe's (actstat/capture.py) overhead: a captured pass against a bare PyTorch pass
of the same model and batch, on the test zoo's CNN and pre-norm transformer, and on the
built-in residual model with layernorm at depth 50, width 1024 (what `actstat run --block
residual --norm layernorm` builds).

    python benchmarks/capture.py [--quick] [--device cpu|cuda] [--only cnn,transformer,residual]
                                 [--cpu-time]

ACTSTAT_KERNELS=0 in the environment measures the torch reductions instead of the C kernel
(actstat/fused.py). `--cpu-time` runs on one thread and pairs the process's CPU seconds, not
wall seconds: on a machine whose cores other tenants hold, a wall-clock ratio mostly measures
how often a pass waited for a core; CPU seconds are closer to what the pass costs.

Sizes are chosen so that a bare forward takes about 0.1 s or more on a CPU (the issue's target:
a captured forward within 1.15x of it). Ratios are medians of ABBA-paired repeats
(benchmarks/run.py's `paired`); nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))

import torch  # noqa: E402
from run import MALLOC_TUNED, cpu_name, paired  # noqa: E402  (tunes malloc before torch starts)
from torch.nn import functional as F  # noqa: E402

import actstat.capture  # noqa: E402
from actstat.activations import make_activation  # noqa: E402
from actstat.build import build_blocks  # noqa: E402
from actstat.capture import capture  # noqa: E402
from actstat.config import Config  # noqa: E402
from actstat.inits import make_bias_init, make_init  # noqa: E402
from actstat.model import initialise  # noqa: E402
from models import SmallCNN, TinyTransformer, mnist_images  # noqa: E402


def bare_forward(model, x):
    with torch.no_grad():
        model(x)


def bare_backward(model, x, y):
    # what capture's backward does: the user's .grad set aside, a fresh backward, put back
    saved = [(p, p.grad) for p in model.parameters()]
    for p, _ in saved:
        p.grad = None
    out = model(x).float()
    F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1)).backward()
    for p, grad in saved:
        p.grad = grad


def residual_model(depth: int, width: int, device: torch.device) -> torch.nn.Module:
    """The built-in residual model as `actstat run` builds it from a config: pre-norm
    layernorm blocks of two Linear+ReLU layers, kaiming init."""
    config = Config.model_validate({"model": {"block": "residual", "depth": depth,
                                              "width": width, "norm": "layernorm"}})
    activation = make_activation("relu", {})
    weight_init = make_init("kaiming", {})
    model = build_blocks(config, activation, width, weight_init)
    return initialise(model, weight_init, make_bias_init("zeros", {}), act_gain=activation.gain,
                      seed=0, device=device, dtype=torch.float32).eval()


def paired_cpu(bare, ours, repeats: int, device) -> tuple[float, float, float]:
    """`paired` (ABBA, medians) in CPU seconds of the process (every thread)."""
    def cpu(fn) -> float:
        start = time.process_time()
        fn()
        return time.process_time() - start

    bare()
    ours()
    bare_times, our_times, ratios = [], [], []
    for _ in range(repeats):
        first = cpu(bare)
        mine = cpu(ours) + cpu(ours)
        total = first + cpu(bare)
        bare_times.append(total / 2)
        our_times.append(mine / 2)
        ratios.append(mine / total)
    return statistics.median(bare_times), statistics.median(our_times), statistics.median(ratios)


def overheads(name, model, x, y, repeats, device, pair=paired,
              backward=True) -> dict[str, float]:
    short = name.split()[0]
    bare, ours, forward = pair(lambda: bare_forward(model, x),
                               lambda: capture(model, x, grad=False), repeats, device)
    print(f"{name:34} {'forward':18} {bare:8.3f} {ours:10.3f} {forward:6.2f}")
    if not backward:
        return {f"capture_forward_overhead_{short}": forward}
    bare, ours, both = pair(lambda: bare_backward(model, x, y),
                            lambda: capture(model, x, y), repeats, device)
    print(f"{name:34} {'forward+backward':18} {bare:8.3f} {ours:10.3f} {both:6.2f}")
    return {f"capture_forward_overhead_{short}": forward,
            f"capture_backward_overhead_{short}": both,
            f"capture_layers_{short}": len(capture(model, x, grad=False).layers)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", default="cnn,transformer,residual",
                        help="comma-separated cases to run")
    parser.add_argument("--forward-only", action="store_true", help="no forward+backward pairs")
    parser.add_argument("--cpu-time", action="store_true",
                        help="one thread; ratios of CPU seconds")
    args = parser.parse_args()
    pair = paired
    if args.cpu_time:
        torch.set_num_threads(1)
        pair = paired_cpu
    device = torch.device(args.device)
    repeats = 3 if args.quick else 7
    torch.manual_seed(0)
    scale = 2 if args.quick else 1
    cases = {
        "cnn (conv+bn+relu+pool)": lambda: (
            SmallCNN(channels=32).to(device).eval(),
            mnist_images(512 // scale).to(device),
            torch.randint(10, (512 // scale,)).to(device)),
        "transformer (2 pre-norm blocks)": lambda: (
            TinyTransformer(vocab=1000, dim=256, heads=8, depth=2).to(device).eval(),
            torch.randint(1000, (32 // scale, 128)).to(device),
            torch.randint(1000, (32 // scale, 128)).to(device)),
        "residual (depth 50, layernorm)": lambda: (
            residual_model(50, 1024, device),
            torch.randn(256 // scale, 1024).to(device),
            torch.randint(10, (256 // scale,)).to(device)),
    }
    only = args.only.split(",")
    cases = {name: case for name, case in cases.items() if name.split()[0] in only}
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), device {device}; malloc tuned: "
          f"{'yes' if MALLOC_TUNED else 'no'}; median of {repeats}; reductions: "
          f"{'fused (C kernel)' if actstat.fused.ENABLED else 'torch'}"
          f"{'; CPU seconds, one thread' if args.cpu_time else ''}\n")
    print(f"{'model':34} {'pass':18} {'bare s':>8} {'captured s':>10} {'ratio':>6}")
    figures: dict[str, float] = {}
    for name, make in cases.items():
        model, x, y = make()
        figures.update(overheads(name, model, x, y, repeats, device, pair,
                                  backward=not args.forward_only))
    print()
    for key, value in figures.items():
        print(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}")


if __name__ == "__main__":
    main()
