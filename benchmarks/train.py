"""What `actstat train`'s recording costs: training steps with the recorder (actstat/watch.py)
against the same training loop bare, and its peak memory over long runs.

    python benchmarks/train.py [--quick] [--device cpu|cuda] [--threads N]

The bare loop is watch()'s own without the recorder: the same mini-batch draw, learning-rate
set, zero_grad, forward, cross-entropy, backward, loss read and SGD step. Ratios are medians of
ABBA-paired repeats (benchmarks/run.py's `paired`), both sides in one process; peak memory is
each run's VmHWM in a child process of its own. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from run import MALLOC_TUNED, cpu_name, model_and_batch, paired  # noqa: E402  (tunes malloc first)
from torch import nn  # noqa: E402

from actstat.reduce import HIST_BINS  # noqa: E402
from actstat.watch import Schedule, _Order, watch  # noqa: E402

POOL = 1024  # samples the mini-batches are drawn from
LR = 1e-3  # small, so that no side's run goes non-finite and stops early


def bare_training(model: nn.Module, x: torch.Tensor, y: torch.Tensor, schedule: Schedule) -> None:
    """watch()'s loop without the recorder: what a training loop that logs its loss costs."""
    optimiser = torch.optim.SGD(model.parameters(), lr=schedule.lr)
    order = _Order(x.shape[0], schedule.batch_size, schedule.seed, x.device)
    for step in range(schedule.steps):
        rows = order.next()
        for group in optimiser.param_groups:
            group["lr"] = schedule.lr_at(step)
        optimiser.zero_grad(set_to_none=True)
        value = nn.functional.cross_entropy(model(x[rows]), y[rows])
        value.backward()
        value.item()
        optimiser.step()
    optimiser.zero_grad(set_to_none=True)


def recorded_training(model: nn.Module, x: torch.Tensor, y: torch.Tensor, schedule: Schedule,
                      bins: int) -> object:
    return watch(model, x, y, schedule, nn.functional.cross_entropy, labelled=True,
                 near_zero=0.01, bins=bins)


def restoring(model: nn.Module, run):
    """`run` from the same weights every time: each timed call trains the model from init."""
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def call() -> None:
        model.load_state_dict(start)
        run()

    return call


def self_times(fn, device: torch.device) -> dict[str, float]:
    """Self time (ms) per ATen operator over one call, from torch's profiler."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    with profile(activities=activities) as prof:
        fn()
    return {e.key: getattr(e, attr) / 1e3 for e in prof.key_averages()}


def where_recording_goes(bare, ours, device: torch.device, steps: int,
                         rows: int = 12) -> list[tuple[str, float, float]]:
    """(operator, ms per step the recording adds, ms per step of the bare loop): the operators
    whose self time grows most when the recorder is on."""
    bare_ms, our_ms = self_times(bare, device), self_times(ours, device)
    extra = {k: (our_ms.get(k, 0.0) - bare_ms.get(k, 0.0)) / steps for k in our_ms}
    top = sorted(extra, key=extra.get, reverse=True)[:rows]
    return [(k, extra[k], bare_ms.get(k, 0.0) / steps) for k in top]


def peak_rss_child(steps: int, every: int, bins: bool, threads: int | None) -> float:
    """Peak RSS (MiB, VmHWM) of a child process that trains a small MLP (depth 4, width 64,
    batch 32) through the pipeline's watch_report: the whole of `actstat train` but printing."""
    overrides = {"model.depth": 4, "model.width": 64, "data.source": "gaussian",
                 "data.input_size": 64, "data.batch_size": 256, "device": "cpu",
                 "train.steps": steps, "train.every": every, "train.batch_size": 32,
                 "train.lr": 0.01, "hist": bins, "theory": False}
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from actstat.allocator import tune_malloc; tune_malloc()\n"
        f"import torch; torch.set_num_threads({threads or torch.get_num_threads()})\n"
        "from actstat.config import load_config; from actstat.training import watch_report\n"
        f"report = watch_report(load_config(None, {overrides!r}))\n"
        f"assert len(report.runs[0].trajectory.steps) == {len(Schedule(steps, every).recorded())}\n"
        "print(next(int(line.split()[1]) for line in open('/proc/self/status')\n"
        "           if line.startswith('VmHWM:')) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    # on a CPU shared with other work, one thread: torch's threads wait at every op's barrier
    # for a core another process holds (2.5x slower steps on the loaded 2-core machine)
    parser.add_argument("--threads", type=int, help="torch's CPU threads (default: its own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    depth, width, batch = (10, 512, 128) if args.quick else (20, 1024, 256)
    steps = 3 if args.quick else 4  # per timed call
    repeats = 3 if args.quick else 5
    model, *_ = model_and_batch(depth, width, batch, "relu", device)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(POOL, width, generator=g).to(device)
    y = torch.randint(10, (POOL,), generator=g).to(device)
    schedule = Schedule(steps=steps, every=1, batch_size=batch, lr=LR)

    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), device {device}; glibc malloc tuned as the CLI "
          f"does: {'yes' if MALLOC_TUNED else 'no'}")
    print(f"model: MLP depth {depth}, width {width}, batch {batch}, kaiming + relu, float32, "
          f"SGD; {steps} steps per call, every step recorded; median of {repeats}\n")
    bare = restoring(model, lambda: bare_training(model, x, y, schedule))
    plain = restoring(model, lambda: recorded_training(model, x, y, schedule, 0))
    hist = restoring(model, lambda: recorded_training(model, x, y, schedule, HIST_BINS))
    figures: dict[str, float] = {}
    print(f"{'training':40s} {'bare s/step':>12s} {'recorded s/step':>16s} {'ratio':>7s}")
    for key, name, ours in (("train_record_overhead", "recorded (every=1)", plain),
                            ("train_record_overhead_hist", f"recorded with --hist ({HIST_BINS} "
                             "bins)", hist)):
        bare_s, ours_s, figures[key] = paired(bare, ours, repeats, device)
        print(f"{name:40s} {bare_s / steps:12.4f} {ours_s / steps:16.4f} {figures[key]:7.3f}")

    for label, ours in (("", plain), (" with --hist", hist)):
        print(f"\nwhere the recording's time goes{label} (self time per operator, profiled; "
              "ms per step):")
        print(f"  {'operator':28s} {'added':>9s} {'bare':>9s}")
        for name, added, base in where_recording_goes(bare, ours, device, steps):
            print(f"  {name:28s} {added:9.2f} {base:9.2f}")

    if device.type == "cpu":
        every = 10
        short, long = (200, 2000) if args.quick else (1000, 10000)
        figures["train_peak_rss_mib_1k"] = peak_rss_child(short, every, True, args.threads)
        figures["train_peak_rss_mib_10k"] = peak_rss_child(long, every, True, args.threads)
        figures["train_memory_ratio"] = (figures["train_peak_rss_mib_10k"]
                                         / figures["train_peak_rss_mib_1k"])
        print(f"\npeak RSS of `actstat train` (depth 4, width 64, batch 32, --hist, every "
              f"{every}): {short} steps {figures['train_peak_rss_mib_1k']:.1f} MiB, {long} steps "
              f"{figures['train_peak_rss_mib_10k']:.1f} MiB")
    print()
    for key, value in figures.items():
        print(f"{key}={value:.4g}")


if __name__ == "__main__":
    main()
