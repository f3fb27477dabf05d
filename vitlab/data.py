"""Data, offline by default: photos bundled with scikit-image and scikit-learn, the scikit-learn digits,
procedural coloured shapes, and CIFAR-10 from the Hugging Face Hub as an opt-in for the `gpu` profile.

Datasets are built as Hugging Face `datasets.Dataset`s and cached under the repository's `data/` folder
(`VITLAB_DATA` names another folder). A cache entry's name holds a hash of everything that made it (the
generator's parameters and `CACHE_VERSION`), so changing either builds a new one. Images come back as
float tensors (N, C, H, W) in [0, 1] and labels as int64 tensors (N,).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import datasets
import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F
from datasets.features.features import Array3DExtensionType
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

CACHE_VERSION = "1"  # bump when a generator's output changes: every cache entry is rebuilt
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")
SKLEARN_PHOTOS = ("china", "flower")
PHOTOS = SKIMAGE_PHOTOS + SKLEARN_PHOTOS
SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
DIGITS_TEST_PER_CLASS = 36  # the test split: 36 images of each digit, 360 in all; the other 1,437 train
CIFAR10_REPO = "uoft-cs/cifar10"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_SPLITS = ("train", "test")


def data_dir() -> Path:
    """The cache folder: `VITLAB_DATA` if set, else the repository's `data/` (else ~/.cache/vitlab)."""
    chosen = os.environ.get("VITLAB_DATA", "").strip()
    if chosen:
        return Path(chosen).expanduser()
    repo_data = Path(__file__).resolve().parent.parent / "data"
    return repo_data if repo_data.is_dir() else Path.home() / ".cache" / "vitlab"


# ---------------------------------------------------------------------------------------------- photos

def photo(name: str, size: int | None = None) -> Tensor:
    """A bundled photograph as a float tensor (3, H, W) in [0, 1]; greyscale ones are repeated to 3 channels.

    `size` centre-crops the largest square and resizes it (antialiased) to (3, size, size).
    Names: PHOTOS (scikit-image's astronaut, chelsea, coffee, rocket, camera; scikit-learn's china, flower).
    """
    if name in SKIMAGE_PHOTOS:
        import skimage.data

        pixels = getattr(skimage.data, name)()
    elif name in SKLEARN_PHOTOS:
        from sklearn.datasets import load_sample_image

        pixels = load_sample_image(f"{name}.jpg")
    else:
        raise ValueError(f"unknown photo {name!r}: choose one of {', '.join(PHOTOS)}")
    img = torch.from_numpy(np.array(pixels)).float().div_(255)
    img = img.expand(3, *img.shape) if img.ndim == 2 else img.permute(2, 0, 1)[:3]
    if size is not None:
        side = min(img.shape[-2:])
        top, left = (img.shape[-2] - side) // 2, (img.shape[-1] - side) // 2
        img = img[:, top:top + side, left:left + side]
        img = F.interpolate(img[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        img = img.clamp_(0, 1)
    return img.contiguous()


# ----------------------------------------------------------------------------------- Dataset <-> tensors

def image_dataset(images: np.ndarray, labels: np.ndarray, class_names: Sequence[str],
                  extra: dict[str, np.ndarray] | None = None) -> datasets.Dataset:
    """A `datasets.Dataset` with an `image` column (Array3D, C x H x W: uint8 0..255 or float32 0..1), a
    ClassLabel `label`, and the `extra` columns (1-D, or 2-D as fixed-length lists).

    Built straight from Arrow buffers: going through Python lists would take seconds for 10k images.
    """
    dtype = "float32" if np.issubdtype(np.asarray(images).dtype, np.floating) else "uint8"
    images = np.ascontiguousarray(images, dtype=dtype)
    shape = images.shape[1:]
    storage = pa.array(images.reshape(-1))
    for k in reversed(shape):  # Array3D stores nested lists: innermost rows of W, then H rows, then C planes
        storage = pa.ListArray.from_arrays(pa.array(np.arange(0, len(storage) + 1, k, dtype=np.int32)), storage)
    columns = {"image": pa.ExtensionArray.from_storage(Array3DExtensionType(shape, dtype), storage),
               "label": pa.array(np.asarray(labels, dtype=np.int64))}
    features = {"image": datasets.Array3D(shape, dtype), "label": datasets.ClassLabel(names=list(class_names))}
    for key, values in (extra or {}).items():
        values = np.asarray(values)
        value = datasets.Value(str(values.dtype))
        if values.ndim == 1:
            columns[key], features[key] = pa.array(values), value
        else:
            columns[key] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), values.shape[1])
            features[key] = datasets.List(value, length=values.shape[1])
    features = datasets.Features(features)
    table = pa.table(columns).cast(features.arrow_schema)
    return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))


def _array_column(ds: datasets.Dataset, column: str) -> np.ndarray:
    """The whole `column` of `ds` as one numpy array, read from Arrow (the torch/numpy formatters are slow here)."""
    values = ds.with_format("arrow")[:].column(column).combine_chunks()
    if isinstance(values, pa.ExtensionArray):
        values = values.storage
    while pa.types.is_list(values.type) or pa.types.is_fixed_size_list(values.type):
        values = values.flatten()
    shape = getattr(ds.features[column], "shape", ())
    return np.array(values.to_numpy(zero_copy_only=False)).reshape(len(ds), *shape)  # a writable copy


def to_tensors(ds: datasets.Dataset) -> tuple[Tensor, Tensor]:
    """(images float (N, C, H, W) in [0, 1], labels int64 (N,)) from a Dataset made by `image_dataset`."""
    images = torch.from_numpy(_array_column(ds, "image"))
    images = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    return images, torch.from_numpy(_array_column(ds, "label")).long()


def _cached(kind: str, params: dict, build: Callable[[], datasets.Dataset]) -> datasets.Dataset:
    """Load the Dataset for (kind, params) from the cache, or build and save it there.

    The folder is written under a temporary name and renamed, so a reader never sees half a dataset and two
    processes building at once do not clash. When the cache cannot be written (a read-only sandbox), the
    freshly built dataset is returned uncached.
    """
    key = json.dumps({"kind": kind, "version": CACHE_VERSION, **params}, sort_keys=True)
    path = data_dir() / f"{kind}-v{CACHE_VERSION}-{hashlib.sha1(key.encode()).hexdigest()[:12]}"
    if (path / "dataset_info.json").is_file():
        return datasets.load_from_disk(str(path))
    ds = build()
    ds.info.description = key
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
        tmp.chmod(0o755)
    except OSError:
        return ds
    quiet = datasets.utils.are_progress_bars_disabled()
    datasets.utils.disable_progress_bars()
    try:
        ds.save_to_disk(str(tmp))
        tmp.rename(path)
    except OSError:  # another process renamed its copy first, or the disk is full: keep what we built
        shutil.rmtree(tmp, ignore_errors=True)
        return ds
    finally:
        if not quiet:
            datasets.utils.enable_progress_bars()
    return datasets.load_from_disk(str(path))


def loader(data: tuple[Tensor, Tensor] | datasets.Dataset, batch_size: int = 64, shuffle: bool = True,
           seed: int = 0, drop_last: bool = False) -> DataLoader:
    """A DataLoader over (images, labels) tensors or an image Dataset; shuffling is seeded, so repeatable."""
    images, labels = to_tensors(data) if isinstance(data, datasets.Dataset) else data
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(images, labels), batch_size=batch_size, shuffle=shuffle,
                      drop_last=drop_last, generator=generator)


def _split_index(split: str) -> int:
    """0 for "train", 1 for "test"; anything else is an error."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, not {split!r}")
    return _SPLITS.index(split)


# ---------------------------------------------------------------------------------------------- digits

def digits_split(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices) into scikit-learn's 1,797 digits: DIGITS_TEST_PER_CLASS of each class
    drawn for the test split with numpy's PCG64 seeded by `seed`, the rest for training; both sorted."""
    from sklearn.datasets import load_digits

    target = load_digits().target
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(target == c))[:DIGITS_TEST_PER_CLASS]
                           for c in range(10)])
    test = np.sort(test)
    return np.setdiff1d(np.arange(len(target)), test), test


def digits_dataset(split: str = "train", seed: int = 0) -> datasets.Dataset:
    """The scikit-learn digits split as a cached Dataset: `image` float32 (1, 8, 8) = ink level / 16, `label`,
    and `index`, the row in `sklearn.datasets.load_digits()`."""
    which = _split_index(split)

    def build() -> datasets.Dataset:
        from sklearn.datasets import load_digits

        raw = load_digits()
        index = digits_split(seed)[which]
        return image_dataset(raw.images[index, None] / 16, raw.target[index], [str(d) for d in range(10)],
                             extra={"index": index})

    return _cached("digits", {"split": split, "seed": seed}, build)


def digits(split: str = "train", seed: int = 0) -> tuple[Tensor, Tensor]:
    """Handwritten digits: (images float (N, 1, 8, 8) in [0, 1], labels int64 (N,)); N = 1437 train, 360 test.

    The split is stratified and fixed by `seed` (the course uses seed 0 everywhere).
    """
    return to_tensors(digits_dataset(split, seed))


# ---------------------------------------------------------------------------------------------- shapes

def shape_sdf(kind: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Signed distance (pixels; < 0 inside) to a shape of half-extent r centred at the origin, at offsets dx, dy.

    Every shape fills exactly the box [-r, r]^2 (tight bounding box). Outside the shape the value is a lower
    bound on the true distance for the polygons, which is all the anti-aliasing needs.
    """
    ax, ay = np.abs(dx), np.abs(dy)
    if kind == "circle":
        return np.hypot(dx, dy) - r
    if kind == "square":
        return np.maximum(ax, ay) - r
    if kind == "diamond":
        return (ax + ay - r) / np.sqrt(2)
    if kind == "triangle":  # apex (0, -r), base corners (+-r, r); y points down
        return np.maximum(dy - r, (2 * ax - (dy + r)) / np.sqrt(5))
    if kind == "cross":
        arm = r / 3
        return np.minimum(np.maximum(ax - r, ay - arm), np.maximum(ax - arm, ay - r))
    if kind == "ring":
        return np.abs(np.hypot(dx, dy) - 0.775 * r) - 0.225 * r
    raise ValueError(f"unknown shape {kind!r}: choose from {', '.join(SHAPES)}")


def draw_shapes(kinds: Sequence[str], cx: np.ndarray, cy: np.ndarray, r: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage (N, size, size) float32 in [0, 1] of shape kinds[i] centred at (cx[i], cy[i]).

    Pixel (row i, column j) has its centre at (x, y) = (j + 0.5, i + 0.5); coverage = clip(0.5 - sdf, 0, 1).
    """
    grid = np.arange(size, dtype=np.float32) + 0.5
    cx, cy, r = (np.asarray(v, dtype=np.float32)[:, None, None] for v in (cx, cy, r))
    dx, dy = grid[None, None, :] - cx, grid[None, :, None] - cy
    kinds = np.asarray(kinds)
    coverage = np.empty((len(kinds), size, size), dtype=np.float32)
    for kind in np.unique(kinds):
        rows = kinds == kind
        coverage[rows] = np.clip(0.5 - shape_sdf(str(kind), dx[rows], dy[rows], r[rows]), 0, 1)
    return coverage


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(N,) hue, saturation, value in [0, 1] -> (N, 3) RGB in [0, 1]."""
    k = (np.array([5.0, 3.0, 1.0]) + 6 * h[:, None]) % 6
    return v[:, None] - v[:, None] * s[:, None] * np.clip(np.minimum(k, 4 - k), 0, 1)


def _make_shapes(n: int, size: int, seed: int, split: int, classes: Sequence[str], noise: float) -> dict:
    """The arrays of a shapes set: images uint8 (n, 3, size, size), labels, centres, radii, colours."""
    rng = np.random.default_rng([seed, split])
    labels = rng.permutation(np.arange(n) % len(classes))
    r = rng.uniform(0.18, 0.38, n) * size
    cx, cy = (rng.uniform(r, size - r) for _ in range(2))
    fg = _hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0.6, 1.0, n), rng.uniform(0.7, 1.0, n)).astype(np.float32)
    bg = _hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0.0, 0.6, n), rng.uniform(0.0, 0.4, n)).astype(np.float32)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    for start in range(0, n, 2048):  # chunks keep the float work in cache-sized pieces
        part = slice(start, min(start + 2048, n))
        cover = draw_shapes([classes[i] for i in labels[part]], cx[part], cy[part], r[part], size)[:, None]
        pixels = bg[part, :, None, None] + (fg[part] - bg[part])[:, :, None, None] * cover
        pixels += noise * rng.standard_normal(pixels.shape, dtype=np.float32)
        images[part] = np.rint(np.clip(pixels, 0, 1) * 255)
    return {"images": images, "labels": labels, "cx": cx.astype(np.float32), "cy": cy.astype(np.float32),
            "radius": r.astype(np.float32), "colour": fg}


def shapes_dataset(n: int, size: int = 32, seed: int = 0, split: str = "train",
                   classes: Sequence[str] = SHAPES, noise: float = 0.05) -> datasets.Dataset:
    """A cached Dataset of n coloured shapes: `image` uint8 (3, size, size), `label` (index into `classes`),
    and each shape's `cx`, `cy`, `radius` (pixels; its box is [cx - r, cx + r] x [cy - r, cy + r]) and RGB
    `colour`. Deterministic in (n, size, seed, split, classes, noise); splits use independent streams.
    """
    which = _split_index(split)
    classes = tuple(classes)
    unknown = set(classes) - set(SHAPES)
    if unknown or len(set(classes)) != len(classes) or len(classes) < 2:
        raise ValueError(f"classes must be two or more distinct names from {SHAPES}, got {classes}")

    def build() -> datasets.Dataset:
        arrays = _make_shapes(n, size, seed, which, classes, noise)
        extra = {k: arrays[k] for k in ("cx", "cy", "radius", "colour")}
        return image_dataset(arrays["images"], arrays["labels"], classes, extra=extra)

    params = {"n": n, "size": size, "seed": seed, "split": split, "classes": list(classes), "noise": noise}
    return _cached("shapes", params, build)


def shapes(n: int, size: int = 32, seed: int = 0, split: str = "train", classes: Sequence[str] = SHAPES,
           noise: float = 0.05) -> tuple[Tensor, Tensor]:
    """n coloured shapes on coloured backgrounds: (images float (n, 3, size, size) in [0, 1], labels int64 (n,)).

    Each class appears n // len(classes) or one more times. Random per image: shape size (radius 18-38% of
    the side), position (fully inside), bright foreground colour, dark background colour, Gaussian noise.
    """
    return to_tensors(shapes_dataset(n, size, seed, split, classes, noise))


# --------------------------------------------------------------------------------------------- CIFAR-10

def _offline_reason() -> str | None:
    """The environment variable that puts Hugging Face offline, as 'NAME=value', or None."""
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        value = os.environ.get(name, "").strip()
        if value.upper() in {"1", "ON", "YES", "TRUE"}:
            return f"{name}={value}"
    return None


def cifar10_dataset(split: str = "train") -> datasets.Dataset:
    """CIFAR-10 from the Hugging Face Hub (`uoft-cs/cifar10`) as a cached image Dataset (for the gpu profile).

    The first call downloads (about 150 MB) and converts; later calls read the cache, offline too. Raises
    RuntimeError naming the cause when the Hub cannot be reached.
    """
    _split_index(split)

    def build() -> datasets.Dataset:
        hint = "Offline, use vitlab.data.shapes() or vitlab.data.digits() instead."
        reason = _offline_reason()
        if reason:
            raise RuntimeError(f"cifar10() downloads {CIFAR10_REPO} from the Hugging Face Hub, but {reason} "
                               f"says this machine is offline, and it is not cached yet. {hint}")
        try:
            hub = datasets.load_dataset(CIFAR10_REPO, split=split, cache_dir=str(data_dir() / "hub"))
        except Exception as err:  # the Hub's errors vary by cause: connection, DNS, proxy, HTTP status
            raise RuntimeError(f"cifar10() could not download {CIFAR10_REPO} from the Hugging Face Hub "
                               f"({type(err).__name__}: {err}). {hint}") from err
        images = np.stack([np.asarray(img.convert("RGB")) for img in hub["img"]]).transpose(0, 3, 1, 2)
        return image_dataset(images, np.asarray(hub["label"]), CIFAR10_CLASSES)

    return _cached("cifar10", {"split": split, "repo": CIFAR10_REPO}, build)


def cifar10(split: str = "train") -> tuple[Tensor, Tensor]:
    """CIFAR-10 (opt-in, `gpu` profile): (images float (N, 3, 32, 32) in [0, 1], labels int64); N = 50000 / 10000."""
    return to_tensors(cifar10_dataset(split))
