"""Data: the bundled sample, gaussian, user files in every supported format, and their errors."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from torch import nn

from actstat.config import DataConfig
from actstat.data import load_batch, resolve_device, resolve_dtype, sample_shape_for
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


# -- sample shapes ------------------------------------------------------------------------------

def test_flat_batch_is_the_documented_draw():
    # the MLP's batch, computed independently: rows from torch.randperm with the seed, pixels
    # standardised over the whole bundled sample (NumPy); gaussian: torch.randn with the seed
    from importlib import resources

    with resources.files("actstat").joinpath("assets/mnist_5k.npz").open("rb") as f, \
            np.load(f) as archive:
        pixels = archive["images"].reshape(5000, -1).astype(np.float64) / 255
        labels = archive["labels"]
    rows = torch.randperm(5000, generator=torch.Generator().manual_seed(3))[:1000].numpy()
    b = batch(seed=3)
    expected = (pixels[rows] - pixels.mean()) / pixels.std()
    np.testing.assert_allclose(b.inputs.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert b.labels.tolist() == labels[rows].tolist()
    g = torch.Generator().manual_seed(3)
    draw = torch.randn(200, 50, generator=g, dtype=torch.float64)
    drawn_labels = torch.randint(10, (200,), generator=g)
    b = batch("gaussian", seed=3, batch_size=200, input_size=50)
    assert torch.equal(b.inputs, draw) and torch.equal(b.labels, drawn_labels)


@pytest.mark.parametrize("shape", [None, (784,), lambda features: (features,)])
def test_a_flat_shape_is_the_batch_of_no_shape(shape):
    # the built-in MLP's batch stays as it was whatever the pipeline asks (the same bytes)
    plain = batch(seed=5)
    asked = load_batch(DataConfig(), seed=5, device=CPU, dtype=torch.float64, num_classes=10,
                       shape=shape)
    assert torch.equal(asked.inputs, plain.inputs) and torch.equal(asked.labels, plain.labels)
    assert asked.description == plain.description == "mnist: the bundled 5,000-image MNIST sample"


def test_mnist_as_images_is_the_flat_batch_reshaped():
    flat = batch(seed=2)
    images = batch(seed=2, shape=[1, 28, 28])
    assert images.inputs.shape == (1000, 1, 28, 28)
    assert torch.equal(images.inputs, flat.inputs.reshape(1000, 1, 28, 28))
    assert torch.equal(images.labels, flat.labels) and images.labelled
    # row-major: pixel (i, j) of a digit is flat feature 28·i + j
    assert float(images.inputs[7, 0, 13, 5]) == float(flat.inputs[7, 28 * 13 + 5])
    assert images.description == "mnist: the bundled 5,000-image MNIST sample, shaped (1, 28, 28)"
    asked = load_batch(DataConfig(), seed=2, device=CPU, dtype=torch.float64, num_classes=10,
                       shape=(1, 28, 28))
    assert torch.equal(asked.inputs, images.inputs) and asked.description == images.description


def test_gaussian_of_a_shape_is_the_flat_draw_reshaped():
    shaped = batch("gaussian", seed=4, batch_size=50, shape=[3, 8, 8], num_classes=5)
    flat = batch("gaussian", seed=4, batch_size=50, input_size=192, num_classes=5)
    assert shaped.inputs.shape == (50, 3, 8, 8)
    assert torch.equal(shaped.inputs, flat.inputs.reshape(50, 3, 8, 8))
    assert torch.equal(shaped.labels, flat.labels) and not shaped.labelled
    assert shaped.description == "gaussian: N(0, 1), 192 features, shaped (3, 8, 8)"


def test_an_image_file_can_be_shaped_back(tmp_path, images):
    path = tmp_path / "x.npy"
    np.save(path, images[0])
    b = batch(path, batch_size=40, normalize="none", shape=[6, 5])
    assert b.inputs.shape == (40, 6, 5)
    got = sorted(map(bytes, b.inputs.numpy().astype(np.uint8)))
    assert got == sorted(map(bytes, images[0]))  # each sample is one of the file's images, whole


def test_the_configs_shape_wins_over_the_callers():
    def model_shape(features):
        raise AssertionError("the model's shape is not asked for when data.shape is set")

    data = DataConfig(shape=[784])
    b = load_batch(data, seed=0, device=CPU, dtype=torch.float32, num_classes=10,
                   shape=model_shape)
    assert b.inputs.shape == (1000, 784)
    numpy_dims = load_batch(DataConfig(), seed=0, device=CPU, dtype=torch.float32,
                            num_classes=10, shape=np.array([1, 28, 28]))
    assert numpy_dims.inputs.shape == (1000, 1, 28, 28)
    b = load_batch(DataConfig(shape=[1, 28, 28]), seed=0, device=CPU, dtype=torch.float32,
                   num_classes=10, shape=(784,))
    assert b.inputs.shape == (1000, 1, 28, 28)


SHAPE_ERRORS = [
    ({"shape": [1, 32, 32]}, None, "data.shape [1, 32, 32] has 1024 values per sample but mnist "
                                   "has 784"),
    ({}, (1, 32, 32), "shape [1, 32, 32] has 1024 values per sample but mnist has 784"),
    ({"source": "gaussian"}, (3, 16, 16),
     "shape [3, 16, 16] has 768 values per sample but gaussian has 784 (data.input_size)"),
    ({"source": "tokens"}, (4, 4), "shape [4, 4] has 16 values per sample but tokens has 32 "
                                   "(data.length)"),
    ({}, (), "shape []: a sample shape needs one or more whole dimensions ≥ 1"),
    ({}, (0, 784), "shape [0, 784]: a sample shape needs one or more whole dimensions ≥ 1"),
    ({}, (1, 28.0, 28), "shape [1, 28.0, 28]: a sample shape needs one or more whole dimensions "
                        "≥ 1"),
    ({}, (True, 784), "shape [True, 784]: a sample shape needs one or more whole dimensions ≥ 1"),
    ({}, lambda features: (features, 2),
     "shape [784, 2] has 1568 values per sample but mnist has 784"),
]


@pytest.mark.parametrize("fields, shape, message", SHAPE_ERRORS, ids=[e[2][:24] for e in SHAPE_ERRORS])
def test_a_shape_that_does_not_hold_a_sample(fields, shape, message):
    with pytest.raises(DataError) as caught:
        load_batch(DataConfig(**fields), seed=0, device=CPU, dtype=torch.float32, num_classes=10,
                   shape=shape)
    assert str(caught.value) == message


def test_a_files_shape_error_names_the_file(tmp_path, images):
    path = tmp_path / "x.npy"
    np.save(path, images[0])
    with pytest.raises(DataError) as caught:
        batch(path, batch_size=4, shape=[1, 28, 28])
    assert str(caught.value) == (f"data.shape [1, 28, 28] has 784 values per sample but "
                                 f"'{path}' has 30")


# -- tokens ---------------------------------------------------------------------------------------

def test_tokens_are_seeded_int64_ids_in_range():
    b = batch("tokens", seed=9, batch_size=400, vocab=17, length=12)  # dtype float64 asked
    assert b.inputs.dtype == torch.int64 and b.inputs.shape == (400, 12)
    assert b.labels.dtype == torch.int64 and b.labels.shape == (400, 12)
    assert not b.labelled
    assert b.description == "tokens: uniform ids in [0, 17), length 12"
    for ids in (b.inputs, b.labels):
        assert int(ids.min()) == 0 and int(ids.max()) == 16
        # uniform: each of the 17 ids is about 1/17 of the 4,800 draws (std of a count ≈ 16)
        counts = torch.bincount(ids.reshape(-1), minlength=17).numpy()
        assert np.all(np.abs(counts - 4800 / 17) < 6 * np.sqrt(4800 / 17))
    # the documented draws: the inputs, then the targets, from one generator seeded with the seed
    g = torch.Generator().manual_seed(9)
    assert torch.equal(b.inputs, torch.randint(17, (400, 12), generator=g))
    assert torch.equal(b.labels, torch.randint(17, (400, 12), generator=g))
    again, other = batch("tokens", seed=9, batch_size=400, vocab=17, length=12), \
        batch("tokens", seed=10, batch_size=400, vocab=17, length=12)
    assert torch.equal(again.inputs, b.inputs) and not torch.equal(other.inputs, b.inputs)


def test_tokens_of_a_shape_are_the_flat_ids_reshaped():
    flat = batch("tokens", batch_size=8)
    shaped = batch("tokens", batch_size=8, shape=[4, 8])
    assert shaped.inputs.shape == shaped.labels.shape == (8, 4, 8)
    assert torch.equal(shaped.inputs, flat.inputs.reshape(8, 4, 8))
    assert torch.equal(shaped.labels, flat.labels.reshape(8, 4, 8))
    assert shaped.description == "tokens: uniform ids in [0, 1000), length 32, shaped (4, 8)"


# -- the shape a model's first layer takes ----------------------------------------------------------

def test_a_cnn_gets_images_and_runs_on_them():
    from functools import partial

    from models import InplaceResNet, SmallCNN

    for model in (SmallCNN(), InplaceResNet()):
        assert sample_shape_for(model, 784, source="mnist") == (1, 28, 28)
        b = load_batch(DataConfig(batch_size=16), seed=0, device=CPU, dtype=torch.float32,
                       num_classes=10, shape=partial(sample_shape_for, model, source="mnist"))
        assert b.inputs.shape == (16, 1, 28, 28)
        assert model(b.inputs).shape == (16, 10)


def test_a_language_model_gets_tokens_and_runs_on_them():
    from functools import partial

    from models import TinyTransformer

    model = TinyTransformer(vocab=50)
    data = DataConfig(source="tokens", vocab=50, length=16, batch_size=4)
    b = load_batch(data, seed=0, device=CPU, dtype=torch.float32, num_classes=10,
                   shape=partial(sample_shape_for, model, source="tokens"))
    assert b.inputs.shape == (4, 16)
    logits = model(b.inputs)
    assert logits.shape == (4, 16, 50)
    # the drawn targets fit a language-model loss as they are
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, 50), b.labels.reshape(-1))
    assert torch.isfinite(loss)


class HeadFirst(nn.Module):
    """A language model whose __init__ assigns its head before its embedding."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(8, 20)
        self.embed = nn.Embedding(20, 8)


SHAPES_FOR = [
    (nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), 3072, "mnist", (3, 32, 32)),
    (nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3)), nn.Linear(4, 2)), 784, "mnist", (1, 28, 28)),
    (nn.Conv1d(4, 2, 3), 100, "gaussian", (4, 25)),
    (nn.Conv3d(2, 1, 1), 128, "x.npy", (2, 4, 4, 4)),  # 64 ** (1/3) is 3.9999999999999996
    (nn.Conv3d(1, 1, 1), 1000, "x.npy", (1, 10, 10, 10)),
    (nn.ConvTranspose2d(100, 8, 4), 100, "gaussian", (100, 1, 1)),  # a GAN's latent vector
    (nn.Sequential(nn.Linear(784, 10), nn.Conv2d(1, 1, 1)), 784, "mnist", (784,)),
    (nn.Sequential(nn.Flatten(), nn.ReLU()), 30, "x.npy", (30,)),
    (HeadFirst(), 32, "tokens", (32,)),
]


@pytest.mark.parametrize("model, features, source, shape", SHAPES_FOR,
                         ids=[f"{type(m).__name__}-{f}" for m, f, _, _ in SHAPES_FOR])
def test_sample_shape_for_the_first_weight_layer(model, features, source, shape):
    assert sample_shape_for(model, features, source=source) == shape


def test_sample_shape_for_errors():
    from models import SmallCNN, TinyTransformer

    cases = [
        (TinyTransformer(), 784, "mnist",
         "this model starts with an Embedding (Embedding 'embed'), which takes integer ids: use "
         "data.source tokens (--data tokens)"),
        (SmallCNN(), 32, "tokens",
         "data.source tokens gives integer ids, for a model that starts with an Embedding; this "
         "model has none: use mnist, gaussian or a file"),
        (nn.Sequential(nn.Conv2d(3, 4, 3)), 784, "mnist",
         "this model starts with Conv2d '0' (3 input channels), but 784 values per sample are "
         "not 3 × side × side for a whole side: set data.shape to [3, height, width]"),
        (nn.Conv2d(1, 4, 3), 785, "gaussian",
         "this model starts with Conv2d (1 input channel), but 785 values per sample are not "
         "1 × side × side for a whole side: set data.shape to [1, height, width]"),
        (nn.Conv3d(2, 1, 1), 100, "gaussian",
         "this model starts with Conv3d (2 input channels), but 100 values per sample are not "
         "2 × side × side × side for a whole side: set data.shape to [2, depth, height, width]"),
        (nn.LazyConv2d(4, 3), 784, "mnist",
         "this model starts with LazyConv2d, which learns its input channels from its first "
         "batch: set data.shape, e.g. [3, 32, 32]"),
    ]
    for model, features, source, message in cases:
        with pytest.raises(DataError) as caught:
            sample_shape_for(model, features, source=source)
        assert str(caught.value) == message
