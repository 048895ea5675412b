"""What a release carries: the MIT licence and the MNIST sample's attribution, in sdist and wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from conftest import ROOT

ATTRIBUTION = "actstat/assets/MNIST-ATTRIBUTION.md"


def test_the_licence_is_mit_for_actstat_contributors():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 actstat contributors" in text
    assert "THE SOFTWARE IS PROVIDED \"AS IS\"" in text
    # the bundled MNIST sample keeps its own licence, named beside it
    assert "creativecommons.org/licenses/by-sa/3.0" in (ROOT / ATTRIBUTION).read_text(
        encoding="utf-8")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist, wheel) built by setuptools from a copy of the source (the tree stays clean)."""
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 77:
        pytest.skip("license-files (PEP 639) needs setuptools >= 77, as pyproject.toml says")
    source, dist = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "actstat", source / "actstat",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    code = (f"from setuptools import build_meta as b; b.build_sdist({str(dist)!r}); "
            f"b.build_wheel({str(dist)!r})")
    out = subprocess.run([sys.executable, "-c", code], cwd=source, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    (sdist,), (wheel,) = dist.glob("*.tar.gz"), dist.glob("*.whl")
    return sdist, wheel


@pytest.mark.slow
def test_the_wheel_carries_the_licence_and_the_attribution(built):
    _, wheel = built
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read("actstat-0.1.0.dist-info/METADATA").decode()
        licence = archive.read("actstat-0.1.0.dist-info/licenses/LICENSE").decode()
    assert licence == (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert f"actstat-0.1.0.dist-info/licenses/{ATTRIBUTION}" in names
    assert ATTRIBUTION in names and "actstat/assets/mnist_5k.npz" in names  # beside the data
    assert "License-Expression: MIT" in metadata.splitlines()
    assert "actstat/py.typed" in names  # type checkers read the API's annotations (PEP 561)


def test_the_sdist_carries_the_licence_and_the_attribution(built):
    sdist, _ = built
    with tarfile.open(sdist) as archive:
        names = set(archive.getnames())
    assert {"actstat-0.1.0/LICENSE", f"actstat-0.1.0/{ATTRIBUTION}"} <= names
