"""The caption set of vitlab.data: deterministic, held-out compositions kept out, and every caption true to its
image (checked on the pixels and on the stored geometry, not on the generator's own bookkeeping)."""
from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch

from vitlab import data


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    import os

    old = os.environ.get("VITLAB_DATA")
    os.environ["VITLAB_DATA"] = str(tmp_path_factory.mktemp("captions_cache"))
    try:
        yield {split: data.captions(120, split=split) for split in data.CAPTION_SPLITS}
    finally:
        if old is None:
            del os.environ["VITLAB_DATA"]
        else:
            os.environ["VITLAB_DATA"] = old


def _objects(ds, i):
    """(shape, colour, size, cx, cy, radius) of each object of scene i, in caption order."""
    cols = [np.asarray(ds[i][c]) for c in ("shape", "colour", "size", "cx", "cy", "radius")]
    return [tuple(col[j] for col in cols) for j in range(len(cols[0])) if cols[0][j] >= 0]


def test_deterministic_cached_and_splits_differ(scenes):
    images, captions, ds = scenes["train"]
    again_images, again_captions, _ = data.captions(120, split="train")  # read back from the cache
    assert torch.equal(images, again_images) and captions == again_captions
    fresh = data._make_scenes(120, 32, 0, 0, 3, 0.04)  # built again, not read from the cache
    assert np.array_equal(fresh["images"], (images * 255).round().to(torch.uint8).numpy())
    assert not torch.equal(images, scenes["test"][0])
    assert images.shape == (120, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert all(len(c) == data.CAPTIONS_PER_IMAGE for c in captions)


def test_held_out_compositions_never_in_train_or_test_and_always_in_heldout(scenes):
    held = {f"{c} {s}" for c, s in data.HELD_OUT_COMPOSITIONS}
    for split in ("train", "test"):
        for caps in scenes[split][1]:
            for caption in caps:
                assert not any(h in caption for h in held), caption
    colours, shapes = list(data.CAPTION_COLOURS), data.CAPTION_SHAPES
    for i in range(len(scenes["heldout"][1])):
        pairs = [(colours[c], shapes[s]) for s, c, *_ in _objects(scenes["heldout"][2], i)]
        assert any(pair in data.HELD_OUT_COMPOSITIONS for pair in pairs)


def test_captions_name_the_objects_and_their_layout(scenes):
    colours, shapes = list(data.CAPTION_COLOURS), data.CAPTION_SHAPES
    for split in data.CAPTION_SPLITS:
        _, captions, ds = scenes[split]
        for i, caps in enumerate(captions):
            objects = _objects(ds, i)
            phrases = [f"{data.CAPTION_SIZES[z]} {colours[c]} {shapes[s]}" for s, c, z, *_ in objects]
            first = caps[0]
            start = 0
            for phrase in phrases:  # named in the stored order
                start = first.index(phrase, start) + len(phrase)
            cx, cy = [o[3] for o in objects], [o[4] for o in objects]
            if len(objects) == 2:
                if "to the left of" in first:
                    assert cx[0] < cx[1] and abs(cx[1] - cx[0]) >= 1.5 * abs(cy[1] - cy[0])
                else:
                    assert " above " in first
                    assert cy[0] < cy[1] and abs(cy[1] - cy[0]) >= 1.5 * abs(cx[1] - cx[0])
            if len(objects) == 3:
                assert cx == sorted(cx)
            radii = [o[5] for o in objects]
            for (s, c, z, *_), r in zip(objects, radii):
                assert (r > 0.165 * 32) == bool(z)  # "large" objects are larger than every "small" one


def test_the_colour_word_matches_the_pixels(scenes):
    for split in ("train", "heldout"):
        images, _, ds = scenes[split]
        for i in range(40):
            for shape, colour, _, cx, cy, r in _objects(ds, i):
                x, y = int(cx), int(cy)  # the centre pixel is inside every shape (cross, triangle included)
                rgb = images[i, :, y, x].tolist()
                hue = colorsys.rgb_to_hsv(*rgb)[0]
                want = list(data.CAPTION_COLOURS.values())[colour]
                assert min(abs(hue - want), 1 - abs(hue - want)) < 0.08, (split, i, rgb)


def test_caption_matches_and_class_names():
    m = data.caption_matches(["a", "b", "a"], ["a", "c"])
    assert m.tolist() == [[True, False], [False, False], [True, False]]
    names = data.composition_classnames()
    assert len(names) == len(data.CAPTION_COLOURS) * len(data.CAPTION_SHAPES) == len(set(names))
    assert all("{}" in t for t in (*data.SHAPE_TEMPLATES, *data.DIGIT_TEMPLATES))
    assert len(data.DIGIT_CLASSNAMES) == 10


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        data.captions_dataset(4, split="val")
    with pytest.raises(ValueError):
        data.captions_dataset(4, max_objects=4)
