"""actstat: per-layer activation statistics of neural networks, before training.

The stable Python API (docs/python-api.md):

- `profile(model, inputs, targets=None, **options) -> Report`: measure any nn.Module;
- `coord_check(factory, widths, inputs, targets=None, **options) -> Report`: how each layer's
  mean |x| scales with the model's width (docs/coord-check.md);
- `Report`, `read_report(path)`: the record every output is made from, and a saved one read back;
- `Thresholds`: when a layer is flagged;
- `actstat.testing.assert_healthy(model, inputs, ...)`: the one-line check for pytest.

`profile` and `Thresholds` import torch and pydantic when first used, not on `import actstat`,
so that the command line's `--help` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Report", "Thresholds", "__version__", "coord_check", "profile", "read_report"]

if TYPE_CHECKING:
    from actstat.api import profile
    from actstat.config import Thresholds
    from actstat.coordcheck import coord_check
    from actstat.report import Report, read_report

_LAZY = {"profile": "actstat.api", "Thresholds": "actstat.config", "Report": "actstat.report",
         "read_report": "actstat.report", "coord_check": "actstat.coordcheck"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'actstat' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
