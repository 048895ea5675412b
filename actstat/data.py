"""Data: a DataConfig -> one Batch (inputs, labels) on a device, sampled with the seed."""

from __future__ import annotations

import functools
import gzip
import math
import numbers
import struct
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import nn

from actstat.config import DTYPES, DataConfig, no_such_source
from actstat.errors import DataError, DeviceError

IMAGE_KEYS = ("images", "inputs", "x", "X", "data", "features")
LABEL_KEYS = ("labels", "targets", "y", "Y")
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


@dataclass(frozen=True)
class Batch:
    """One batch on the run's device. inputs: (batch, *shape) in the run's dtype, where shape is
    one sample's (flat features unless data.shape or the model asked for another), or int64 token
    ids (batch, length) for `tokens`; labels: int64 class indices (batch,), or for `tokens` int64
    ids (batch, length), drawn with the seed as targets for a language-model loss."""

    inputs: torch.Tensor
    labels: torch.Tensor
    description: str  # what was loaded, for the report
    labelled: bool  # False: the source had no labels and they were drawn with the seed


def resolve_device(name: str) -> torch.device:
    """`auto` -> cuda when available, else cpu; `cuda`/`cuda:N` only where that GPU exists."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            raise DeviceError(
                f"device '{name}': CUDA is not available here (torch {torch.__version__}, {build}, "
                "no usable GPU); use --device cpu or --device auto"
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        count = torch.cuda.device_count()
        if index >= count:
            raise DeviceError(f"device '{name}': this machine has {count} CUDA device(s), "
                              f"numbered 0 to {count - 1}")
    return torch.device(name)


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise DeviceError(f"dtype '{name}' is not one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def load_batch(data: DataConfig, *, seed: int, device: torch.device, dtype: torch.dtype,
               num_classes: int,
               shape: Sequence[int] | Callable[[int], Sequence[int]] | None = None) -> Batch:
    """The batch that every scheme of a run sees: the same rows, in the same order, for a seed.

    Each sample is shaped as data.shape if the config sets one, else as `shape`: a shape, or a
    function of the source's values per sample that returns one (`sample_shape_for` with the
    model bound to it), called only when data.shape is not set. Neither: flat features. A shape
    only reshapes each sample's values, in order: (N, 1, 28, 28) is (N, 784) viewed as images."""
    g = torch.Generator().manual_seed(seed)
    if data.source == "tokens":
        # ids, not measurements: no normalisation and no float dtype (an Embedding indexes with
        # them); the targets are drawn after the inputs, so the inputs do not depend on them
        inputs = torch.randint(data.vocab, (data.batch_size, data.length), generator=g)
        labels = torch.randint(data.vocab, (data.batch_size, data.length), generator=g)
        description = f"tokens: uniform ids in [0, {data.vocab}), length {data.length}"
        wanted = _sample_shape(data, shape, data.length, "tokens", " (data.length)")
        inputs = inputs.reshape(data.batch_size, *wanted)
        labels = labels.reshape(data.batch_size, *wanted)
        return Batch(inputs.to(device), labels.to(device), description + _shaped(wanted), False)
    if data.source == "gaussian":
        inputs = torch.randn(data.batch_size, data.input_size, generator=g, dtype=torch.float64)
        description = f"gaussian: N(0, 1), {data.input_size} features"
        source_name, key = "gaussian", " (data.input_size)"
        labels = None
    else:
        features, all_labels, description = _read_source(data.source)
        if all_labels is not None and all_labels.size and int(all_labels.max()) >= num_classes:
            raise DataError(f"{description}: labels go up to {int(all_labels.max())} but "
                            f"model.num_classes is {num_classes}; raise num_classes (a model by "
                            f"name: its classifier's --model-arg num_labels={int(all_labels.max()) + 1})")
        shift, divisor = _normaliser(features, data.normalize, description)
        count = features.shape[0]
        if data.batch_size > count:
            raise DataError(f"{description}: batch_size {data.batch_size} is more than its "
                            f"{count} samples; use --batch-size {count} or fewer")
        rows = torch.randperm(count, generator=g)[: data.batch_size].numpy()
        inputs = torch.from_numpy((features[rows].astype(np.float64) - shift) / divisor)
        labels = None if all_labels is None else torch.from_numpy(all_labels[rows].astype(np.int64))
        source_name, key = data.source if data.source == "mnist" else f"'{data.source}'", ""
    labelled = labels is not None
    if labels is None:
        # unlabelled data: labels drawn with the seed, so a backward pass has a loss to follow
        labels = torch.randint(num_classes, (data.batch_size,), generator=g)
    wanted = _sample_shape(data, shape, inputs.shape[1], source_name, key)
    inputs = inputs.reshape(data.batch_size, *wanted)  # a view: flat samples are not copied
    return Batch(inputs.to(device=device, dtype=dtype), labels.to(device),
                 description + _shaped(wanted), labelled)


def load_pool(data: DataConfig, *, seed: int, device: torch.device, dtype: torch.dtype,
              num_classes: int,
              shape: Sequence[int] | Callable[[int], Sequence[int]] | None = None) -> Batch:
    """What training draws its mini-batches from: every sample of a file source (the bundled
    MNIST sample's 5,000), in a seeded order; gaussian and tokens data: data.batch_size samples,
    drawn as `load_batch` draws them."""
    if data.source not in ("gaussian", "tokens"):
        count = _read_source(data.source)[0].shape[0]
        data = data.model_copy(update={"batch_size": count})
    return load_batch(data, seed=seed, device=device, dtype=dtype, num_classes=num_classes,
                      shape=shape)


def _sample_shape(data: DataConfig, shape: Sequence[int] | Callable[[int], Sequence[int]] | None,
                  values: int, source_name: str, key: str) -> tuple[int, ...]:
    """One sample's shape: data.shape, else the caller's, else flat; it must hold the source's
    `values` per sample, and is only checked here for a shape the config did not validate."""
    if data.shape is not None:
        wanted, named = tuple(data.shape), f"data.shape {list(data.shape)}"
    elif shape is None:
        return (values,)
    else:
        given = tuple(shape(values) if callable(shape) else shape)
        named = f"shape {list(given)}"
        # whole numbers of any kind (torch.Size's, NumPy's), but not True or 28.0
        if not given or not all(isinstance(n, numbers.Integral) and not isinstance(n, bool)
                                and n >= 1 for n in given):
            raise DataError(f"{named}: a sample shape needs one or more whole dimensions ≥ 1")
        wanted = tuple(int(n) for n in given)
    if math.prod(wanted) != values:
        raise DataError(f"{named} has {math.prod(wanted)} values per sample but {source_name} "
                        f"has {values}{key}")
    return wanted


def _shaped(shape: tuple[int, ...]) -> str:
    """The description's note of a sample shape; none for flat samples (the MLP's)."""
    return f", shaped {shape}" if len(shape) > 1 else ""


def sample_shape_for(model: nn.Module, features: int, *, source: str) -> tuple[int, ...]:
    """The per-sample shape that `model`'s first weight layer takes, for a source (data.source)
    of `features` values per sample. The first weight layer is the first convolution, Linear or
    Embedding in `model.modules()` order: the order the model's __init__ assigned them, which is
    usually, not always, the order its forward runs them (data.shape overrides this choice).

    - a convolution with C input channels and d spatial dimensions: (C, side, ...), d equal sides
      with C·side^d = features (MNIST's 784 for Conv2d(1, ...): (1, 28, 28)); where no whole
      side fits, a DataError asking for data.shape;
    - a Linear, or no weight layer at all: flat, (features,); a Linear whose in_features differ
      fails in the forward pass with torch's own message;
    - an Embedding (or EmbeddingBag): a DataError asking for `tokens`, which is the source for
      such a model. `tokens` gives (features,), its length, to a model with an Embedding anywhere
      (a language model may assign its head before its embedding) and refuses any other model.
    """
    embeddings = (nn.Embedding, nn.EmbeddingBag)
    if source == "tokens":
        if any(isinstance(module, embeddings) for module in model.modules()):
            return (features,)
        raise DataError("data.source tokens gives integer ids, for a model that starts with an "
                        "Embedding; this model has none: use mnist, gaussian or a file")
    convolutions = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3,
                    nn.ConvTranspose1d: 1, nn.ConvTranspose2d: 2, nn.ConvTranspose3d: 3}
    for name, module in model.named_modules():
        label = f"{type(module).__name__} '{name}'" if name else type(module).__name__
        if isinstance(module, embeddings):
            raise DataError(f"this model starts with an Embedding ({label}), which takes "
                            "integer ids: use data.source tokens (--data tokens)")
        if isinstance(module, nn.Linear):
            return (features,)
        dims = next((d for kind, d in convolutions.items() if isinstance(module, kind)), None)
        if dims is not None:
            return _convolution_shape(module.in_channels, dims, features, label)
    return (features,)


def _convolution_shape(channels: int, dims: int, features: int, label: str) -> tuple[int, ...]:
    """(channels, side, ...) with `dims` equal sides holding `features` values in all."""
    if channels == 0:  # a Lazy convolution before its first call
        raise DataError(f"this model starts with {label}, which learns its input channels from "
                        "its first batch: set data.shape, e.g. [3, 32, 32]")
    per_channel, rest = divmod(features, channels)
    side = round(per_channel ** (1 / dims))
    # the float root of a whole power can land just off it (64 ** (1/3) is 3.9999999999999996)
    side = next((s for s in (side, side + 1, side - 1) if s >= 1 and s ** dims == per_channel), 0)
    if rest or not side:
        sides = " × ".join(["side"] * dims)
        spatial = {1: "length", 2: "height, width", 3: "depth, height, width"}[dims]
        inputs = f"{channels} input channel" + ("s" if channels != 1 else "")
        raise DataError(f"this model starts with {label} ({inputs}), but {features} values per "
                        f"sample are not {channels} × {sides} for a whole side: set data.shape "
                        f"to [{channels}, {spatial}]")
    return (channels, *[side] * dims)


def _read_source(source: str) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(features as (N, F), labels or None, description) of the bundled sample or a path."""
    if source == "mnist":
        images, labels = _bundled_mnist()
        return images, labels, "mnist: the bundled 5,000-image MNIST sample"
    path = Path(source).expanduser()
    if not path.exists():
        raise no_such_source(source)
    if path.is_dir():
        features, labels = _read_idx_dir(path)
    elif path.suffix == ".npy":
        features, labels = _checked_array(_np_load(path), path), None
    elif path.suffix == ".npz":
        features, labels = _read_npz(path)
    elif path.suffix in (".pt", ".pth"):
        features, labels = _read_pt(path)
    elif "idx" in path.name:
        features, labels = _checked_array(_read_idx(path), path), None
    else:
        raise DataError(f"data '{path}': unknown file type '{path.suffix}' "
                        "(expected .npy, .npz, .pt, an IDX file or a directory of IDX files)")
    return features, _checked_labels(labels, features, path), str(path)


@functools.cache
def _bundled_mnist() -> tuple[np.ndarray, np.ndarray]:
    with resources.files("actstat").joinpath("assets/mnist_5k.npz").open("rb") as f, \
            np.load(f) as archive:
        return archive["images"].reshape(len(archive["images"]), -1), archive["labels"]


def _np_load(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise DataError(f"data '{path}': not a readable .npy file ({err})") from None
    return array


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"data '{path}': not a readable .npz file ({err})") from None
    return _pick(arrays, path)


def _read_pt(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file; all mean "unreadable"
        raise DataError(f"data '{path}': not a readable .pt file ({type(err).__name__})") from None
    if isinstance(loaded, torch.Tensor):
        return _checked_array(loaded.numpy(), path), None
    if isinstance(loaded, (tuple, list)) and len(loaded) == 2:
        loaded = {"inputs": loaded[0], "labels": loaded[1]}
    if isinstance(loaded, dict):
        arrays = {k: v.numpy() for k, v in loaded.items() if isinstance(v, torch.Tensor)}
        return _pick(arrays, path)
    raise DataError(f"data '{path}': expected a tensor, an (inputs, labels) pair or a dict of "
                    f"tensors, found a {type(loaded).__name__}")


def _pick(arrays: dict[str, np.ndarray], path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Inputs and labels from named arrays: the usual names, or the only array there is."""
    if not arrays:
        raise DataError(f"data '{path}': holds no arrays")
    inputs_key = next((k for k in IMAGE_KEYS if k in arrays), None)
    if inputs_key is None:
        if len(arrays) != 1:
            raise DataError(f"data '{path}': cannot tell which array holds the inputs "
                            f"(found {', '.join(arrays)}; name it one of {', '.join(IMAGE_KEYS)})")
        inputs_key = next(iter(arrays))
    labels_key = next((k for k in LABEL_KEYS if k in arrays), None)
    return _checked_array(arrays[inputs_key], path), arrays.get(labels_key) if labels_key else None


def _read_idx_dir(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """MNIST's IDX files in a directory (train-* preferred over t10k-*), gzipped or not."""
    for prefix in ("train", "t10k", ""):
        images = sorted(path.glob(f"{prefix}*images*idx3*"))
        if images:
            labels = sorted(path.glob(f"{images[0].name.split('images')[0]}labels*idx1*"))
            features = _checked_array(_read_idx(images[0]), images[0])
            return features, _read_idx(labels[0]) if labels else None
    raise DataError(f"data '{path}': no MNIST IDX images file (such as train-images-idx3-ubyte.gz) "
                    "in this directory")


def _read_idx(path: Path) -> np.ndarray:
    """An array in the IDX format that MNIST is distributed in (big-endian header, then data)."""
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"data '{path}': cannot read IDX file ({err})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in IDX_DTYPES:
        raise DataError(f"data '{path}': not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"data '{path}': corrupt IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"data '{path}': IDX header promises shape {shape} ({expected} bytes) but "
                        f"the file holds {len(raw) - header} bytes: truncated or corrupt")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def _checked_array(array: np.ndarray, path: Path) -> np.ndarray:
    """Samples × features: image stacks are flattened; non-numeric, empty or NaN data refused."""
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) \
            or np.issubdtype(array.dtype, np.complexfloating):
        raise DataError(f"data '{path}': values must be real numbers, found dtype {array.dtype}")
    if array.ndim < 2:
        raise DataError(f"data '{path}': expected samples × features (2-D) or a stack of images, "
                        f"found shape {tuple(array.shape)}")
    if array.size == 0:
        raise DataError(f"data '{path}': is empty (shape {tuple(array.shape)})")
    flat = array.reshape(array.shape[0], -1)
    if np.issubdtype(flat.dtype, np.floating):
        bad = ~np.isfinite(flat)
        if bad.any():
            row = int(np.argwhere(bad)[0][0])
            raise DataError(f"data '{path}': holds NaN or Inf values (first in sample {row})")
    return flat


def _checked_labels(labels: np.ndarray | None, features: np.ndarray,
                    path: Path) -> np.ndarray | None:
    if labels is None:
        return None
    labels = np.asarray(labels).reshape(-1) if np.ndim(labels) else np.asarray([labels])
    if len(labels) != len(features):
        raise DataError(f"data '{path}': {len(labels)} labels for {len(features)} samples")
    if not np.issubdtype(labels.dtype, np.integer) or (labels.size and labels.min() < 0):
        raise DataError(f"data '{path}': labels must be class indices 0, 1, 2, ... "
                        f"(found dtype {labels.dtype})")
    return labels


def _normaliser(features: np.ndarray, normalize: str, description: str) -> tuple[float, float]:
    """(shift, divisor): inputs are (x - shift) / divisor in float64. `scale` maps uint8 pixels
    to [0, 1]; `standardize` subtracts the whole source's mean and divides by its population std
    (for uint8 the /255 cancels). uint8 statistics come exactly from a 256-bin count, so only
    the batch's rows are ever converted to float64: converting a whole 5,000-image source first
    cost 0.2 s of a cold run, most of it faulting in fresh pages."""
    if normalize == "none":
        return 0.0, 1.0
    if normalize == "scale":
        return 0.0, 255.0 if features.dtype == np.uint8 else 1.0
    if features.dtype == np.uint8:
        counts = np.bincount(features.reshape(-1), minlength=256).astype(np.float64)
        values = np.arange(256, dtype=np.float64)
        mean = float(counts @ values) / features.size
        std = float(np.sqrt(counts @ (values - mean) ** 2 / features.size))
    else:
        mean = float(features.mean(dtype=np.float64))
        std = float(features.std(dtype=np.float64))
    if not std > 0:
        raise DataError(f"{description}: every value is the same, so it cannot be "
                        "standardised; set data.normalize: none")
    return mean, std
