"""`actstat train --tensorboard DIR`: the recorded numbers as TensorBoard event files, written as
each step is recorded, so that a team watches a run beside its others while it trains.

One run directory per scheme (DIR/<its label, made safe for a file name>), holding at each
recorded step the scalars `loss`, `accuracy` (with labels) and, per watched layer, `mean/<layer>`,
`std/<layer>`, `near_zero/<layer>`, `dead/<layer>` (where the layer can die) and
`grad_std/<layer>`; with --hist, `hist/<layer>`: the recorded bin counts themselves
(`add_histogram_raw`), not a histogram TensorBoard would bin again. A statistic that is not a
finite number at a step (a layer that did not run, a non-finite loss) is left out at that step.
Written through `torch.utils.tensorboard`, which needs the `tensorboard` package (the extra).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from actstat.errors import ActstatError
from actstat.records import Trajectory

MISSING_TENSORBOARD = ("--tensorboard needs the tensorboard package, an optional extra: "
                       "pip install 'actstat[tensorboard]'")
LAYER_SCALARS = ("mean", "std", "near_zero", "dead", "grad_std")
FLUSH_SECONDS = 10  # how stale the files may be while a run goes on (TensorBoard's default: 120)


class TensorBoardError(ActstatError):
    """--tensorboard cannot work: the extra is not installed, or DIR is not a directory."""


def check_tensorboard(directory: Path | str) -> None:
    """A TensorBoardError now if `TensorBoardLog(directory)` could not write later: no
    tensorboard package (looked up, not imported: torch's writer takes seconds to import), or
    `directory` is a file, its parent directory is missing, or it cannot be made."""
    if importlib.util.find_spec("tensorboard") is None:
        raise TensorBoardError(MISSING_TENSORBOARD)
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise TensorBoardError(f"--tensorboard {directory}: is a file; give a directory")
    # as every output (-o, --plot, --junit-xml): the output is made, the directory it goes in
    # must exist, so that a typo makes no tree of directories
    parent = directory.parent if str(directory.parent) else Path(".")
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise TensorBoardError(f"--tensorboard {directory}: directory '{parent}' {what}")
    try:
        directory.mkdir(exist_ok=True)
    except OSError as err:
        raise TensorBoardError(f"--tensorboard {directory}: cannot make it ({err.strerror})"
                               ) from None


def run_directory_name(label: str) -> str:
    """`kaiming(mode='fan_out') + relu` -> `kaiming_mode=_fan_out_+relu`: letters, digits and
    `._+=-` only, so that the name is one directory on every file system."""
    name = re.sub(r"[^A-Za-z0-9._+=-]+", "_", label.replace(" + ", "+")).strip("_.")
    return name or "run"


class TensorBoardLog:
    """The writers of one `actstat train`: `scheme(label)` opens that scheme's run directory and
    returns the callback that writes each recorded step; `close()` (or leaving the `with`
    block) flushes and closes them all."""

    def __init__(self, directory: Path | str):
        self.directory = Path(directory)
        self.writers: list[Any] = []
        self.names: set[str] = set()

    def scheme(self, label: str) -> Callable[[Trajectory], None]:
        from torch.utils.tensorboard import SummaryWriter

        name = base = run_directory_name(label)
        count = 1
        while name in self.names:  # two labels made the same name: number the later ones
            count += 1
            name = f"{base}_{count}"
        self.names.add(name)
        writer = SummaryWriter(log_dir=str(self.directory / name), flush_secs=FLUSH_SECONDS)
        self.writers.append(writer)
        return lambda trajectory: write_steps(writer, trajectory)

    def close(self) -> None:
        for writer in self.writers:
            writer.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_steps(writer: Any, trajectory: Trajectory) -> None:
    """Every recorded step of `trajectory` (watch() hands over one at a time) to a SummaryWriter."""
    for k, step in enumerate(trajectory.steps):
        _scalar(writer, "loss", trajectory.loss[k], step)
        if trajectory.accuracy is not None:
            _scalar(writer, "accuracy", trajectory.accuracy[k], step)
        for layer in trajectory.layers:
            for stat in LAYER_SCALARS:
                values = getattr(layer, stat)
                if values is not None:
                    _scalar(writer, f"{stat}/{layer.name}", values[k], step)
            if layer.histogram is not None and layer.hist_range is not None:
                _histogram(writer, f"hist/{layer.name}", layer.histogram[k], layer.hist_range,
                           layer.mean[k], layer.std[k], step)


def _scalar(writer: Any, tag: str, value: float | None, step: int) -> None:
    if value is not None:
        writer.add_scalar(tag, value, step)


def _histogram(writer: Any, tag: str, counts: tuple[int, ...], bounds: tuple[float, float],
               mean: float | None, std: float | None, step: int) -> None:
    """The recorded counts over their equal bins: bucket i spans (limit i-1, limit i], the
    first from `min`, the range's low end. TensorBoard's sum and sum of squares come from the
    recorded mean and std (the same values' exact moments), where they are finite."""
    num = sum(counts)
    if num == 0:  # the layer did not run at this step
        return
    low, high = bounds
    bins = len(counts)
    limits = [low + (high - low) * (i + 1) / bins for i in range(bins)]
    limits[-1] = high
    mean_or_0 = mean if mean is not None else 0.0
    second = (std**2 + mean_or_0**2) if std is not None else 0.0
    writer.add_histogram_raw(tag, min=low, max=high, num=num, sum=mean_or_0 * num,
                             sum_squares=second * num, bucket_limits=limits,
                             bucket_counts=list(counts), global_step=step)
