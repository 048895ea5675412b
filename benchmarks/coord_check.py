"""What `actstat coord-check` costs: the whole coord check against the same training bare, and its
peak memory as the widths change.

    python benchmarks/coord_check.py [--quick] [--device cpu|cuda] [--threads N]

The bare side does what the coord check must do anyway, without measuring: for each width, load
the data, build and initialise the same copies (the seeds stacked as one model), make them μP's
or SP's, and run the same steps + 1 passes (mini-batch draw, forward, cross-entropy, backward,
loss read, optimiser step with the same parameter groups). Ratios are medians of ABBA-paired
repeats (benchmarks/run.py's `paired`), both sides in one process; peak memory is each run's
VmHWM in a child process of its own. Nothing here is asserted.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from run import MALLOC_TUNED, cpu_name, paired  # noqa: E402  (tunes malloc first)
from torch import nn  # noqa: E402

from actstat.build import initialised, uninitialised  # noqa: E402
from actstat.config import COORD_CHECK_DEPTH, Config, load_config  # noqa: E402
from actstat.coordcheck import Plan, _grouped_optimiser, coord_check_report  # noqa: E402
from actstat.data import load_pool  # noqa: E402
from actstat.model import stack_mlps  # noqa: E402
from actstat.parametrisation import apply, kinds, learning_rates, shapes  # noqa: E402
from actstat.watch import _Order  # noqa: E402


def bare_coord_check(config: Config) -> None:
    """The coord check's training, every width, with nothing measured."""
    cc = config.coord_check
    device = torch.device(config.device)
    pool = load_pool(config.data, seed=config.seed, device=device, dtype=torch.float32,
                     num_classes=10)
    x, y = pool.inputs, pool.labels
    init, act = config.init[0], config.activation[0]
    base = cc.base_width or min(cc.widths)
    schedule = Plan(config, ()).schedule

    def at(w: int, seed: int = config.seed) -> Config:
        return config.model_copy(update={"model": config.model.model_copy(update={"width": w}),
                                         "seed": seed})

    by_name = kinds(shapes(uninitialised(at(base), init, act, 784)),
                    shapes(uninitialised(at(2 * base), init, act, 784)))
    for width in cc.widths:
        models = []
        for k in range(cc.seeds):
            model = initialised(at(width, config.seed + k), init, act, device, torch.float32, 784)
            apply(model, cc.param, by_name, width / base)
            models.append(model)
        stacked = stack_mlps(models).train()
        rates = learning_rates(cc.param, cc.optimizer, list(by_name.values()), cc.lr,
                               width / base)
        optimiser = _grouped_optimiser(cc.optimizer, rates, schedule.momentum, stacked)
        order = _Order(x.shape[0], schedule.batch_size, schedule.seed, device)
        for _ in range(schedule.steps):
            rows = order.next()
            optimiser.zero_grad(set_to_none=True)
            out = stacked(x[rows])
            values = torch.stack([nn.functional.cross_entropy(out[k], y[rows])
                                  for k in range(cc.seeds)])
            values.sum().backward()
            values.detach().tolist()
            optimiser.step()


def peak_rss_child(widths: list[int], param: str, threads: int | None) -> float:
    """Peak RSS (MiB, VmHWM) of a child process that runs the coord check at `widths`."""
    overrides = {"coord_check.widths": widths, "coord_check.param": param, "device": "cpu"}
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
        "from actstat.allocator import tune_malloc; tune_malloc()\n"
        f"import torch; torch.set_num_threads({threads or torch.get_num_threads()})\n"
        "from actstat.config import load_config; from actstat.coordcheck import coord_check_report\n"
        f"report = coord_check_report(load_config(None, {overrides!r}, "
        f"defaults={{'model.depth': {COORD_CHECK_DEPTH}}}))\n"
        f"assert report.coord_check.widths == tuple({sorted(widths)!r})\n"
        "print(max(int(line.split()[1]) for line in open('/proc/self/status')\n"
        "           if line.startswith('VmHWM:')) / 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller widths, fewer repeats")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    widths = [64, 128, 256] if args.quick else [64, 128, 256, 512, 1024]
    repeats = 2 if args.quick else 3
    print(f"# {cpu_name()} · torch {torch.__version__} · {torch.get_num_threads()} threads · "
          f"{args.device} · malloc tuned: {MALLOC_TUNED}")
    print(f"# the reference MLP (784 -> w -> w -> 10), widths {widths}, 3 seeds stacked, "
          "4 Adam steps (5 passes), batch 256")
    for param in ("sp", "mup"):
        config = load_config(None, {"coord_check.widths": widths, "coord_check.param": param,
                                    "device": args.device},
                             defaults={"model.depth": COORD_CHECK_DEPTH})
        bare, ours, ratio = paired(lambda config=config: bare_coord_check(config),
                                   lambda config=config: coord_check_report(config),
                                   repeats, device)
        print(f"{param:4}  bare training {bare:7.3f} s   coord check {ours:7.3f} s   "
              f"ratio {ratio:.3f}")
    if device.type == "cpu":
        print("# peak RSS (VmHWM) of a whole coord check in a child process: set by the widest "
              "model, not by the number of widths")
        sets = ([[64, 128, 256], [128, 256, 512], [64, 128, 256, 512]] if args.quick else
                [[64, 128, 256], [256, 512, 1024], [64, 128, 256, 512, 1024],
                 [32, 64, 128, 256, 512, 1024]])
        for chosen in sets:
            print(f"  widths {','.join(map(str, chosen)):>26}: "
                  f"{peak_rss_child(chosen, 'sp', args.threads):7.1f} MiB")


if __name__ == "__main__":
    main()
