"""vitlab.data: photos against their packages, the digits split against scikit-learn, the shapes generator
against closed-form areas and its own metadata, determinism, the cache, and CIFAR-10's offline message."""
import math

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits, load_sample_image

import vitlab.data as D


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    """Every test caches into one temporary folder (never the repository's data/)."""
    path = tmp_path_factory.getbasetemp() / "vitlab-data"
    monkeypatch.setenv("VITLAB_DATA", str(path))
    return path


# ------------------------------------------------------------------------------------------------ photos

@pytest.mark.parametrize("name", D.PHOTOS)
def test_photo_is_the_packaged_picture(name):
    img = D.photo(name)
    if name in D.SKLEARN_PHOTOS:
        raw = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        raw = getattr(skimage.data, name)()
    raw = np.repeat(raw[..., None], 3, axis=-1) if raw.ndim == 2 else raw
    assert img.dtype == torch.float32 and img.shape == (3, *raw.shape[:2])
    assert 0 <= img.min() and img.max() <= 1 and img.std() > 0.05
    assert torch.equal(img, torch.from_numpy(np.array(raw)).permute(2, 0, 1).float() / 255)


def test_photo_resize_is_a_centre_square():
    img = D.photo("chelsea", size=64)
    assert img.shape == (3, 64, 64) and 0 <= img.min() and img.max() <= 1
    full = D.photo("chelsea")  # 300 x 451: the centre square is columns 75..375
    assert torch.allclose(img.mean(dim=(1, 2)), full[:, :, 75:375].mean(dim=(1, 2)), atol=0.01)


def test_unknown_photo_names_the_choices():
    with pytest.raises(ValueError, match="astronaut"):
        D.photo("mona_lisa")


# ------------------------------------------------------------------------------------------------ digits

def test_digits_split_sizes_dtypes_and_values():
    raw = load_digits()
    train, test = D.digits("train"), D.digits("test")
    assert train[0].shape == (1437, 1, 8, 8) and test[0].shape == (360, 1, 8, 8)
    for images, labels in (train, test):
        assert images.dtype == torch.float32 and labels.dtype == torch.int64
        assert images.min() == 0 and images.max() == 1
    # against scikit-learn itself, through the rows the split names
    train_idx, test_idx = D.digits_split(0)
    assert torch.equal(test[0], torch.from_numpy(raw.images[test_idx, None] / 16).float())
    assert torch.equal(train[1], torch.from_numpy(raw.target[train_idx]))
    assert np.array_equal(D.digits_dataset("test")["index"][:], test_idx)


def test_digits_split_is_a_stratified_partition():
    target = load_digits().target
    train_idx, test_idx = D.digits_split(0)
    assert len(np.intersect1d(train_idx, test_idx)) == 0
    assert np.array_equal(np.sort(np.concatenate([train_idx, test_idx])), np.arange(len(target)))
    assert np.bincount(target[test_idx]).tolist() == [36] * 10
    assert torch.bincount(D.digits("test")[1]).tolist() == [36] * 10
    # and by content (the 1,797 digits are all distinct): no test image is also a training image
    train_images = {img.numpy().tobytes() for img in D.digits("train")[0]}
    assert not any(img.numpy().tobytes() in train_images for img in D.digits("test")[0])


def test_digits_split_is_fixed_by_its_seed():
    assert all(np.array_equal(a, b) for a, b in zip(D.digits_split(0), D.digits_split(0)))
    assert not np.array_equal(D.digits_split(0)[1], D.digits_split(1)[1])
    with pytest.raises(ValueError, match="split"):
        D.digits("validation")


# ------------------------------------------------------------------------------------------------ shapes

@pytest.mark.parametrize("kind,area", [("circle", math.pi), ("square", 4.0), ("diamond", 2.0), ("triangle", 2.0),
                                       ("cross", 20 / 9), ("ring", math.pi * (1 - 0.55 ** 2))])
def test_shape_areas_match_closed_form(kind, area):
    r = 40.0
    cover = D.draw_shapes([kind], [50.0], [50.0], [r], size=100)
    assert cover.shape == (1, 100, 100) and cover.min() >= 0 and cover.max() <= 1
    assert cover.sum() == pytest.approx(area * r * r, rel=0.01)


def test_shapes_shapes_dtypes_ranges_and_balance():
    images, labels = D.shapes(301, seed=0)
    assert images.shape == (301, 3, 32, 32) and images.dtype == torch.float32
    assert labels.shape == (301,) and labels.dtype == torch.int64
    assert images.min() >= 0 and images.max() <= 1
    counts = torch.bincount(labels, minlength=len(D.SHAPES))
    assert len(counts) == len(D.SHAPES) and counts.max() - counts.min() <= 1
    small, _ = D.shapes(5, size=48, seed=0)
    assert small.shape == (5, 3, 48, 48)


def test_shapes_are_deterministic_from_the_seed(tmp_path, monkeypatch):
    first = D.shapes(64, seed=3)
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "elsewhere"))  # built again, not read back
    again = D.shapes(64, seed=3)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    other = D.shapes(64, seed=4)
    assert not torch.equal(first[0], other[0]) and not torch.equal(first[1], other[1])
    test_split = D.shapes(64, seed=3, split="test")
    assert not torch.equal(first[0], test_split[0])


def test_each_shape_lies_in_its_box_on_a_flat_background():
    ds = D.shapes_dataset(60, size=32, seed=1, noise=0.0)
    images, labels = D.to_tensors(ds)
    yy, xx = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    for img, label, cx, cy, r, colour in zip(images, labels, ds["cx"][:], ds["cy"][:], ds["radius"][:],
                                             ds["colour"][:]):
        outside = ((xx - cx).abs() > r + 1) | ((yy - cy).abs() > r + 1)
        background = img[:, outside]
        assert (background - background[:, :1]).abs().max() <= 1 / 255  # one flat colour outside the box
        if D.SHAPES[label] != "ring":  # the centre pixel is inside every shape but the ring
            centre = img[:, int(cy), int(cx)]
            assert torch.allclose(centre, torch.tensor(colour), atol=1 / 255)


def test_shapes_class_subset_and_bad_names():
    images, labels = D.shapes(40, classes=("circle", "square"))
    assert set(labels.tolist()) == {0, 1}
    assert D.shapes_dataset(40, classes=("circle", "square")).features["label"].names == ["circle", "square"]
    with pytest.raises(ValueError, match="circle"):
        D.shapes(10, classes=("circle", "hexagon"))


def test_shapes_dataset_is_a_hugging_face_dataset():
    ds = D.shapes_dataset(50, seed=2)
    assert isinstance(ds, datasets.Dataset) and len(ds) == 50
    assert ds.features["label"].names == list(D.SHAPES)
    assert ds.features["image"].shape == (3, 32, 32)
    images, labels = D.to_tensors(ds)
    assert torch.equal(images[7], torch.tensor(ds[7]["image"], dtype=torch.float32) / 255)
    assert labels[7].item() == ds[7]["label"]


def test_generating_ten_thousand_shapes_is_fast():
    import time

    start = time.perf_counter()
    arrays = D._make_shapes(10_000, 32, 0, 0, D.SHAPES, 0.05)
    assert arrays["images"].shape == (10_000, 3, 32, 32)
    assert time.perf_counter() - start < 10


# ------------------------------------------------------------------------------------------------- cache

def test_second_call_reads_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path))
    first = D.shapes(100, seed=5)
    entries = list(tmp_path.iterdir())
    assert len(entries) == 1 and entries[0].name.startswith("shapes-v")

    def no_rebuild(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(D, "_make_shapes", no_rebuild)
    again = D.shapes(100, seed=5)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    with pytest.raises(AssertionError, match="cache"):  # another parameter is another entry
        D.shapes(100, seed=5, noise=0.1)
    monkeypatch.setattr(D, "CACHE_VERSION", "test")  # so is another version
    with pytest.raises(AssertionError, match="cache"):
        D.shapes(100, seed=5)


def test_an_unwritable_cache_still_gives_the_data(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("VITLAB_DATA", str(blocker / "cache"))
    images, labels = D.shapes(20, seed=0)
    assert images.shape == (20, 3, 32, 32)


def test_loader_batches_everything_once_in_a_seeded_order():
    data = D.shapes(70, seed=0)
    first = list(D.loader(data, batch_size=32, seed=1))
    assert [len(y) for _, y in first] == [32, 32, 6]
    assert sorted(torch.cat([y for _, y in first]).tolist()) == sorted(data[1].tolist())
    again = list(D.loader(data, batch_size=32, seed=1))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, again))
    from_dataset = next(iter(D.loader(D.shapes_dataset(70, seed=0), batch_size=32, shuffle=False)))
    assert torch.equal(from_dataset[0], data[0][:32])


# --------------------------------------------------------------------------------------------- CIFAR-10

@pytest.mark.parametrize("variable", ["HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"])
def test_cifar10_offline_is_a_clear_error(variable, monkeypatch):
    monkeypatch.setenv(variable, "1")

    def no_network(*args, **kwargs):
        raise AssertionError("tried the network")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    with pytest.raises(RuntimeError, match=f"{variable}=1.*offline"):
        D.cifar10("test")


def test_cifar10_download_failure_names_the_cause(monkeypatch):
    for variable in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)

    def unreachable(*args, **kwargs):
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    with pytest.raises(RuntimeError, match="ConnectionError: no route"):
        D.cifar10("test")


def test_cifar10_converts_and_caches_the_hub_dataset(monkeypatch):
    for variable in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=D.CIFAR10_CLASSES)})
    hub = datasets.Dataset.from_dict({"img": [Image.fromarray(p) for p in pixels], "label": [3, 1, 4, 1]},
                                     features=features)
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: hub)
    images, labels = D.cifar10("train")
    assert torch.equal(images, torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255)
    assert labels.tolist() == [3, 1, 4, 1]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # now cached: no network needed
    assert torch.equal(D.cifar10("train")[0], images)
