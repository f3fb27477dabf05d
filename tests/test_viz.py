"""vitlab.viz and vitlab.widgets: figures have the panels asked for and show exactly the data given."""
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from vitlab import viz, widgets  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_attention_heatmap_shows_the_matrix_with_labels():
    w = torch.rand(3, 5).softmax(-1)
    fig = viz.attention_heatmap(w, ["a", "b", "c"], list("vwxyz"), title="t", annotate=True)
    ax = fig.axes[0]
    assert len(fig.axes) == 2  # the heatmap and its colour bar
    assert len(ax.images) == 1
    np.testing.assert_allclose(ax.images[0].get_array(), w.numpy(), rtol=1e-6)
    assert [t.get_text() for t in ax.get_xticklabels()] == list("vwxyz")
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    assert len(ax.texts) == 15
    assert ax.get_title() == "t"


def test_attention_heatmap_draws_into_a_given_axes_and_takes_grad_tensors():
    fig, axes = plt.subplots(1, 2)
    w = torch.rand(4, 4, requires_grad=True)
    out = viz.attention_heatmap(w, ax=axes[1], colorbar=False)
    assert out is fig
    assert len(axes[0].images) == 0 and len(axes[1].images) == 1
    np.testing.assert_allclose(axes[1].images[0].get_array(), w.detach().numpy(), rtol=1e-6)


def test_attention_heatmap_refuses_a_stack():
    with pytest.raises(ValueError):
        viz.attention_heatmap(torch.rand(2, 3, 3))


def test_heatmap_grid_one_image_per_map_and_unused_cells_removed():
    maps = torch.rand(6, 4, 5)
    fig = viz.heatmap_grid(maps, [f"head {i}" for i in range(6)], ncols=4)
    images = [im for ax in fig.axes for im in ax.images]
    assert len(images) == 6
    assert len(fig.axes) == 6 + 1  # six panels (two of the 2x4 grid removed) and one shared colour bar
    for im, m in zip(images, maps):
        np.testing.assert_allclose(im.get_array(), m.numpy(), rtol=1e-6)
    assert images[0].get_clim() == images[5].get_clim()
    assert fig.axes[2].get_title() == "head 2"


def test_heatmap_grid_annotates_every_cell():
    fig = viz.heatmap_grid(torch.arange(12.0).reshape(2, 2, 3), annotate="{:.0f}")
    assert [t.get_text() for t in fig.axes[1].texts] == [str(v) for v in range(6, 12)]


def test_heatmap_grid_takes_maps_of_different_shapes_without_a_shared_scale():
    fig = viz.heatmap_grid([np.eye(3), np.ones((2, 4))], shared_scale=False)
    assert [ax.images[0].get_array().shape for ax in fig.axes] == [(3, 3), (2, 4)]


def test_line_plot_one_line_per_series_with_styles_and_log_axes():
    x = [1, 2, 4, 8]
    fig = viz.line_plot(x, {"a": [1, 2, 3, 4], "b": torch.tensor([1.0, float("nan"), 3, 4])},
                        styles={"b": "k--"}, logx=True, logy=True, xlabel="n", ylabel="s")
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.lines] == ["a", "b"]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [1, 2, 3, 4])
    assert ax.lines[1].get_linestyle() == "--"
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert ax.get_xlabel() == "n"
    fig.canvas.draw()
    shown = [t.get_text() for t in ax.get_xticklabels() if x[0] <= t.get_position()[0] <= x[-1]]
    assert shown == ["1", "2", "4", "8"]  # plain powers of two, each once
    assert not [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]


def test_line_plot_refuses_mismatched_lengths():
    with pytest.raises(ValueError):
        viz.line_plot([1, 2, 3], {"a": [1, 2]})


def test_weights_bar_heights_and_highlight():
    w = torch.tensor([0.1, 0.6, 0.3])
    fig = viz.weights_bar(w, ["x", "y", "z"], highlight=1)
    bars = fig.axes[0].patches
    np.testing.assert_allclose([b.get_height() for b in bars], w.numpy(), rtol=1e-6)
    assert bars[1].get_facecolor() != bars[0].get_facecolor()


def test_patch_weights_overlay_draws_the_photo_then_the_weight_grid():
    image = np.random.default_rng(0).integers(0, 256, (40, 60, 3)).astype(np.uint8)
    w = torch.rand(6).softmax(-1)
    fig = viz.patch_weights_overlay(image, w, (2, 3), query=4)
    ax = fig.axes[0]
    assert len(ax.images) == 2
    np.testing.assert_allclose(ax.images[1].get_array(), w.reshape(2, 3).numpy(), rtol=1e-6)
    frame = ax.patches[0]
    assert (frame.get_x(), frame.get_y(), frame.get_width(), frame.get_height()) == (20, 20, 20, 20)


def test_patch_features_are_standardised_tokens_of_the_cropped_photo():
    image = np.random.default_rng(1).integers(0, 256, (65, 95, 3)).astype(np.uint8)
    feats, grid, img = widgets.patch_features(image, patch=30, pool=6)
    assert grid == (2, 3) and img.shape == (60, 90, 3)
    assert feats.shape == (6, 3 * 5 * 5)
    torch.testing.assert_close(feats.mean(0), torch.zeros(75), atol=1e-5, rtol=0)
    # token 4 is the patch in row 1, column 1; its first feature is the mean of the red channel's
    # first 6x6 block, before standardising
    raw = img[30:36, 30:36, 0].mean()
    column = torch.tensor([img[r * 30:r * 30 + 6, c * 30:c * 30 + 6, 0].mean() for r in range(2) for c in range(3)])
    expected = (raw - column.mean()) / column.std()
    assert feats[4, 0].item() == pytest.approx(expected.item(), rel=1e-4)


def test_entropy_closed_forms():
    assert widgets.entropy(torch.full((8,), 1 / 8)) == pytest.approx(math.log(8))
    assert widgets.entropy(torch.tensor([1.0, 0.0, 0.0])) == 0.0


def test_explorer_redraws_and_carries_a_static_png():
    explorer = widgets.AttentionExplorer(query=3)
    w = explorer.weights()
    assert w.shape == (150,)
    assert w.sum().item() == pytest.approx(1.0, abs=1e-5)
    hot = widgets.entropy(explorer.weights(temperature=10.0))
    cold = widgets.entropy(explorer.weights(temperature=0.01))
    assert cold < 0.1 < hot <= math.log(150) + 1e-6
    before = explorer.out.outputs[0]["data"]["image/png"]
    explorer.cosine.value = True  # the observer redraws; the cosine score of a patch with itself is the largest
    assert int(explorer.weights().argmax()) == 3
    after = explorer.out.outputs
    assert len(after) == 1 and after[0]["data"]["image/png"] != before
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    import base64

    assert base64.b64decode(bundle["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(explorer.figure().axes) == 3


# ------------------------------------------------------------------------------ patches (02_patches)


def test_image_hwc_reads_tensors_channels_first_and_arrays_channels_last():
    t = torch.rand(3, 4, 5)
    np.testing.assert_allclose(viz.image_hwc(t), t.permute(1, 2, 0).numpy(), rtol=1e-6)
    a = np.full((4, 5, 3), 255, dtype=np.uint8)
    assert viz.image_hwc(a).shape == (4, 5, 3) and viz.image_hwc(a).max() == 1.0


def test_patch_grid_draws_one_line_per_patch_edge_shades_the_remainder_and_numbers_tokens():
    img = torch.rand(3, 50, 70)  # patch 16: a 3 x 4 grid; 2 rows and 6 columns of pixels are left over
    fig = viz.patch_grid(img, 16, numbers=True)
    ax = fig.axes[0]
    assert len(ax.lines) == (3 + 1) + (4 + 1)
    assert sorted(line.get_xdata()[0] for line in ax.lines if line.get_xdata()[0] == line.get_xdata()[1]) == [
        0, 16, 32, 48, 64]
    shaded = [(p.get_x(), p.get_y(), p.get_width(), p.get_height()) for p in ax.patches]
    assert shaded == [(64, 0, 6, 50), (0, 48, 64, 2)]
    labels = {t.get_text(): t.get_position() for t in ax.texts}
    assert len(labels) == 12 and labels["6"] == (2.5 * 16, 1.5 * 16)  # token 6: grid row 1, column 2
    np.testing.assert_allclose(ax.images[0].get_array(), img.permute(1, 2, 0).numpy(), rtol=1e-6)


def test_patch_grid_leaves_out_lines_of_a_dense_grid_and_shades_nothing_when_the_patch_divides():
    ax = viz.patch_grid(torch.rand(3, 64, 64), 1, max_lines=32).axes[0]
    assert not ax.lines and not ax.patches


def test_token_strip_lays_out_the_chosen_windows_in_order():
    img = torch.rand(3, 12, 12)
    fig = viz.token_strip(img, 4, [4, 0], stride=2, gap=0.5)  # 4 x 4 windows 2 apart: a 5 x 5 grid
    ax = fig.axes[0]
    canvas = ax.images[0].get_array()
    assert canvas.shape == (4, 4 + 2 + 4, 3)
    hwc = img.permute(1, 2, 0).numpy()
    np.testing.assert_allclose(canvas[:, :4], hwc[0:4, 8:12], rtol=1e-6)  # token 4: row 0, column 4
    np.testing.assert_allclose(canvas[:, 6:], hwc[0:4, 0:4], rtol=1e-6)  # token 0
    assert np.all(canvas[:, 4:6] == 1.0)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["4", "0"]


def test_token_strip_defaults_to_the_first_two_grid_rows():
    labels = [t.get_text() for t in viz.token_strip(torch.rand(3, 32, 48), 8).axes[0].get_xticklabels()]
    assert labels == [str(i) for i in range(12)]


def test_overlap_windows_pads_the_image_and_outlines_the_windows_where_they_are():
    img = torch.rand(3, 20, 20)
    fig = viz.overlap_windows(img, 7, 4, padding=3, windows=[(0, 0), (1, 2)])
    ax = fig.axes[0]
    shown = ax.images[0].get_array()
    assert shown.shape == (26, 26, 3)
    np.testing.assert_allclose(shown[3:23, 3:23], img.permute(1, 2, 0).numpy(), rtol=1e-6)
    assert np.all(shown[:3] == 0.85)
    frames = [p for p in ax.patches if p.get_edgecolor()[:3] != matplotlib.colors.to_rgb("gray")]
    (x0, y0), (x1, y1) = [(p.get_x(), p.get_y()) for p in frames]
    assert (round(x0 - 0.4, 6), round(y0 - 0.4, 6)) == (0, 0)
    assert (round(x1 - 1.0, 6), round(y1 - 1.0, 6)) == (8, 4)  # column 2, row 1: 4 pixels apart, inset 1
    assert frames[0].get_width() == pytest.approx(7 - 0.8)


@pytest.mark.parametrize("size, kernel, stride", [(224, 16, 16), (224, 15, 15), (30, 4, 7), (31, 8, 3), (9, 9, 1),
                                                  (5, 6, 1)])
def test_covered_pixels_counts_the_union_of_the_windows(size, kernel, stride):
    covered = set()
    for start in range(0, size - kernel + 1, stride):
        covered |= set(range(start, start + kernel))
    assert widgets.covered_pixels(size, kernel, stride) == len(covered)


@pytest.mark.parametrize("height, width, patch, stride", [(224, 224, 16, None), (224, 224, 16, 8), (64, 96, 15, None),
                                                          (50, 40, 6, 9)])
def test_patch_costs_match_unfold_and_fold(height, width, patch, stride):
    c = widgets.patch_costs(height, width, patch, stride, heads=2, depth=3)
    ones = torch.ones(1, 1, height, width)
    s = patch if stride is None else stride
    windows = torch.nn.functional.unfold(ones, patch, stride=s)
    assert c["tokens"] == windows.shape[-1] == c["rows"] * c["cols"]
    coverage = torch.nn.functional.fold(windows, (height, width), patch, stride=s)
    assert c["dropped"] == int((coverage == 0).sum())
    assert c["values"] == patch * patch * 3
    assert c["entries"] == c["tokens"] ** 2
    assert c["bytes"] == 4 * c["entries"] and c["model_bytes"] == 2 * 3 * c["bytes"]


def test_patch_size_explorer_counts_tokens_redraws_and_carries_a_static_png():
    import base64

    explorer = widgets.PatchSizeExplorer(photo="astronaut", size=224, patch=16)
    assert explorer.image().shape == (3, 224, 224)
    assert explorer.costs()["tokens"] == 196 and explorer.stride.disabled
    before = explorer.out.outputs[0]["data"]["image/png"]
    explorer.no_overlap.value = False  # the stride slider takes over: 16 x 16 windows 8 apart
    explorer.stride.value = 8
    assert not explorer.stride.disabled
    assert explorer.costs()["tokens"] == 27 * 27
    after = explorer.out.outputs
    assert len(after) == 1 and after[0]["data"]["image/png"] != before
    explorer.no_overlap.value = True
    explorer.patch.value = 15  # 14 x 14 patches and a 14-pixel border left out on two sides
    assert explorer.costs()["tokens"] == 196 and explorer.costs()["dropped"] == 224 ** 2 - 210 ** 2
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert base64.b64decode(bundle["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(explorer.figure().axes) == 4


# ------------------------------------------------------------------------------------- positions (03)


def test_grid_map_draws_the_values_on_the_grid_and_frames_the_marked_patch():
    values = torch.arange(12.0)
    fig = viz.grid_map(values, (3, 4), mark=(2, 1), title="t")
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), values.reshape(3, 4).numpy())
    frame = ax.patches[0]
    assert (frame.get_x(), frame.get_y(), frame.get_width(), frame.get_height()) == (0.5, 1.5, 1, 1)
    assert len(fig.axes) == 2 and ax.get_title() == "t"


def test_similarity_mosaic_puts_row_k_of_the_matrix_at_patch_k():
    rows, cols = 3, 4
    sim = torch.arange(144.0).reshape(12, 12)
    fig = viz.similarity_mosaic(sim, (rows, cols))
    canvas = np.ma.filled(fig.axes[0].images[0].get_array(), np.nan)
    assert canvas.shape == (rows * 4 - 1, cols * 5 - 1)
    for r in range(rows):
        for c in range(cols):
            panel = canvas[r * 4:r * 4 + rows, c * 5:c * 5 + cols]
            np.testing.assert_array_equal(panel, sim[r * cols + c].reshape(rows, cols).numpy())
    assert np.isnan(canvas[3]).all() and np.isnan(canvas[:, 4]).all()  # the blank separators
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0", "1", "2", "3"]


def test_similarity_mosaic_step_keeps_every_other_panel_and_refuses_a_wrong_shape():
    sim = torch.rand(16, 16)
    fig = viz.similarity_mosaic(sim, (4, 4), step=2)
    canvas = np.ma.filled(fig.axes[0].images[0].get_array(), np.nan)
    assert canvas.shape == (2 * 5 - 1, 2 * 5 - 1)
    np.testing.assert_allclose(canvas[5:9, 5:9], sim[2 * 4 + 2].reshape(4, 4).numpy(), rtol=1e-6)
    with pytest.raises(ValueError):
        viz.similarity_mosaic(torch.rand(15, 15), (4, 4))


def _frequencies(width, temperature=10000.0):
    return temperature ** (-2 * torch.arange(width // 2, dtype=torch.float64) / width)


def test_sincos_similarities_have_their_closed_forms():
    side, dim = 5, 16
    pos = [(r, c) for r in range(side) for c in range(side)]
    two_d = widgets.position_similarity("sin-cos 2-D", side, dim)
    flat = widgets.position_similarity("sin-cos 1-D (flat index)", side, dim, temperature=100.0)
    omega_half, omega_full = _frequencies(dim // 2), _frequencies(dim, 100.0)
    for m, (r, c) in enumerate(pos):
        for n, (r2, c2) in enumerate(pos):
            # [sin | cos] rows: their dot product is a sum of cos(omega * offset), their norm^2 the number of pairs
            expected = (torch.cos(omega_half * (c - c2)).sum() + torch.cos(omega_half * (r - r2)).sum()) / (dim / 2)
            assert two_d[m, n].item() == pytest.approx(expected.item(), abs=1e-9)
            assert flat[m, n].item() == pytest.approx(torch.cos(omega_full * (m - n)).mean().item(), abs=1e-9)


def test_rope_scores_depend_on_the_offset_only():
    side = 4
    s = widgets.position_similarity("RoPE 2-D", side, 8, temperature=10.0)
    pos = [(r, c) for r in range(side) for c in range(side)]
    by_offset = {}
    for m, (r, c) in enumerate(pos):
        for n, (r2, c2) in enumerate(pos):
            by_offset.setdefault((r2 - r, c2 - c), []).append(s[m, n].item())
    assert len(by_offset) == (2 * side - 1) ** 2
    assert max(max(v) - min(v) for v in by_offset.values()) < 1e-12
    assert max(v[0] for v in by_offset.values()) - min(v[0] for v in by_offset.values()) > 0.1
    with pytest.raises(ValueError):
        widgets.position_similarity("learned", side)


def test_position_explorer_maps_clamps_and_resamples_a_learned_table():
    torch.manual_seed(0)
    learned = torch.randn(1, 1 + 36, 8)
    explorer = widgets.PositionSimilarityExplorer(side=6, row=5, col=2, tables={"learned": learned})
    assert list(explorer.kind.options) == [*widgets.PositionSimilarityExplorer.KINDS, "learned"]
    expected = widgets.position_similarity("sin-cos 2-D", 6, 64)[5 * 6 + 2].reshape(6, 6)
    torch.testing.assert_close(explorer.map(), expected)
    explorer.kind.value = "learned"
    table = torch.nn.functional.normalize(learned[0, 1:].double(), dim=-1)
    torch.testing.assert_close(explorer.map(), (table @ table.T)[5 * 6 + 2].reshape(6, 6))
    redraws = []
    explorer.out.observe(lambda change: redraws.append(change), names="outputs")
    explorer.side.value = 4  # the row slider's value is clamped to 3 and the figure is drawn once
    assert (explorer.row.value, explorer.row.max, explorer.col.value) == (3, 3, 2)
    assert len(redraws) == 1 and explorer.map().shape == (4, 4)
    explorer.side.value = 9  # the 6 x 6 table resampled in 2-D to 9 x 9 (CLS row dropped from the picture)
    assert explorer.similarity().shape == (81, 81)
    assert explorer.map()[explorer.row.value, explorer.col.value].item() == pytest.approx(1.0)
    bundle = explorer._repr_mimebundle_()
    import base64

    assert base64.b64decode(bundle["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(explorer.figure().axes) == 3  # the map, its colour bar and the distance plot


# ---------------------------------------------------------------------------------------- the ViT (04_vit)


def test_show_images_one_panel_per_image_with_coloured_titles():
    grey = torch.rand(5, 1, 8, 8)
    fig = viz.show_images(grey, [f"t{i}" for i in range(5)], ncols=3, colors=["red"] * 5, suptitle="s")
    shown = [ax for ax in fig.axes if ax.images]
    assert len(fig.axes) == 6 and len(shown) == 5  # a 2 x 3 grid, the last cell empty
    np.testing.assert_allclose(shown[2].images[0].get_array(), grey[2, 0].numpy(), rtol=1e-6)
    assert shown[4].get_title() == "t4" and shown[4].title.get_color() == "red"
    rgb = torch.rand(2, 3, 4, 4)
    fig = viz.show_images(rgb)
    np.testing.assert_allclose(fig.axes[1].images[0].get_array(), rgb[1].permute(1, 2, 0).numpy(), rtol=1e-6)
    with pytest.raises(ValueError):
        viz.show_images(torch.rand(2, 2, 4, 4))


def test_attention_distance_plot_one_dot_per_head_at_its_layer_and_reference_lines():
    d = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    fig = viz.attention_distance_plot(d, references={"uniform": 7.5, "local": 0.5}, label="trained")
    ax = fig.axes[0]
    dots = ax.collections[0].get_offsets()
    assert dots.shape == (6, 2)
    np.testing.assert_allclose(np.sort(dots[:, 1]), d.flatten().numpy())
    np.testing.assert_allclose(np.round(dots[:, 0]), [1, 1, 1, 2, 2, 2])  # spread sideways around the layer
    assert [line.get_ydata()[0] for line in ax.lines] == [7.5, 0.5]
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 7.5
    viz.attention_distance_plot(d * 3, ax=ax)  # a second call on the same axes still shows all its dots
    assert ax.get_ylim()[1] >= 18


def test_stacked_bars_fractions_add_up_to_one_per_row():
    rows = {"a": {"x": 1, "y": 3}, "b": {"x": 5, "y": 5}}
    fig = viz.stacked_bars(rows)
    ax = fig.axes[0]
    widths = [p.get_width() for p in ax.patches]  # part by part: x of a, x of b, y of a, y of b
    np.testing.assert_allclose(widths, [0.25, 0.5, 0.75, 0.5])
    assert sorted(t.get_text() for t in ax.texts) == ["25%", "50%", "50%", "75%"]
    raw = viz.stacked_bars(rows, normalise=False).axes[0]
    np.testing.assert_allclose([p.get_width() for p in raw.patches], [1, 5, 3, 5])


def test_grey_rgb_draws_ink_dark_and_colour_by_luminance():
    ink = torch.tensor([[[0.0, 1.0]]])
    np.testing.assert_allclose(widgets.grey_rgb(ink), [[[1, 1, 1], [0, 0, 0]]])
    colour = torch.tensor([1.0, 0.0, 0.0])[:, None, None].expand(3, 2, 2)
    np.testing.assert_allclose(widgets.grey_rgb(colour), np.full((2, 2, 3), 0.299), rtol=1e-6)


def test_attention_map_viewer_shows_the_model_maps_and_their_rollout():
    from vitlab import vit

    torch.manual_seed(0)
    model = vit.VisionTransformer(img_size=8, patch_size=4, in_chans=1, num_classes=3, embed_dim=16, depth=2,
                                  num_heads=2).train()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("qkv.weight"):
                p.normal_(0, 0.5)  # sharper attention than at initialisation
    images = torch.rand(3, 1, 8, 8)
    viewer = widgets.AttentionMapViewer(model, images, image=1, layer=2, head=1, query=3)
    assert model.training  # the viewer puts the model back as it found it
    with torch.no_grad():
        maps = model.eval().get_attention_maps(images)
    torch.testing.assert_close(viewer.matrix(), maps[1][1, 1])
    assert viewer.distances.shape == (2, 2)
    redraws = []
    viewer.out.observe(lambda change: redraws.append(change), names="outputs")
    viewer.layer.value = 1
    viewer.rollout.value = True  # rollout of layer 1 alone: heads averaged, identity added, rows renormalised
    a = maps[0][1].mean(0) + torch.eye(5)
    torch.testing.assert_close(viewer.matrix(), a / a.sum(-1, keepdim=True))
    assert len(redraws) == 2
    assert (viewer.query.max, viewer.head.max, viewer.image.max) == (4, 1, 2)
    import base64

    bundle = viewer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert base64.b64decode(bundle["image/png"])[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(viewer.figure().axes) == 3
