"""vitlab.data scenes (07_detection, 08_segmentation): boxes tight around each object's visible pixels, masks
that agree with the boxes and with the drawn pixels, determinism, disjoint splits, COCO vs cxcywh."""
import numpy as np
import pytest
import torch

import vitlab.data as D

N = 200


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    """Every test caches into one temporary folder (never the repository's data/)."""
    path = tmp_path_factory.getbasetemp() / "vitlab-data"
    monkeypatch.setenv("VITLAB_DATA", str(path))
    return path


def arrays(ds):
    """(images uint8 (N, H, W, 3), list of COCO boxes (M, 4), list of labels (M,), masks uint8 (N, H, W))."""
    boxes = [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in ds["boxes"]]
    images, masks = D._array_column(ds, "image"), D._array_column(ds, "mask")
    return images, boxes, [np.asarray(x, dtype=np.int64) for x in ds["labels"]], masks


def test_columns_dtypes_and_ranges():
    ds = D.scenes_dataset(N, size=48, max_objects=3)
    images, boxes, labels, masks = arrays(ds)
    assert images.shape == (N, 48, 48, 3) and images.dtype == np.uint8
    assert masks.shape == (N, 48, 48) and masks.dtype == np.uint8
    assert ds.features["labels"].feature.names == list(D.SHAPES[:3])
    counts = np.array([len(x) for x in labels])
    assert counts.min() >= 1 and counts.max() <= 3 and len(np.unique(counts)) == 3
    assert np.bincount(np.concatenate(labels), minlength=3).min() > 0.25 * counts.sum() / 3
    assert set(np.unique(masks)) == {0, 1, 2, 3}
    for b in boxes:
        assert (b[:, :2] >= 0).all() and (b[:, 2:] >= 1).all() and (b[:, :2] + b[:, 2:] <= 48).all()
        assert np.array_equal(b, np.round(b))  # whole pixels: [first column, first row, width, height]


def test_boxes_are_tight_and_masks_agree_with_them():
    images, boxes, labels, masks = arrays(D.scenes_dataset(N))
    for box_list, label_list, mask in zip(boxes, labels, masks):
        covered = np.zeros(mask.shape, dtype=bool)
        for (x, y, w, h), k in zip(box_list.astype(int), label_list):
            inside = mask[y:y + h, x:x + w] == k + 1
            # every edge of the box holds a pixel of the object's class: nothing smaller would contain it
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            covered[y:y + h, x:x + w] |= mask[y:y + h, x:x + w] == k + 1
        assert np.array_equal(covered, mask > 0)  # no labelled pixel outside the boxes of its class


def test_single_object_box_and_mask_match_the_drawn_pixels():
    """Without noise, coverage can be read back from the pixels: bg + (fg - bg) * coverage."""
    images, boxes, labels, masks = arrays(D.scenes_dataset(60, max_objects=1, noise=0.0, seed=3))
    for image, box, mask in zip(images.astype(float), boxes, masks):
        (x, y, w, h), = box.astype(int)
        bg, fg = image[0, 0], image[y + h // 2, x + w // 2]
        c = np.argmax(np.abs(fg - bg))
        coverage = (image[..., c] - bg[c]) / (fg[c] - bg[c])
        clear = np.abs(coverage - 0.5) > 0.1  # away from rounding at the edge
        assert np.array_equal((mask > 0)[clear], (coverage >= 0.5)[clear])
        rows, cols = np.nonzero(coverage > 0.6)
        assert x <= cols.min() <= x + 1 and x + w - 2 <= cols.max() <= x + w - 1
        assert y <= rows.min() <= y + 1 and y + h - 2 <= rows.max() <= y + h - 1
        assert (mask > 0).sum() == (mask[y:y + h, x:x + w] > 0).sum()


def test_objects_overlap_and_the_mask_shows_the_occlusion():
    images, boxes, labels, masks = arrays(D.scenes_dataset(N))
    overlapping = 0
    for box_list, mask in zip(boxes, masks):
        x0, y0 = box_list[:, 0], box_list[:, 1]
        x1, y1 = x0 + box_list[:, 2], y0 + box_list[:, 3]
        iw = np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None])
        ih = np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None])
        overlap = (np.clip(iw, 0, None) * np.clip(ih, 0, None))[np.triu_indices(len(box_list), 1)]
        overlapping += (overlap > 0).any()
    assert 0.2 * N < overlapping < N


def test_deterministic_from_the_seed_and_not_from_the_cache(tmp_path, monkeypatch):
    first = arrays(D.scenes_dataset(50, seed=5))
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "fresh"))  # rebuilt, not read back
    second = arrays(D.scenes_dataset(50, seed=5))
    other = arrays(D.scenes_dataset(50, seed=6))
    for a, b in zip(first, second):
        assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(first[0], other[0])


def test_train_and_test_splits_are_disjoint():
    train = arrays(D.scenes_dataset(N, split="train"))[0]
    test = arrays(D.scenes_dataset(N, split="test"))[0]
    seen = {img.tobytes() for img in train}
    assert len(seen) == N and not any(img.tobytes() in seen for img in test)


def test_tensors_are_the_dataset_converted_to_normalised_cxcywh():
    ds = D.scenes_dataset(N, size=64)
    images, boxes, labels, masks = arrays(ds)
    x, targets, m = D.scenes(N, size=64)
    assert x.shape == (N, 3, 64, 64) and x.dtype == torch.float32 and m.dtype == torch.int64
    assert torch.equal(x, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    assert torch.equal(m, torch.from_numpy(masks).long())
    for t, b, k in zip(targets, boxes, labels):
        assert t["labels"].dtype == torch.int64 and torch.equal(t["labels"], torch.from_numpy(k))
        cx, cy, w, h = (t["boxes"] * 64).unbind(-1)
        back = np.stack([cx - w / 2, cy - h / 2, w, h], axis=-1)  # cxcywh -> COCO by hand
        assert np.allclose(back, b, atol=1e-4)
        assert ((t["boxes"] > 0) & (t["boxes"] <= 1)).all()


def test_coco_to_cxcywh_hand_worked():
    got = D.coco_to_cxcywh(torch.tensor([[8.0, 16.0, 32.0, 16.0], [0.0, 0.0, 64.0, 64.0]]), 64)
    assert torch.allclose(got, torch.tensor([[0.375, 0.375, 0.5, 0.25], [0.5, 0.5, 1.0, 1.0]]))


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="distinct"):
        D.scenes_dataset(4, classes=("circle", "hexagon"))
    with pytest.raises(ValueError, match="split"):
        D.scenes_dataset(4, split="val")


def test_radius_sets_the_object_sizes():
    small = arrays(D.scenes_dataset(100, size=64, radius=(0.05, 0.08), max_objects=2))[1]
    large = arrays(D.scenes_dataset(100, size=64, radius=(0.2, 0.3), max_objects=2))[1]
    small, large = np.concatenate(small), np.concatenate(large)
    assert small[:, 2:].max() <= 2 * 0.08 * 64 + 1 and large[:, 2:].max() <= 2 * 0.3 * 64 + 1
    assert np.median(large[:, 2:]) > 2 * np.median(small[:, 2:])
    with pytest.raises(ValueError, match="radius"):
        D.scenes_dataset(4, radius=(0.3, 0.2))
