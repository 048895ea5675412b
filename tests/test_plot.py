"""Pictures: --hist rows, figures for run / compare / a saved report, the optional extra."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from actstat.capture import capture
from actstat.reduce import HIST_BINS, group_histogram
from actstat.render import SHADES, histogram_row
from actstat.report import read_report
from conftest import ROOT, SMALL

matplotlib = pytest.importorskip("matplotlib")
from matplotlib import image as mpimg  # noqa: E402


def test_histogram_counts_equal_numpy():
    x = torch.randn(300, 70, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lo, hi = x.min(), x.max()
    counts, _ = np.histogram(x.numpy(), bins=HIST_BINS, range=(float(lo), float(hi)))
    got = group_histogram(x.unsqueeze(0), lo.reshape(1), hi.reshape(1), HIST_BINS)[0]
    assert got.tolist() == counts.tolist()


def test_histograms_of_a_real_network_equal_numpy():
    from test_engine_mlp import model_and_batch, numpy_layers

    model, x, _ = model_and_batch("tanh", init="randn")
    records = capture(model, x, grad=False, bins=HIST_BINS).layers
    posts = [r for r in records if r.kind == "activation"]
    with torch.no_grad():
        logits = model(x).numpy()
    arrays = [post for _, post in numpy_layers(model, x, "tanh")] + [logits]
    for record, a in zip([*posts, records[-1]], arrays, strict=True):
        counts, _ = np.histogram(a, bins=HIST_BINS, range=(a.min(), a.max()))
        assert list(record.histogram) == counts.tolist(), record.name


def test_histogram_row_shades_by_log_count():
    row = histogram_row((0, 1, 10, 100, 1000))
    assert row[0] == " " and row[-1] == SHADES[-1] and len(row) == 5
    levels = [SHADES.index(cell) for cell in row]
    assert levels == sorted(levels)  # more values, darker


def test_hist_rows_in_the_table_equal_the_reports_counts(cli):
    raw = json.loads(cli("run", *SMALL, "--hist", "--act", "tanh", "-f", "json").stdout)
    text = cli("run", *SMALL, "--hist", "--act", "tanh").stdout
    rows = [line for line in text.splitlines() if "│" in line]
    layers = raw["runs"][0]["layers"]
    # the three hidden layers, then the head's logits
    assert [line.split("│")[0].strip() for line in rows] == ["1", "2", "3", "head"]
    assert [layer["fan_out"] for layer in layers] == [16, 16, 16, 10]
    for entry, line in zip(layers, rows, strict=True):
        assert sum(entry["post"]["histogram"]) == 64 * entry["fan_out"]  # every value counted
        assert line.split("│")[1] == histogram_row(tuple(entry["post"]["histogram"]))
    assert "[-" in rows[0]  # the range shown includes negative values


def png_size(path) -> tuple[int, int]:
    height, width = mpimg.imread(path).shape[:2]
    return width, height


@pytest.mark.slow
def test_run_and_compare_draw_figures(cli, tmp_path):
    run_png, compare_png = tmp_path / "run.png", tmp_path / "compare.png"
    result = cli("run", *SMALL, "--plot", str(run_png))
    assert f"wrote {run_png} (figure)" in result.stderr
    cli("compare", *SMALL, "--init", "kaiming,randn", "--act", "relu,tanh", "--plot",
        str(compare_png))
    assert png_size(run_png) == png_size(compare_png) == (1200, 800)


@pytest.mark.slow
@pytest.mark.parametrize("suffix, magic", [(".svg", b"<?xml"), (".pdf", b"%PDF")])
def test_a_saved_report_redraws_in_every_format(cli, tmp_path, suffix, magic):
    report = tmp_path / "r.json"
    cli("run", *SMALL, "--hist", "-f", "json", "-o", str(report))
    figure = tmp_path / f"figure{suffix}"
    cli("plot", str(report), "-o", str(figure))
    assert figure.read_bytes().startswith(magic)


@pytest.mark.slow
def test_the_plot_receives_every_schemes_series(cli, tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from actstat.plot import draw

    report_path = tmp_path / "r.json"
    cli("compare", *SMALL, "--init", "kaiming,randn", "--hist", "-f", "json", "-o",
        str(report_path))
    report = read_report(report_path)
    drawn: dict[int, list] = {}  # per axes, in the order they are drawn on
    real_plot = Axes.plot

    def spy(self, *args, **kwargs):
        if "label" in kwargs:
            drawn.setdefault(id(self), []).append((kwargs["label"], list(args[1])))
        return real_plot(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", spy)
    draw(report, tmp_path / "f.png")
    std_panel, grad_panel = list(drawn.values())[:2]
    by_label = dict(std_panel)
    for run in report.runs:
        assert by_label[run.scheme] == [layer.post.std for layer in run.layers]
    grads = dict(grad_panel)
    assert grads[report.runs[0].scheme] == [layer.grad.std for layer in report.runs[0].layers]


@pytest.mark.slow
def test_missing_matplotlib_says_how_to_install(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = cli("run", *SMALL, "--plot", str(tmp_path / "f.png"), code=2)
    assert "pip install 'actstat[plot]'" in result.stderr
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.slow
def test_unknown_figure_type(cli, tmp_path):
    result = cli("run", *SMALL, "--plot", str(tmp_path / "f.gif"), code=2)
    assert "figures are written as .png, .svg, .pdf" in result.stderr


@pytest.mark.slow
def test_plot_does_not_import_torch(cli, tmp_path):
    report = tmp_path / "r.json"
    cli("run", *SMALL, "-f", "json", "-o", str(report))
    code = ("import sys, atexit\n"
            "atexit.register(lambda: print('TORCH' if 'torch' in sys.modules else 'NO-TORCH'))\n"
            "sys.argv = ['actstat', 'plot', sys.argv[1], '-o', sys.argv[2]]\n"
            "from actstat.cli import main\nmain()\n")
    result = subprocess.run([sys.executable, "-c", code, str(report), str(tmp_path / "f.png")],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("NO-TORCH")
    assert (tmp_path / "f.png").exists()


@pytest.mark.slow
def test_a_user_models_layers_are_named_on_the_axes(tmp_path, monkeypatch):
    from matplotlib.axes import Axes
    from torch import nn

    import actstat
    from actstat.plot import draw

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10))
    report = actstat.profile(model, torch.randn(8, 1, 28, 28), torch.randint(10, (8,)), hist=True)
    ticks: list[list[str]] = []
    real = Axes.set_xticks

    def spy(self, positions, labels=None, **kwargs):
        if labels is not None:
            ticks.append(list(labels))
        return real(self, positions, labels, **kwargs)

    monkeypatch.setattr(Axes, "set_xticks", spy)
    draw(report, tmp_path / "model.png")
    names = [layer.name for layer in report.runs[0].layers]
    assert names == ["0", "3"]  # nn.Flatten's output is a view of the ReLU's: no row of its own
    assert ticks.count(names) == 3  # the std, gradient and fraction panels
    assert mpimg.imread(tmp_path / "model.png").shape[2] in (3, 4)
