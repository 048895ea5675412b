"""For pytest users: one line that fails a test when a model's init does not keep its signal alive.

    from actstat.testing import assert_healthy

    def test_init_keeps_the_signal():
        assert_healthy(make_model(), torch.randn(256, 3, 32, 32))
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from torch import nn

from actstat.records import FLAGS, LayerStats, Report


def assert_healthy(model: nn.Module, inputs: Any, targets: Any = None, *,
                   allow: Iterable[str] = (), **options: Any) -> Report:
    """Profile `model` on `inputs` (as `actstat.profile` does, with the same keyword options)
    and raise an AssertionError that lists every flagged layer with its numbers, unless the
    only flags are in `allow` (e.g. `allow={"dead"}`); the Report when healthy."""
    from actstat.api import profile  # torch and the probe: loaded when a test calls this

    allowed = set(allow)
    unknown = allowed - set(FLAGS)
    if unknown:
        raise ValueError(f"allow: unknown flag(s) {', '.join(sorted(unknown))}; flags are "
                         f"{', '.join(FLAGS)}")
    report = profile(model, inputs, targets, **options)
    problems = [(run.scheme, layer) for run in report.runs for layer in run.layers
                if set(layer.flags) - allowed]
    if problems:
        lines = [f"{len(problems)} flagged layer(s) in {report.runs[0].scheme} "
                 f"(verdict: {report.runs[0].verdict}):"]
        lines += [f"  {_describe(layer)}" for _, layer in problems[:20]]
        if len(problems) > 20:
            lines.append(f"  ... and {len(problems) - 20} more")
        raise AssertionError("\n".join(lines))
    return report


def _describe(layer: LayerStats) -> str:
    from actstat.render import number, percent

    parts = [f"post std {number(layer.post.std)}"]
    if layer.post.dead is not None:
        parts.append(f"dead {percent(layer.post.dead)}")
    if layer.post.saturated is not None:
        parts.append(f"saturated {percent(layer.post.saturated)}")
    if layer.grad is not None:
        parts.append(f"grad std {number(layer.grad.std)}")
    return (f"{layer.name or layer.index} ({layer.module or layer.kind}): "
            f"{', '.join(layer.flags)} — {', '.join(parts)}")
