"""Data: the bundled sample, gaussian, user files in every supported format, and their errors."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from actstat.config import DataConfig
from actstat.data import load_batch, resolve_device, resolve_dtype
from actstat.errors import DataError, DeviceError

CPU = torch.device("cpu")


def batch(source: str = "mnist", *, seed: int = 0, num_classes: int = 10, **fields):
    data = DataConfig(source=str(source), **fields)
    return load_batch(data, seed=seed, device=CPU, dtype=torch.float64, num_classes=num_classes)


def test_bundled_mnist_is_standardised_and_labelled():
    b = batch(batch_size=5000)
    assert b.inputs.shape == (5000, 784) and b.labelled
    # standardised over the whole sample: the full sample has mean 0 and std 1 exactly
    assert float(b.inputs.mean()) == pytest.approx(0.0, abs=1e-9)
    assert float(b.inputs.std(correction=0)) == pytest.approx(1.0, rel=1e-9)
    assert sorted(torch.bincount(b.labels).tolist()) == [500] * 10


def test_batches_are_sampled_with_the_seed():
    a, again, other = batch(seed=1), batch(seed=1), batch(seed=2)
    assert torch.equal(a.inputs, again.inputs) and torch.equal(a.labels, again.labels)
    assert not torch.equal(a.inputs, other.inputs)
    assert a.inputs.shape == (1000, 784)


def test_normalize_scale_and_none():
    assert float(batch(normalize="scale").inputs.max()) == 1.0
    raw = batch(normalize="none").inputs
    assert (float(raw.min()), float(raw.max())) == (0.0, 255.0)


def test_gaussian_source_and_seeded_labels():
    b = batch("gaussian", batch_size=500, input_size=64, num_classes=3)
    assert b.inputs.shape == (500, 64) and not b.labelled
    assert float(b.inputs.std()) == pytest.approx(1.0, abs=0.05)
    assert set(b.labels.tolist()) == {0, 1, 2}
    assert torch.equal(b.labels, batch("gaussian", batch_size=500, input_size=64,
                                       num_classes=3).labels)


def test_batch_larger_than_the_source():
    with pytest.raises(DataError, match="batch_size 5001 is more than its 5000 samples"):
        batch(batch_size=5001)


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(40, 6, 5), dtype=np.uint8), rng.integers(0, 10, 40)


def test_npy_image_stack_is_flattened(tmp_path, images):
    path = tmp_path / "x.npy"
    np.save(path, images[0])
    b = batch(path, batch_size=40, normalize="none")
    assert b.inputs.shape == (40, 30) and not b.labelled
    assert sorted(b.inputs.sum(1).tolist()) == sorted(images[0].reshape(40, -1).sum(1).tolist())


@pytest.mark.parametrize("names", [("images", "labels"), ("x", "y"), ("inputs", "targets")])
def test_npz_with_labels(tmp_path, images, names):
    path = tmp_path / "d.npz"
    np.savez(path, **{names[0]: images[0], names[1]: images[1]})
    b = batch(path, batch_size=40, normalize="none")
    assert b.labelled and b.inputs.shape == (40, 30)
    # rows and labels travel together
    rows = {tuple(r) for r in np.c_[images[0].reshape(40, -1), images[1]].tolist()}
    got = {tuple(r) for r in np.c_[b.inputs.numpy(), b.labels.numpy()].tolist()}
    assert got == rows


def test_npz_single_array(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, whatever=np.ones((8, 3)) * np.arange(8)[:, None])
    assert batch(path, batch_size=8).inputs.shape == (8, 3)


@pytest.mark.parametrize("form", ["tensor", "tuple", "dict"])
def test_pt_files(tmp_path, images, form):
    x, y = torch.from_numpy(images[0]).float(), torch.from_numpy(images[1])
    obj = {"tensor": x, "tuple": (x, y), "dict": {"inputs": x, "labels": y}}[form]
    path = tmp_path / "d.pt"
    torch.save(obj, path)
    b = batch(path, batch_size=40)
    assert b.inputs.shape == (40, 30) and b.labelled == (form != "tensor")


def write_idx(path, array: np.ndarray, code: int = 0x08, compress: bool = False, cut: int = 0):
    raw = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw += array.astype(array.dtype.newbyteorder(">")).tobytes()
    raw = raw[: len(raw) - cut]
    (gzip.open if compress else open)(path, "wb").write(raw)


@pytest.mark.parametrize("compress", [False, True])
def test_idx_directory(tmp_path, images, compress):
    gz = ".gz" if compress else ""
    write_idx(tmp_path / f"train-images-idx3-ubyte{gz}", images[0], compress=compress)
    write_idx(tmp_path / f"train-labels-idx1-ubyte{gz}", images[1].astype(np.uint8),
              compress=compress)
    b = batch(tmp_path, batch_size=40, normalize="none")
    assert b.labelled and b.inputs.shape == (40, 30)
    assert sorted(b.labels.tolist()) == sorted(images[1].tolist())


def bad(tmp_path, name: str, content) -> str:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, np.ndarray):
        np.save(path, content)
    else:
        content(path)
    return str(path)


BAD_FILES = [
    ("missing.npy", None, "no such file or directory"),
    ("empty.npy", np.zeros((0, 5)), "is empty"),
    ("flat.npy", np.arange(10.0), "expected samples × features"),
    ("text.npy", np.array([["a", "b"], ["c", "d"]]), "real numbers"),
    ("nan.npy", np.array([[1.0, 2.0], [np.nan, 1.0]]), "NaN or Inf values (first in sample 1)"),
    ("inf.npy", np.array([[1.0, np.inf], [0.0, 1.0]]), "NaN or Inf"),
    ("corrupt.npy", b"\x93NUMPY garbage", "not a readable .npy file"),
    ("corrupt.npz", b"PK\x03\x04 not really a zip", "not a readable .npz file"),
    ("corrupt.pt", b"not a torch file", "not a readable .pt file"),
    ("data.csv", b"1,2\n3,4\n", "unknown file type '.csv'"),
    ("constant.npy", np.ones((10, 4)), "cannot be standardised"),
    ("labels.npz", lambda p: np.savez(p, images=np.ones((4, 2)) * np.arange(4)[:, None],
                                      labels=np.arange(3)), "3 labels for 4 samples"),
    ("floatlabels.npz", lambda p: np.savez(p, images=np.eye(4), labels=np.ones(4) * 0.5),
     "labels must be class indices"),
    ("biglabels.npz", lambda p: np.savez(p, images=np.eye(4), labels=np.arange(4) * 5),
     "labels go up to 15 but model.num_classes is 10"),
    ("ambiguous.npz", lambda p: np.savez(p, a=np.eye(3), b=np.eye(3)),
     "cannot tell which array holds the inputs"),
    ("bad-idx3-ubyte", b"\x01\x02\x03\x04", "not an IDX file"),
    ("short-idx3-ubyte", lambda p: write_idx(p, np.ones((5, 3, 3), np.uint8), cut=7),
     "truncated or corrupt"),
]


@pytest.mark.parametrize("name, content, message", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_data_files(tmp_path, name, content, message):
    path = bad(tmp_path, name, content) if content is not None else str(tmp_path / name)
    with pytest.raises(DataError) as caught:
        batch(path, batch_size=2)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_empty_idx_directory(tmp_path):
    with pytest.raises(DataError, match="no MNIST IDX images file"):
        batch(tmp_path, batch_size=2)


def test_auto_and_cpu_devices():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_index_out_of_range():
    with pytest.raises(DeviceError, match="CUDA device"):
        resolve_device(f"cuda:{torch.cuda.device_count()}")


@pytest.mark.parametrize("name", ["float32", "float64", "float16", "bfloat16"])
def test_dtypes(name):
    assert resolve_dtype(name) == getattr(torch, name)
