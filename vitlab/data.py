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


# ---- 07_detection: scenes of several shapes with boxes and class masks (08_segmentation uses them too) ----

from datasets.features.features import Array2DExtensionType  # noqa: E402

SCENE_CLASSES = SHAPES[:3]
SCENE_RADIUS = (0.10, 0.22)  # an object's half-extent, as a fraction of the image side
SCENE_MAX_HIDDEN = 0.5  # an object may lose at most half of its pixels to the objects drawn over it


def _scene(rng: np.random.Generator, size: int, classes: Sequence[str], max_objects: int, noise: float,
           radius: tuple[float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One scene drawn back to front: image uint8 (size, size, 3), COCO boxes float32 (M, 4) tight around each
    object's visible pixels, labels int64 (M,), mask uint8 (size, size) with 0 = background, k + 1 = class k.

    A pixel belongs to an object when its centre is inside the shape (coverage >= 0.5); an object placed over
    others is redrawn elsewhere (20 tries, then dropped) when it would hide over SCENE_MAX_HIDDEN of one of them.
    """
    bg = _hsv_to_rgb(*rng.uniform((0, 0, 0), (1, 0.6, 0.35), (1, 3)).T)[0]
    pixels = np.broadcast_to(bg.astype(np.float32), (size, size, 3)).copy()
    instance = np.full((size, size), -1)
    labels, areas = [], []
    for _ in range(rng.integers(1, max_objects + 1)):
        for _attempt in range(20):
            label = int(rng.integers(len(classes)))
            r = rng.uniform(*radius) * size
            cx, cy = rng.uniform(r, size - r, 2)
            cover = draw_shapes([classes[label]], [cx], [cy], [r], size)[0]
            inside = cover >= 0.5
            hidden = np.bincount(instance[inside & (instance >= 0)], minlength=len(labels))
            visible = np.bincount(instance[instance >= 0], minlength=len(labels))
            if np.all(visible - hidden >= (1 - SCENE_MAX_HIDDEN) * np.asarray(areas, dtype=float)):
                break
        else:
            continue
        colour = _hsv_to_rgb(*rng.uniform((0, 0.6, 0.7), (1, 1, 1), (1, 3)).T)[0].astype(np.float32)
        pixels += (colour - pixels) * cover[:, :, None]
        instance[inside] = len(labels)
        labels.append(label)
        areas.append(int(inside.sum()))
    pixels += noise * rng.standard_normal(pixels.shape, dtype=np.float32)
    image = np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8)
    boxes = np.zeros((len(labels), 4), dtype=np.float32)
    for j in range(len(labels)):
        rows, cols = np.nonzero(instance == j)
        boxes[j] = cols.min(), rows.min(), cols.max() + 1 - cols.min(), rows.max() + 1 - rows.min()
    labels = np.asarray(labels, dtype=np.int64)
    mask = np.where(instance >= 0, labels[instance] + 1 if len(labels) else 0, 0).astype(np.uint8)
    return image, boxes, labels, mask


def _fixed_shape_array(values: np.ndarray, extension: type) -> pa.ExtensionArray:
    """(N, *shape) numpy -> an Arrow Array2D/Array3D extension column (nested lists, innermost last axis)."""
    storage = pa.array(values.reshape(-1))
    for k in reversed(values.shape[1:]):
        storage = pa.ListArray.from_arrays(pa.array(np.arange(0, len(storage) + 1, k, dtype=np.int32)), storage)
    return pa.ExtensionArray.from_storage(extension(values.shape[1:], str(values.dtype)), storage)


def scenes_dataset(n: int, size: int = 64, seed: int = 0, split: str = "train",
                   classes: Sequence[str] = SCENE_CLASSES, max_objects: int = 4, noise: float = 0.03,
                   radius: tuple[float, float] = SCENE_RADIUS) -> datasets.Dataset:
    """A cached Dataset of n scenes of 1..max_objects coloured shapes that overlap and occlude each other.

    Columns: `image` uint8 (size, size, 3); `boxes` COCO [x, y, w, h] in pixels, tight around each object's
    visible pixels; `labels` (index into `classes`); `mask` uint8 (size, size), 0 = background and k + 1 =
    class k where an object of class k is on top. Objects are listed in drawing order (back to front).
    Each object's half-extent is drawn uniformly from `radius` (fractions of the side). Deterministic in its
    arguments; the "train" and "test" splits use independent random streams.
    """
    which = _split_index(split)
    classes = tuple(classes)
    if set(classes) - set(SHAPES) or len(set(classes)) != len(classes) or not classes or max_objects < 1:
        raise ValueError(f"classes must be distinct names from {SHAPES} and max_objects >= 1, "
                         f"got {classes} and {max_objects}")
    radius = tuple(float(v) for v in radius)
    if not 0 < radius[0] <= radius[1] < 0.5:
        raise ValueError(f"radius must be (low, high) with 0 < low <= high < 0.5, got {radius}")

    def build() -> datasets.Dataset:
        rng = np.random.default_rng([seed, which, 7])
        images, boxes, labels, masks = zip(*(_scene(rng, size, classes, max_objects, noise, radius) for _ in range(n)))
        offsets = pa.array(np.concatenate([[0], np.cumsum([len(b) for b in boxes])]).astype(np.int32))
        flat_boxes = pa.FixedSizeListArray.from_arrays(pa.array(np.concatenate(boxes).reshape(-1)), 4)
        columns = {"image": _fixed_shape_array(np.stack(images), Array3DExtensionType),
                   "boxes": pa.ListArray.from_arrays(offsets, flat_boxes),
                   "labels": pa.ListArray.from_arrays(offsets, pa.array(np.concatenate(labels))),
                   "mask": _fixed_shape_array(np.stack(masks), Array2DExtensionType)}
        features = datasets.Features({
            "image": datasets.Array3D((size, size, 3), "uint8"),
            "boxes": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
            "labels": datasets.List(datasets.ClassLabel(names=list(classes))),
            "mask": datasets.Array2D((size, size), "uint8")})
        table = pa.table(columns).cast(features.arrow_schema)
        return datasets.Dataset(table, info=datasets.DatasetInfo(features=features))

    params = {"n": n, "size": size, "seed": seed, "split": split, "classes": list(classes),
              "max_objects": max_objects, "noise": noise}
    if radius != SCENE_RADIUS:  # the default stays out of the key, so caches built before `radius` existed still count
        params["radius"] = list(radius)
    return _cached("scenes", params, build)


def coco_to_cxcywh(boxes: Tensor, size: int) -> Tensor:
    """COCO boxes (..., 4) [x, y, w, h] in pixels of a size x size image -> DETR's normalised [cx, cy, w, h]."""
    x, y, w, h = boxes.unbind(-1)
    return torch.stack([x + w / 2, y + h / 2, w, h], dim=-1) / size


def scenes(n: int, size: int = 64, seed: int = 0, split: str = "train", classes: Sequence[str] = SCENE_CLASSES,
           max_objects: int = 4, noise: float = 0.03, radius: tuple[float, float] = SCENE_RADIUS
           ) -> tuple[Tensor, list[dict[str, Tensor]], Tensor]:
    """n scenes as tensors: (images float (n, 3, size, size) in [0, 1], targets, masks int64 (n, size, size)).

    targets[i] = {"labels": int64 (M_i,), "boxes": float32 (M_i, 4) normalised cxcywh}, as DETR takes them.
    See `scenes_dataset` for what is drawn; this is the same data, converted.
    """
    ds = scenes_dataset(n, size, seed, split, classes, max_objects, noise, radius)
    images = torch.from_numpy(_array_column(ds, "image")).permute(0, 3, 1, 2).float().div_(255).contiguous()
    masks = torch.from_numpy(_array_column(ds, "mask")).long()
    table = ds.with_format("arrow")[:]
    box_column, label_column = table.column("boxes").combine_chunks(), table.column("labels").combine_chunks()
    offsets = box_column.offsets.to_numpy()
    offsets = offsets - offsets[0]
    boxes = torch.from_numpy(np.array(box_column.flatten().flatten().to_numpy())).view(-1, 4)
    labels = torch.from_numpy(np.array(label_column.flatten().to_numpy())).long()
    targets = [{"labels": labels[a:b], "boxes": coco_to_cxcywh(boxes[a:b], size)}
               for a, b in zip(offsets[:-1], offsets[1:])]
    return images, targets, masks


# ---- 10_beyond: moving-shapes clips, synthetic tones, a tiny VQA set of shape scenes ----

VQA_COLOURS = {"red": (0.92, 0.16, 0.14), "green": (0.18, 0.78, 0.22), "blue": (0.2, 0.38, 1.0),
               "yellow": (0.96, 0.86, 0.12)}
VQA_SHAPES = ("circle", "square", "triangle")
VQA_WORDS = ("is", "there", "a", "what", "colour", "the", "which", "shape", "coloured", *VQA_COLOURS, *VQA_SHAPES)
VQA_ANSWERS = ("no", "yes", *VQA_COLOURS, *VQA_SHAPES)
CLIP_DIRECTIONS = ("right", "left", "down", "up")
TONE_KINDS = ("steady", "rising", "falling", "beeping")


def _matrix_dataset(columns: dict[str, np.ndarray], label: np.ndarray, names: Sequence[str]) -> datasets.Dataset:
    """A Dataset of 2-D arrays as fixed-length list columns (one row per item) and a ClassLabel `label`."""
    table = {k: pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1]) for k, v in columns.items()}
    table["label"] = pa.array(np.asarray(label, dtype=np.int64))
    features = {k: datasets.List(datasets.Value(str(v.dtype)), length=v.shape[1]) for k, v in columns.items()}
    features = datasets.Features({**features, "label": datasets.ClassLabel(names=list(names))})
    return datasets.Dataset(pa.table(table).cast(features.arrow_schema), info=datasets.DatasetInfo(features=features))


def _rows(ds: datasets.Dataset, column: str) -> np.ndarray:
    """A fixed-length list column as one (N, L) numpy array."""
    values = ds.with_format("arrow")[:].column(column).combine_chunks().flatten()
    return np.array(values.to_numpy(zero_copy_only=False)).reshape(len(ds), -1)


def _vqa_question(rng: np.random.Generator, shapes: np.ndarray, colours: np.ndarray) -> tuple[list[str], str]:
    """One question about a scene (its objects' shape and colour indices) and its answer word."""
    names, shape_names = list(VQA_COLOURS), VQA_SHAPES
    unique = [i for i in range(len(colours)) if (colours == colours[i]).sum() == 1]
    kind = rng.integers(3)
    if kind == 0:  # is there a <colour> <shape>? yes half of the time
        if rng.random() < 0.5:
            i = rng.integers(len(shapes))
            return ["is", "there", "a", names[colours[i]], shape_names[shapes[i]]], "yes"
        present = set(zip(colours.tolist(), shapes.tolist()))
        absent = [(c, s) for c in range(len(names)) for s in range(len(shape_names)) if (c, s) not in present]
        c, s = absent[rng.integers(len(absent))]
        return ["is", "there", "a", names[c], shape_names[s]], "no"
    if kind == 2 and unique:  # which shape is coloured <colour>? (asked only of a colour that occurs once)
        i = unique[rng.integers(len(unique))]
        return ["which", "shape", "is", "coloured", names[colours[i]]], shape_names[shapes[i]]
    i = rng.integers(len(shapes))  # what colour is the <shape>? (shapes in a scene are distinct)
    return ["what", "colour", "is", "the", shape_names[shapes[i]]], names[colours[i]]


def _make_vqa(n: int, size: int, seed: int, split: int) -> dict:
    """Scenes of 2 or 3 distinct shapes in distinct quadrants, one five-word question each, and its answer."""
    rng = np.random.default_rng([seed, split, 10])
    counts = rng.integers(2, 4, n)
    shapes = [rng.choice(len(VQA_SHAPES), k, replace=False) for k in counts]
    colours = [rng.integers(len(VQA_COLOURS), size=k) for k in counts]
    quadrants = np.concatenate([rng.choice(4, k, replace=False) for k in counts])
    owner = np.repeat(np.arange(n), counts)
    r = rng.uniform(0.13, 0.2, len(owner)) * size
    jitter = (size / 4 - r)[:, None] * rng.uniform(-1, 1, (len(owner), 2))
    cx = (quadrants % 2 + 0.5) * size / 2 + jitter[:, 0]
    cy = (quadrants // 2 + 0.5) * size / 2 + jitter[:, 1]
    cover = draw_shapes([VQA_SHAPES[s] for s in np.concatenate(shapes)], cx, cy, r, size)
    rgb = np.array(list(VQA_COLOURS.values()), dtype=np.float32)[np.concatenate(colours)]
    pixels = np.broadcast_to(rng.uniform(0.05, 0.3, (n, 1, 1, 1)).astype(np.float32), (n, 3, size, size)).copy()
    for k in range(len(owner)):
        pixels[owner[k]] += (rgb[k][:, None, None] - pixels[owner[k]]) * cover[k]
    pixels += 0.03 * rng.standard_normal(pixels.shape, dtype=np.float32)
    asked = [_vqa_question(rng, s, c) for s, c in zip(shapes, colours)]
    return {"images": np.rint(np.clip(pixels, 0, 1) * 255).astype(np.uint8),
            "question": np.array([[VQA_WORDS.index(w) for w in q] for q, _ in asked], dtype=np.int64),
            "answer": np.array([VQA_ANSWERS.index(a) for _, a in asked], dtype=np.int64)}


def vqa_dataset(n: int, size: int = 32, seed: int = 0, split: str = "train") -> datasets.Dataset:
    """A cached Dataset of n shape scenes with one question each: `image` uint8 (3, size, size), `question`
    (5 word indices into VQA_WORDS) and `label` (index into VQA_ANSWERS). Splits use independent streams."""
    which = _split_index(split)

    def build() -> datasets.Dataset:
        arrays = _make_vqa(n, size, seed, which)
        return image_dataset(arrays["images"], arrays["answer"], VQA_ANSWERS, extra={"question": arrays["question"]})

    return _cached("vqa", {"n": n, "size": size, "seed": seed, "split": split}, build)


def vqa(n: int, size: int = 32, seed: int = 0, split: str = "train") -> tuple[Tensor, Tensor, Tensor]:
    """n scenes and questions: (images float (n, 3, size, size) in [0, 1], questions int64 (n, 5), answers int64 (n,)).

    A scene holds 2 or 3 distinct shapes (circle, square, triangle) in distinct quadrants, each in one of four
    colours. Questions: "is there a <colour> <shape>" (yes/no), "what colour is the <shape>", "which shape is
    coloured <colour>" (asked only when one object has that colour).
    """
    ds = vqa_dataset(n, size, seed, split)
    images, answers = to_tensors(ds)
    return images, torch.from_numpy(_rows(ds, "question")), answers


def vqa_text(question: Tensor) -> str:
    """The words of one question (5,) as a sentence."""
    return " ".join(VQA_WORDS[int(i)] for i in question) + "?"


def _make_clips(n: int, frames: int, size: int, seed: int, split: int) -> dict:
    """Clips of one shape gliding in one of four directions: uint8 (n, 3 * frames, size, size), direction labels."""
    rng = np.random.default_rng([seed, split, 11])
    labels = rng.permutation(np.arange(n) % len(CLIP_DIRECTIONS))
    kinds = rng.choice(np.array(SHAPES[:3]), n)
    r = rng.uniform(0.12, 0.2, n) * size
    speed = rng.uniform(0.5, 1.0, n) * (size - 2 * r) / max(frames - 1, 1)
    step = np.array([(1, 0), (-1, 0), (0, 1), (0, -1)], dtype=np.float64)[labels] * speed[:, None]
    travel = step.T * (frames - 1)  # (2, n): the whole path stays inside [r, size - r]
    start = rng.uniform(r + np.clip(-travel, 0, None), size - r - np.clip(travel, 0, None))
    fg = _hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0.6, 1.0, n), rng.uniform(0.8, 1.0, n)).astype(np.float32)
    bg = rng.uniform(0.05, 0.3, n).astype(np.float32)
    video = np.empty((n, 3, frames, size, size), dtype=np.float32)
    for t in range(frames):
        cover = draw_shapes(kinds, start[0] + step[:, 0] * t, start[1] + step[:, 1] * t, r, size)[:, None]
        video[:, :, t] = bg[:, None, None, None] + (fg[:, :, None, None] - bg[:, None, None, None]) * cover
    video += 0.03 * rng.standard_normal(video.shape, dtype=np.float32)
    return {"images": np.rint(np.clip(video, 0, 1) * 255).astype(np.uint8).reshape(n, 3 * frames, size, size),
            "labels": labels}


def moving_shapes_dataset(n: int, frames: int = 8, size: int = 32, seed: int = 0, split: str = "train"
                          ) -> datasets.Dataset:
    """A cached Dataset of n clips: `image` uint8 (3 * frames, size, size) (colour planes of all frames, in
    order C, T), `label` the direction the shape moves (CLIP_DIRECTIONS)."""
    which = _split_index(split)

    def build() -> datasets.Dataset:
        arrays = _make_clips(n, frames, size, seed, which)
        return image_dataset(arrays["images"], arrays["labels"], CLIP_DIRECTIONS)

    return _cached("clips", {"n": n, "frames": frames, "size": size, "seed": seed, "split": split}, build)


def moving_shapes(n: int, frames: int = 8, size: int = 32, seed: int = 0, split: str = "train"
                  ) -> tuple[Tensor, Tensor]:
    """n clips of a shape moving right, left, down or up: (videos float (n, 3, frames, size, size) in [0, 1],
    direction labels int64 (n,)). The shape stays inside the frame for the whole clip."""
    images, labels = to_tensors(moving_shapes_dataset(n, frames, size, seed, split))
    return images.reshape(n, 3, frames, size, size), labels


def _make_tones(n: int, seconds: float, sample_rate: int, seed: int, split: int) -> dict:
    """Waves (n, samples) float32: a steady tone, a rising or falling chirp, or a beeping tone, plus noise."""
    rng = np.random.default_rng([seed, split, 12])
    labels = rng.permutation(np.arange(n) % len(TONE_KINDS))
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = rng.uniform(0.05, 0.15, n)[:, None] * sample_rate
    f1 = f0 * rng.uniform(2.0, 3.0, n)[:, None]
    sweep = f0 * t + (f1 - f0) * t ** 2 / (2 * seconds)  # instantaneous frequency f0 -> f1, linearly
    phase = np.where(labels[:, None] == 1, sweep, np.where(labels[:, None] == 2, f1 * t - (f1 - f0) * t ** 2
                                                           / (2 * seconds), f0 * t))
    wave = np.sin(2 * np.pi * phase + rng.uniform(0, 2 * np.pi, (n, 1)))
    gate = (np.floor(t * rng.uniform(3, 6, (n, 1)) * 2) % 2 == 0)  # on half of the time, 3 to 6 beeps a second
    wave = np.where(labels[:, None] == 3, wave * gate, wave) + 0.05 * rng.standard_normal(wave.shape)
    return {"wave": wave.astype(np.float32), "labels": labels, "f0": f0[:, 0]}


def tones_dataset(n: int, seconds: float = 1.0, sample_rate: int = 8000, seed: int = 0, split: str = "train"
                  ) -> datasets.Dataset:
    """A cached Dataset of n synthetic sounds: `wave` float32 (seconds * sample_rate,), `label` (TONE_KINDS)."""
    which = _split_index(split)

    def build() -> datasets.Dataset:
        arrays = _make_tones(n, seconds, sample_rate, seed, which)
        return _matrix_dataset({"wave": arrays["wave"]}, arrays["labels"], TONE_KINDS)

    params = {"n": n, "seconds": seconds, "sample_rate": sample_rate, "seed": seed, "split": split}
    return _cached("tones", params, build)


def tones(n: int, seconds: float = 1.0, sample_rate: int = 8000, seed: int = 0, split: str = "train"
          ) -> tuple[Tensor, Tensor]:
    """n synthetic sounds: (waves float (n, seconds * sample_rate), kind labels int64 (n,)). Kinds: a steady
    tone at 5-15% of the sample rate, a chirp rising or falling by a factor 2-3, a tone switched on and off."""
    ds = tones_dataset(n, seconds, sample_rate, seed, split)
    return torch.from_numpy(_rows(ds, "wave")), torch.from_numpy(_array_column(ds, "label")).long()


# ---- 09_clip: procedural image-caption scenes, held-out compositions, zero-shot class names and prompts ----

CAPTION_SHAPES = ("circle", "square", "triangle", "cross")
CAPTION_COLOURS = {"red": 0.0, "yellow": 0.15, "green": 0.33, "blue": 0.62, "purple": 0.78}  # name: hue
CAPTION_SIZES = ("small", "large")
# (colour, shape) pairs that never occur in the "train" and "test" splits: the "heldout" split is made of them.
HELD_OUT_COMPOSITIONS = (("red", "triangle"), ("yellow", "circle"), ("green", "cross"), ("blue", "square"),
                         ("purple", "triangle"))
CAPTIONS_PER_IMAGE = 4
CAPTIONS_GENERATOR = 3  # part of the cache key: bump when the caption scenes change (instead of CACHE_VERSION)
CAPTION_SPLITS = ("train", "test", "heldout")
_OBJECT_COUNTS = {1: [1.0], 2: [0.5, 0.5], 3: [0.4, 0.3, 0.3]}  # P(1, 2, 3 objects) by max_objects
SHAPE_TEMPLATES = ("a photo of a {}.", "a {}", "a picture of a {}.", "a drawing of a {}.", "a {} shape",
                   "there is a {} in the picture.")
DIGIT_CLASSNAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
DIGIT_TEMPLATES = ("a photo of the number {}.", "a handwritten {}.", "the digit {}")


def _object_phrase(size: str, colour: str, shape: str) -> str:
    return f"{size} {colour} {shape}"


def _scene_captions(objects: list[tuple[str, str, str]], relation: str | None) -> list[str]:
    """CAPTIONS_PER_IMAGE phrasings of one scene; the first is canonical (equal scenes give equal first captions).

    objects: (size, colour, shape), ordered left to right (three objects), or with the left / upper one first
    (two objects, relation "to the left of" or "above").
    """
    words = [_object_phrase(*o) for o in objects]
    if len(objects) == 1:
        size, colour, shape = objects[0]
        a = words[0]
        return [f"a {a}", f"a photo of a {a}", f"a {colour} {shape}", f"a {size} {shape} in {colour}"]
    if len(objects) == 2:
        a, b = words
        inverse = {"to the left of": "to the right of", "above": "below"}[relation]
        return [f"a {a} {relation} a {b}", f"a {b} {inverse} a {a}", f"a {a} and a {b}",
                f"a photo of a {a} {relation} a {b}"]
    a, b, c = words
    return [f"a {a}, a {b} and a {c}", f"a {a}, a {b} and a {c} from left to right",
            f"three shapes: a {a}, a {b} and a {c}", f"a photo of a {a}, a {b} and a {c}"]


def _place(rng: np.random.Generator, radii: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Centres (cx, cy) for objects of these radii, apart from each other, and the relation of two objects.

    Two objects are placed so that one axis dominates (|d| along it at least 1.5 times the other), three so that
    their x-centres differ by 3 pixels or more (the captions read them left to right). Candidates are drawn 64 at
    a time and the first that qualifies is kept.
    """
    k = len(radii)
    while True:
        cx, cy = (rng.uniform(radii, size - radii, (64, k)) for _ in range(2))
        dx, dy = cx[:, :, None] - cx[:, None], cy[:, :, None] - cy[:, None]
        gap = np.hypot(dx, dy) - (radii[:, None] + radii[None]) - 1.5 + 2 * size * np.eye(k)
        ok = (gap > 0).all(axis=(1, 2))
        if k == 2:
            ax, ay = np.abs(dx[:, 0, 1]), np.abs(dy[:, 0, 1])
            ok &= (ax >= 1.5 * ay) | (ay >= 1.5 * ax)
        elif k == 3:
            ok &= np.diff(np.sort(cx, axis=1), axis=1).min(axis=1) >= 3
        if ok.any():
            i = int(ok.argmax())
            if k != 2:
                return cx[i], cy[i], None
            horizontal = abs(cx[i, 1] - cx[i, 0]) >= 1.5 * abs(cy[i, 1] - cy[i, 0])
            return cx[i], cy[i], "to the left of" if horizontal else "above"


def _make_scenes(n: int, size: int, seed: int, split: int, max_objects: int, noise: float) -> dict:
    """The arrays of a caption set: images uint8 (n, 3, size, size), captions (n, CAPTIONS_PER_IMAGE), and per
    object (padded with -1 to max_objects, ordered as in the captions) its shape, colour and size indices and its
    centre and radius in pixels."""
    rng = np.random.default_rng([seed, 9, split])
    colours = list(CAPTION_COLOURS)
    held = {(colours.index(c), CAPTION_SHAPES.index(s)) for c, s in HELD_OUT_COMPOSITIONS}
    allowed = [(c, s) for c in range(len(colours)) for s in range(len(CAPTION_SHAPES)) if (c, s) not in held]
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    captions, table = [], np.full((n, 3, max_objects), -1, dtype=np.int64)
    geometry = np.full((n, 3, max_objects), -1.0, dtype=np.float32)
    for i in range(n):
        k = int(rng.choice(np.arange(1, max_objects + 1), p=_OBJECT_COUNTS[max_objects]))
        pairs = [sorted(held)[int(rng.integers(len(held)))] if split == 2 and j == 0 else
                 allowed[int(rng.integers(len(allowed)))] for j in range(k)]
        large = rng.random(k) < 0.5
        low, high = (0.24, 0.34) if k == 1 else (0.18, 0.22)
        radii = np.where(large, rng.uniform(low, high, k), rng.uniform(0.12, 0.16, k)) * size
        cx, cy, relation = _place(rng, radii, size)
        order = np.argsort(cy) if relation == "above" else np.argsort(cx)
        bg = _hsv_to_rgb(rng.uniform(0, 1, 1), rng.uniform(0.0, 0.6, 1), rng.uniform(0.0, 0.35, 1))[0]
        pixels = np.broadcast_to(bg[:, None, None], (3, size, size)).astype(np.float32)
        hues = np.array([CAPTION_COLOURS[colours[c]] for c, _ in pairs]) + rng.uniform(-0.03, 0.03, k)
        fg = _hsv_to_rgb(hues % 1, rng.uniform(0.75, 1.0, k), rng.uniform(0.8, 1.0, k)).astype(np.float32)
        for j in range(k):
            cover = draw_shapes([CAPTION_SHAPES[pairs[j][1]]], cx[j:j + 1], cy[j:j + 1], radii[j:j + 1], size)[0]
            pixels = pixels + (fg[j][:, None, None] - pixels) * cover
        pixels = pixels + noise * rng.standard_normal(pixels.shape, dtype=np.float32)
        images[i] = np.rint(np.clip(pixels, 0, 1) * 255)
        objects = [(CAPTION_SIZES[int(large[j])], colours[pairs[j][0]], CAPTION_SHAPES[pairs[j][1]]) for j in order]
        captions.append(_scene_captions(objects, relation))
        table[i, :, :k] = np.array([[CAPTION_SHAPES.index(o[2]) for o in objects],
                                    [colours.index(o[1]) for o in objects],
                                    [CAPTION_SIZES.index(o[0]) for o in objects]])
        geometry[i, :, :k] = np.stack([cx[order], cy[order], radii[order]])
    return {"images": images, "captions": captions, "shape": table[:, 0], "colour": table[:, 1],
            "size": table[:, 2], "cx": geometry[:, 0], "cy": geometry[:, 1], "radius": geometry[:, 2]}


def captions_dataset(n: int, size: int = 32, seed: int = 0, split: str = "train", max_objects: int = 3,
                     noise: float = 0.04) -> datasets.Dataset:
    """A cached Dataset of n captioned scenes of one to `max_objects` (<= 3) coloured shapes.

    Columns: `image` uint8 (3, size, size); `label`, the shape of the first object (index into CAPTION_SHAPES);
    `captions`, CAPTIONS_PER_IMAGE phrasings ("a small red circle above a large blue square"), the first
    canonical; per object, in the captions' order, (max_objects,) columns `shape`, `colour`, `size` (indices) and
    `cx`, `cy`, `radius` (pixels), -1 where there is none. Splits: "train" and
    "test" (independent streams, never a HELD_OUT_COMPOSITIONS pair), "heldout" (every scene holds a
    held-out pair; with max_objects=1 it is the scene's only object). Deterministic in all arguments.
    """
    if split not in CAPTION_SPLITS:
        raise ValueError(f"split must be one of {CAPTION_SPLITS}, not {split!r}")
    if not 1 <= max_objects <= 3:
        raise ValueError(f"max_objects must be 1, 2 or 3, got {max_objects}")

    def build() -> datasets.Dataset:
        arrays = _make_scenes(n, size, seed, CAPTION_SPLITS.index(split), max_objects, noise)
        extra = {k: arrays[k] for k in ("shape", "colour", "size", "cx", "cy", "radius")}
        ds = image_dataset(arrays["images"], arrays["shape"][:, 0], CAPTION_SHAPES, extra=extra)
        return ds.add_column("captions", arrays["captions"])

    params = {"n": n, "size": size, "seed": seed, "split": split, "max_objects": max_objects, "noise": noise,
              "generator": CAPTIONS_GENERATOR}
    return _cached("captions", params, build)


def captions(n: int, size: int = 32, seed: int = 0, split: str = "train", max_objects: int = 3,
             noise: float = 0.04) -> tuple[Tensor, list[list[str]], datasets.Dataset]:
    """(images float (n, 3, size, size) in [0, 1], captions: n lists of CAPTIONS_PER_IMAGE strings, the Dataset).

    See `captions_dataset`; the Dataset carries the per-object `shape`, `colour` and `size` columns.
    """
    ds = captions_dataset(n, size, seed, split, max_objects, noise)
    return to_tensors(ds)[0], [list(c) for c in ds["captions"]], ds


def caption_matches(captions_a: Sequence[str], captions_b: Sequence[str] | None = None) -> Tensor:
    """Bool (len(a), len(b)): True where two canonical captions are equal, i.e. the scenes are described alike."""
    captions_b = captions_a if captions_b is None else captions_b
    index = {c: i for i, c in enumerate(dict.fromkeys([*captions_a, *captions_b]))}
    a = torch.tensor([index[c] for c in captions_a])
    b = torch.tensor([index[c] for c in captions_b])
    return a[:, None] == b[None, :]


def composition_classnames() -> list[str]:
    """Every "colour shape" pair, colours outer: the classes of zero-shot colour-and-shape classification."""
    return [f"{c} {s}" for c in CAPTION_COLOURS for s in CAPTION_SHAPES]
