"""actstat's performance, as ratios against a bare PyTorch pass of the same model and batch.

    python benchmarks/run.py [--quick] [--device cpu|cuda]

One process, one run: a table of ratios, then one `name=value` line per headline figure.
Timings are medians of several repeats, taken after a warm-up; memory is peak RSS (CPU, in a
child process) or peak allocated (CUDA). Nothing here is asserted: the figures are for reading.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from actstat.allocator import tune_malloc  # noqa: E402

MALLOC_TUNED = tune_malloc()  # as the CLI does, before torch starts threads: both sides alike

import torch  # noqa: E402
from torch import nn  # noqa: E402

from actstat.activations import make_activation  # noqa: E402
from actstat.capture import capture  # noqa: E402
from actstat.inits import make_bias_init, make_init  # noqa: E402
from actstat.model import build_mlp, initialise  # noqa: E402


def cpu_name() -> str:
    """The processor's model name (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def where_time_goes(model: nn.Module, x: torch.Tensor, device: torch.device,
                    rows: int = 12) -> list[tuple[str, float, float]]:
    """(operator, milliseconds, share of the pass) for one forward measurement, from torch's
    profiler (self time per ATen operator, summed over layers): the matmuls are the floor,
    the rest is what the statistics cost."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities) as prof:
        capture(model, x, grad=False)
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, attr) for e in events) or 1.0
    top = sorted(events, key=lambda e: getattr(e, attr), reverse=True)[:rows]
    return [(e.key, getattr(e, attr) / 1e3, getattr(e, attr) / total) for e in top]


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call (on CUDA, to the end of its kernels)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def paired(bare: Callable[[], object], ours: Callable[[], object], repeats: int,
           device: torch.device) -> tuple[float, float, float]:
    """(bare seconds, actstat seconds, ratio). Each repeat runs bare, ours, ours, bare (ABBA),
    and its ratio is ours' total over bare's: a machine that speeds up or slows down during the
    repeat (other tenants, frequency scaling) moves both sides alike, to first order. The
    figures are medians over the repeats."""
    bare()
    ours()
    bare_times, our_times, ratios = [], [], []
    for _ in range(repeats):
        first = seconds(bare, device)
        mine = seconds(ours, device) + seconds(ours, device)
        total = first + seconds(bare, device)
        bare_times.append(total / 2)
        our_times.append(mine / 2)
        ratios.append(mine / total)
    return statistics.median(bare_times), statistics.median(our_times), statistics.median(ratios)


def model_and_batch(depth: int, width: int, batch: int, act: str, device: torch.device):
    activation = make_activation(act)
    model = build_mlp(in_features=width, widths=[width] * depth, num_classes=10, bias=True,
                      activation=activation)
    model = initialise(model, make_init("kaiming"), make_bias_init("zeros"),
                       act_gain=activation.gain, seed=0, device=device, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, width, generator=g).to(device)
    y = torch.randint(10, (batch,), generator=g).to(device)
    return model, x, y, activation


def bare_forward(model: nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        model(x)


def bare_backward(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    nn.functional.cross_entropy(model(x), y).backward()
    # as a measurement leaves the model: without gradients (it sets aside any it finds and
    # keeps them for the model while it runs: memory a bare pass after a bare pass does not hold)
    model.zero_grad(set_to_none=True)


def fastai_style(model: nn.Module, x: torch.Tensor) -> None:
    """The reference probe of fastai's hooks lesson: mean, std and a near-zero fraction of each
    activation, each fetched with .item()."""
    stats = []

    def hook(module, args, out):
        stats.append((out.mean().item(), out.std().item(), (out.abs() < 0.05).float().mean().item()))

    handles = [m.register_forward_hook(hook) for m in model if not isinstance(m, nn.Linear)]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()


def peak_rss_child(depth: int, width: int, batch: int) -> float:
    """Peak RSS (MiB) of a child process that runs one forward-only measurement: VmHWM, which
    exec resets (ru_maxrss would carry the forked parent's peak into the child)."""
    overrides = {"model.depth": depth, "model.width": width, "data.source": "gaussian",
                 "data.input_size": width, "data.batch_size": batch, "device": "cpu",
                 "grad": False, "theory": False}
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from actstat.allocator import tune_malloc; tune_malloc()\n"
        "from actstat.config import load_config; from actstat.pipeline import profile\n"
        f"profile(load_config(None, {overrides!r}))\n"
        "print(next(int(line.split()[1]) for line in open('/proc/self/status')\n"
        "           if line.startswith('VmHWM:')) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def weights_mib(depth: int, width: int) -> float:
    return depth * (width * width + width) * 4 / 2**20


def commands_seconds(commands: dict[str, list[str]], repeats: int) -> dict[str, float]:
    """Median wall seconds of each command from a cold process; the commands take turns, so
    drift in the machine's speed reaches them all alike."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, args in commands.items():
            start = time.perf_counter()
            subprocess.run(args, capture_output=True, check=True, cwd=ROOT)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def overheads(act: str, depth: int, width: int, batch: int, repeats: int, device: torch.device,
              rows: list[tuple[str, float, float, float]]) -> dict[str, float]:
    """actstat's forward (and, for relu, backward) measurement against the bare passes."""
    model, x, y, _ = model_and_batch(depth, width, batch, act, device)

    def ours_forward() -> object:
        return capture(model, x, grad=False)

    bare, ours, forward = paired(lambda: bare_forward(model, x), ours_forward, repeats, device)
    rows.append((f"forward statistics ({act})", bare, ours, forward))
    if act != "relu":
        return {f"forward_overhead_{act}": forward}
    bare_f, fastai, fastai_ratio = paired(lambda: bare_forward(model, x),
                                          lambda: fastai_style(model, x), repeats, device)
    rows.append(("fastai-style probe (.item() per statistic)", bare_f, fastai, fastai_ratio))
    _, _, versus_fastai = paired(lambda: fastai_style(model, x), ours_forward, repeats, device)
    bare_bw, ours_bw, backward = paired(
        lambda: bare_backward(model, x, y),
        lambda: capture(model, x, y),
        repeats, device)
    rows.append(("forward + backward statistics (relu)", bare_bw, ours_bw, backward))
    return {"forward_overhead": forward, "fastai_style_ratio": versus_fastai,
            "backward_overhead": backward}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    depth, width, batch = (10, 512, 512) if args.quick else (50, 1024, 1024)
    repeats = 3 if args.quick else 9
    figures: dict[str, float] = {}
    rows: list[tuple[str, float, float, float]] = []

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), device {device}"
          + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
          + f"; glibc malloc tuned as the CLI does: {'yes' if MALLOC_TUNED else 'no'}")
    print(f"model: depth {depth}, width {width}, batch {batch}, kaiming + relu, float32; "
          f"median of {repeats}\n")

    for act in ("relu", "tanh"):
        figures.update(overheads(act, depth, width, batch, repeats, device, rows))

    def measurement(size_depth: int, size_batch: int) -> Callable[[], object]:
        model, x, *_ = model_and_batch(size_depth, width, size_batch, "relu", device)
        return lambda: capture(model, x, grad=False)

    # 2x depth and 2x batch, each paired against the base size, so drift cancels as above
    base = measurement(depth, batch)
    *_, figures["depth_scaling"] = paired(base, measurement(2 * depth, batch), repeats, device)
    *_, figures["batch_scaling"] = paired(base, measurement(depth, 2 * batch), repeats, device)

    if device.type == "cpu":
        shallow_depth, deep_depth = (10, 100) if args.quick else (20, 200)
        mem_width, mem_batch = (512, 1024) if args.quick else (1024, 2048)
        shallow = peak_rss_child(shallow_depth, mem_width, mem_batch)
        deep = peak_rss_child(deep_depth, mem_width, mem_batch)
        # activation memory: peak minus the weights, which grow with depth by design
        figures["memory_depth_ratio"] = ((deep - weights_mib(deep_depth, mem_width))
                                         / (shallow - weights_mib(shallow_depth, mem_width)))
        figures["peak_rss_mib_shallow"] = shallow
        figures["peak_rss_mib_deep"] = deep

    python = sys.executable
    figures.update(commands_seconds({
        "import_torch_seconds": [python, "-c", "import torch"],
        "help_seconds": [python, "-m", "actstat", "--help"],
        # the default run, as a user types it (tables; stdout is a pipe, so no progress bar)
        "run_cold_seconds": [python, "-m", "actstat", "run", "--device", str(device)],
    }, repeats))

    from actstat.config import load_config
    from actstat.pipeline import profile

    inits = ["kaiming", "lecun", "xavier", "default"]
    acts = ["relu", "tanh", "gelu", "silu"]
    common = {"model.depth": 20, "model.width": 256, "device": str(device)}
    grid = load_config(None, {**common, "init": inits, "activation": acts})
    singles = [load_config(None, {**common, "init": [i], "activation": [a]})
               for i in inits for a in acts]
    apart, together, figures["compare_ratio"] = paired(
        lambda: [profile(c) for c in singles], lambda: profile(grid), max(3, repeats // 2),
        device)
    rows.append(("compare, 16 schemes (vs 16 single runs)", apart, together,
                 figures["compare_ratio"]))
    one_by_one, _, figures["compare_stacked_ratio"] = paired(
        lambda: profile(grid, stack=1), lambda: profile(grid), max(3, repeats // 2), device)
    rows.append(("  stacked (vs the same compare unstacked)", one_by_one, together,
                 figures["compare_stacked_ratio"]))

    print(f"{'measurement':46s} {'bare (s)':>10s} {'actstat (s)':>12s} {'ratio':>7s}")
    for name, bare_s, ours_s, ratio in rows:
        print(f"{name:46s} {bare_s:10.4f} {ours_s:12.4f} {ratio:7.3f}")
    model, x, *_ = model_and_batch(depth, width, batch, "relu", device)
    print(f"\nwhere the time of one forward measurement goes (relu, depth {depth}; "
          "self time per operator, profiled):")
    for name, ms, share in where_time_goes(model, x, device):
        print(f"  {name:28s} {ms:9.1f} ms {share:7.1%}")
    print()
    for name, value in figures.items():
        print(f"{name}={value:.4g}")


if __name__ == "__main__":
    main()
