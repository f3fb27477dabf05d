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
