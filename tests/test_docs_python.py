"""The Python examples of the docs run as written: each page's ```python blocks, in order, in one
namespace (a later block uses what an earlier one defined)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["docs/python-api.md", "docs/coord-check.md"]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_run(page, capsys):
    blocks = BLOCK.findall((ROOT / page).read_text(encoding="utf-8"))
    assert blocks, f"{page} has no python blocks"
    namespace: dict = {"__name__": "docs_example"}
    for number, code in enumerate(blocks, start=1):
        exec(compile(code, f"{page} block {number}", "exec"), namespace)  # noqa: S102


def test_the_printed_failure_is_the_one_shown():
    """The AssertionError text that python-api.md shows is what assert_healthy prints."""
    text = (ROOT / "docs/python-api.md").read_text(encoding="utf-8")
    shown = re.search(r"```text\n(.*?)```", text, re.S).group(1).strip().splitlines()
    import torch
    from torch import nn

    from actstat.testing import assert_healthy

    torch.manual_seed(0)
    images = torch.randn(256, 1, 28, 28)
    labels = torch.randint(0, 10, (256,))
    zero = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))
    for parameter in zero.parameters():
        nn.init.zeros_(parameter)
    with pytest.raises(AssertionError) as caught:
        assert_healthy(zero, images.flatten(1), labels)
    assert str(caught.value).splitlines() == shown
