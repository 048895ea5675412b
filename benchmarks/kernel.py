"""The C kernel's threading (actstat/_kernels.c) on its own: wall time of one fused.reduce call
on a (2048, 1024) layer output and a (64, 32, 56, 56) feature map, with torch on 1 and 2
threads, right after a torch operator (as in a hook, where torch's OpenMP workers are still
spinning from the module's own op).

    python benchmarks/kernel.py [--rounds N] [--kernel NAME=PATH ...]

Each column is one way to run the kernel, timed in turns within one process (round k times
every column once, in an order that rotates with k) and reported as the median over rounds,
then the fastest round in parentheses (on a shared machine, what the call takes when it gets
the cores it asks for):

- `kernel`: the installed kernel, shared among torch.get_num_threads() threads as fused.py does;
- `one thread`: the same kernel told to use one thread;
- NAME: another build of _kernels.c, called as fused.py calls it. benchmarks/kernel_own_pool.patch
  gives the kernel a pool of its own (pthreads) in place of torch's OpenMP one; to compare it:

      patch -o /tmp/own/_kernels.c actstat/_kernels.c benchmarks/kernel_own_pool.patch
      INCLUDE=$(python -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
      gcc -shared -fPIC -O3 -ffast-math -I"$INCLUDE" /tmp/own/_kernels.c -o /tmp/own/_kernels.so
      python benchmarks/kernel.py --kernel "own pool=/tmp/own/_kernels.so"

`op` is the torch operator alone (a relu, clamp into a preallocated tensor), for scale. Nothing is
asserted; docs/performance.md ("The C kernel") records what it gave.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from run import cpu_name  # noqa: E402  (tunes malloc before torch starts its threads)

from actstat import fused  # noqa: E402

SHAPES = {"(2048, 1024)": ((2048, 1024), False), "(64, 32, 56, 56)": ((64, 32, 56, 56), True)}


def load(path: str):
    spec = importlib.util.spec_from_file_location("actstat._kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def caller(kernels, x: torch.Tensor, channels: bool, one: bool):
    """A call of `kernels`' reduce on x with fused.reduce's arguments (near-zero, no saturation,
    spread, dead units), on one thread or torch's count."""
    view = x.reshape(x.shape[0], x.shape[1], -1) if channels else x
    batch, width = view.shape[:2]
    positions = view.shape[2] if channels else 1
    address = view.data_ptr()

    def call() -> None:
        kernels.reduce(address, batch, width, positions, channels, 0.01, 0.0, float("inf"),
                       -float("inf"), float("inf"), 0, True, 1, 0.0, fused.SEGMENT,
                       1 if one else torch.get_num_threads())

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--kernel", action="append", default=[], metavar="NAME=PATH")
    args = parser.parse_args()
    if not fused.AVAILABLE:
        sys.exit("actstat._kernels is not built")
    builds = {"kernel": fused._kernels}
    for entry in args.kernel:
        name, _, path = entry.partition("=")
        builds[name] = load(path)
    print(f"machine: {cpu_name()}, torch {torch.__version__}")
    for label, (shape, channels) in SHAPES.items():
        x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
        y = torch.empty_like(x)
        for threads in (1, 2):
            torch.set_num_threads(threads)
            columns = {"op": None, **{name: caller(k, y, channels, False) for name, k in
                                      builds.items()},
                       "one thread": caller(fused._kernels, y, channels, True)}
            names = list(columns)
            times: dict[str, list[float]] = {name: [] for name in names}
            for k in range(args.rounds + 5):
                for name in names[k % len(names):] + names[:k % len(names)]:
                    torch.clamp(x, min=0.0, out=y)
                    start = time.perf_counter()
                    call = columns[name]
                    if call is None:
                        torch.clamp(x, min=0.0, out=y)
                    else:
                        call()
                    if k >= 5:  # the first rounds start the pools
                        times[name].append(time.perf_counter() - start)
            cells = ", ".join(f"{name} {statistics.median(t) * 1e3:.2f} ({min(t) * 1e3:.2f}) ms"
                              for name, t in times.items())
            print(f"{label}, torch threads {threads}: {cells}")


if __name__ == "__main__":
    main()
