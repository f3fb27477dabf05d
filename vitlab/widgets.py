"""Interactive explorers for the chapters (ipywidgets), each with a static fallback.

An explorer is a widget box: in a live Jupyter kernel its sliders redraw a figure inside an `Output`
widget (by setting the widget's `outputs`). Its display bundle also carries a PNG of the current state,
so a notebook executed headless (nbconvert, nbgrader) or viewed without a widget manager still shows a
figure. Importing this module needs no display: figures are drawn on the Agg canvas, outside pyplot.
"""
from __future__ import annotations

import base64
import io
import math

import ipywidgets as W
import numpy as np
import torch
from matplotlib.figure import Figure

from vitlab import viz


def patch_features(image: np.ndarray | None = None, patch: int = 30, pool: int = 6
                   ) -> tuple[torch.Tensor, tuple[int, int], np.ndarray]:
    """Cut `image` (H, W, 3; default scikit-image's cat photo) into `patch` x `patch` patches, one token each.

    A token's features are its pixels average-pooled over `pool` x `pool` blocks, flattened and standardised
    over the tokens (zero mean, unit variance per feature). Returns (features (N, D), grid (rows, cols),
    the cropped image).
    """
    if image is None:
        from skimage import data

        image = data.chelsea()
    rows, cols = image.shape[0] // patch, image.shape[1] // patch
    img = np.asarray(image[: rows * patch, : cols * patch], dtype=np.float32) / 255.0
    x = torch.from_numpy(img).reshape(rows, patch, cols, patch, 3).permute(0, 2, 4, 1, 3)
    x = x.reshape(rows * cols * 3, patch, patch)
    x = torch.nn.functional.avg_pool2d(x, pool).reshape(rows * cols, -1)
    x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    return x, (rows, cols), img


def entropy(weights: torch.Tensor) -> float:
    """Shannon entropy in nats of one row of weights (zeros contribute nothing)."""
    w = weights[weights > 0]
    return float(-(w * w.log()).sum())


class FigureWidget(W.VBox):
    """Controls above a matplotlib figure that is redrawn as a PNG on every change.

    Subclasses create `self.out = W.Output()` and define `figure()`. `show()` puts the figure into the Output
    widget through its `outputs` state (not `with self.out:`, which routes output by message id and can stall
    headless executors such as nbclient), and the PNG also travels in the widget's own display bundle, so a
    notebook run without a browser keeps a still picture.
    """

    out: W.Output

    def figure(self) -> Figure:
        raise NotImplementedError

    def png(self) -> bytes:
        """The current figure as PNG bytes."""
        buf = io.BytesIO()
        self.figure().savefig(buf, format="png", dpi=80)
        return buf.getvalue()

    def _redraw(self, change=None) -> None:
        """The observer of every control: redraw."""
        self.show()

    def show(self) -> None:
        """Redraw the figure into the Output widget and the display bundle."""
        self._png = base64.b64encode(self.png()).decode("ascii")
        self.out.outputs = ({"output_type": "display_data", "metadata": {},
                             "data": {"image/png": self._png, "text/plain": f"<{type(self).__name__} figure>"}},)

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle["image/png"] = self._png
        return bundle


class AttentionExplorer(FigureWidget):
    """Attention of one image patch over all patches of a photo, with a temperature slider and a query picker.

    Queries and keys are the patches' own (standardised) pixel features, with no learned projection, so a
    patch attends to patches that look like it. The score of key j for query i is q_i . k_j / (sqrt(d) * T),
    or cos(q_i, k_j) / T when "cosine" is ticked. The figure shows the weights over the photo, the largest
    weights as bars, and the entropy of the row against the temperature.
    """

    def __init__(self, image: np.ndarray | None = None, patch: int = 30, query: int | None = None,
                 temperature: float = 1.0, top: int = 12):
        self.features, self.grid, self.image = patch_features(image, patch)
        n = self.features.shape[0]
        self.top = top
        self.query = W.IntSlider(value=min(49, n - 1) if query is None else query, min=0, max=n - 1,
                                 description="query patch", continuous_update=False)
        self.temperature = W.FloatLogSlider(value=temperature, base=10, min=-2, max=1, step=0.05,
                                            description="temperature", continuous_update=False)
        self.cosine = W.Checkbox(value=False, description="cosine (normalise q and k)")
        self.out = W.Output()
        for control in (self.query, self.temperature, self.cosine):
            control.observe(self._redraw, names="value")
        super().__init__([W.HBox([self.query, self.temperature, self.cosine]), self.out])
        self._redraw()

    def weights(self, temperature: float | None = None) -> torch.Tensor:
        """The attention weights (N,) of the current query patch over all patches."""
        t = self.temperature.value if temperature is None else temperature
        f = self.features
        if self.cosine.value:
            f = torch.nn.functional.normalize(f, dim=-1)
            scores = f @ f[self.query.value] / t
        else:
            scores = f @ f[self.query.value] / (math.sqrt(f.shape[1]) * t)
        return scores.softmax(-1)

    def figure(self) -> Figure:
        """The current state as a static figure: weights over the photo, top weights, entropy vs temperature."""
        w = self.weights()
        n = w.numel()
        fig = Figure(figsize=(13, 3.9))
        ax_img, ax_bar, ax_h = fig.subplots(1, 3, width_ratios=[1.5, 1.2, 1])
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.2, top=0.9, wspace=0.22)
        viz.patch_weights_overlay(self.image, w, self.grid, query=self.query.value, ax=ax_img,
                                  title=f"query patch {self.query.value} (blue frame)")
        top = w.topk(min(self.top, n))
        cols = self.grid[1]
        labels = [f"{int(i) // cols},{int(i) % cols}" for i in top.indices]
        mine = (top.indices == self.query.value).nonzero()
        viz.weights_bar(top.values, labels, ax=ax_bar, highlight=int(mine[0, 0]) if len(mine) else None,
                        title=f"largest {len(labels)} of {n} weights (red: the query itself)")
        ax_bar.set_xlabel("key patch (row, col)")
        temps = np.logspace(-2, 1, 61)
        curve = [entropy(self.weights(float(t))) for t in temps]
        h = entropy(w)
        ax_h.semilogx(temps, curve, color="tab:blue")
        ax_h.axhline(math.log(n), color="gray", ls="--", lw=1, label=f"uniform: log {n}")
        ax_h.plot([self.temperature.value], [h], "o", color="tab:red", label="now")
        ax_h.set_xlabel("temperature T")
        ax_h.set_ylabel("entropy (nats)")
        ax_h.set_title(f"H = {h:.2f} nats, exp(H) = {math.exp(h):.1f} patches")
        ax_h.legend(fontsize=8)
        return fig


# ------------------------------------------------------------------------------------ patch-size explorer


def covered_pixels(size: int, kernel: int, stride: int) -> int:
    """How many of `size` pixels along one side fall inside at least one window (kernel, stride, no padding)."""
    count = (size - kernel) // stride + 1
    if count < 1:
        return 0
    return (count - 1) * min(stride, kernel) + kernel


def patch_costs(height: int, width: int, patch: int, stride: int | None = None, channels: int = 3,
                heads: int = 12, depth: int = 12, bytes_per_value: int = 4) -> dict[str, int]:
    """What cutting an image into windows costs: grid, tokens, values per token, attention entries and bytes.

    `entries` is the size of one head's score matrix in one layer, N^2; `bytes` stores it once; `model_bytes`
    stores every head of every layer of a `depth`-layer model with `heads` heads (ViT-B: 12 and 12), one image.
    `dropped` counts the pixels no window covers.
    """
    stride = patch if stride is None else stride
    rows, cols = (height - patch) // stride + 1, (width - patch) // stride + 1
    tokens = max(rows, 0) * max(cols, 0)
    entries = tokens * tokens
    return dict(rows=rows, cols=cols, tokens=tokens, values=patch * patch * channels, entries=entries,
                bytes=entries * bytes_per_value, model_bytes=entries * bytes_per_value * heads * depth,
                dropped=height * width - covered_pixels(height, patch, stride) * covered_pixels(width, patch, stride))


def _size(n_bytes: float) -> str:
    """A byte count in B, KiB, MiB, GiB or TiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n_bytes < 1024:
            return f"{n_bytes:.4g} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.4g} TiB"


class PatchSizeExplorer(FigureWidget):
    """Cut a photo into patches and see what it costs: grid overlay, the first tokens, tokens and attention size.

    Sliders choose the patch size and (unticking "no overlap") the stride; drop-downs the photo and the side it
    is resized to. The figure shows the photo with its patch grid (or a few overlapping windows), the tokens and
    attention entries against the patch size on log axes, the numbers of the current choice, and the first
    tokens of the sequence.
    """

    SIZES = (64, 128, 224, 384, 512)

    def __init__(self, photo: str = "astronaut", size: int = 224, patch: int = 16, stride: int | None = None):
        from vitlab import data

        self._photo = data.photo
        self._cache: dict[tuple[str, int], torch.Tensor] = {}
        self.photo = W.Dropdown(options=list(data.PHOTOS), value=photo, description="photo")
        self.size = W.Dropdown(options=list(self.SIZES), value=size, description="image side")
        self.patch = W.IntSlider(value=patch, min=1, max=64, description="patch size", continuous_update=False)
        self.no_overlap = W.Checkbox(value=stride is None or stride == patch, description="no overlap (stride = patch)")
        self.stride = W.IntSlider(value=patch if stride is None else stride, min=1, max=64, description="stride",
                                  continuous_update=False, disabled=self.no_overlap.value)
        self.out = W.Output()
        for control in (self.photo, self.size, self.patch, self.no_overlap, self.stride):
            control.observe(self._redraw, names="value")
        super().__init__([W.HBox([self.photo, self.size]), W.HBox([self.patch, self.no_overlap, self.stride]),
                          self.out])
        self._redraw()

    def image(self) -> torch.Tensor:
        """The current photo, (3, side, side) in [0, 1]."""
        key = (self.photo.value, self.size.value)
        if key not in self._cache:
            self._cache[key] = self._photo(*key)
        return self._cache[key]

    def current_stride(self) -> int:
        return self.patch.value if self.no_overlap.value else self.stride.value

    def costs(self) -> dict[str, int]:
        """patch_costs of the current choice."""
        side = self.size.value
        return patch_costs(side, side, self.patch.value, self.current_stride())

    def figure(self) -> Figure:
        """The current state as a static figure."""
        img, side = self.image(), self.size.value
        patch, stride = self.patch.value, self.current_stride()
        c = self.costs()
        fig = Figure(figsize=(13, 6.2))
        grid = fig.add_gridspec(2, 3, height_ratios=[4, 1], width_ratios=[1.1, 1.2, 1])
        ax_img, ax_cost, ax_txt = (fig.add_subplot(grid[0, i]) for i in range(3))
        ax_strip = fig.add_subplot(grid[1, :])
        fig.subplots_adjust(left=0.02, right=0.98, bottom=0.04, top=0.93, wspace=0.25, hspace=0.25)
        if stride == patch:
            hidden = " (grid lines hidden)" if max(c["rows"], c["cols"]) > 64 else ""
            viz.patch_grid(img, patch, ax=ax_img,
                           title=f"{c['rows']} x {c['cols']} patches of {patch} x {patch}{hidden}")
        else:
            viz.overlap_windows(img, patch, stride, ax=ax_img,
                                title=f"windows {patch} x {patch}, {stride} apart: {c['rows']} x {c['cols']}")
        sizes = [p for p in range(1, 65) if p <= side]
        tokens = [patch_costs(side, side, p)["tokens"] for p in sizes]
        viz.line_plot(sizes, {"tokens N": tokens, "attention entries N^2": [t * t for t in tokens]}, ax=ax_cost,
                      logx=True, logy=True, markers=False, xlabel="patch size P (stride = P)",
                      ylabel="count (one head, one layer)", title=f"{side} x {side} image")
        ax_cost.plot([patch], [c["tokens"]], "o", color="tab:red", zorder=3)
        ax_cost.plot([patch], [c["entries"]], "o", color="tab:red", zorder=3, label="your choice")
        ax_cost.legend(fontsize=8)
        lines = [f"image            {side} x {side} x 3",
                 f"patch, stride    {patch}, {stride}",
                 f"grid             {c['rows']} x {c['cols']}",
                 f"tokens N         {c['tokens']:,}",
                 f"values per token {c['values']:,} (P*P*3)",
                 f"pixels left out  {c['dropped']:,}",
                 "",
                 "attention scores, one head, one layer:",
                 f"  N^2 = {c['entries']:,}",
                 f"  {_size(c['bytes'])} in float32",
                 "ViT-B (12 heads x 12 layers), one image:",
                 f"  {_size(c['model_bytes'])} in float32",
                 f"  {c['entries'] / 196 ** 2:.3g} x the scores of ViT-B/16",
                 "  at 224 x 224"]
        ax_txt.axis("off")
        ax_txt.text(0, 1, "\n".join(lines), va="top", family="monospace", fontsize=10, transform=ax_txt.transAxes)
        count = min(c["tokens"], 24)
        if count:
            viz.token_strip(img, patch, range(count), stride=stride, ax=ax_strip,
                            title=f"the sequence starts with these {count} of {c['tokens']:,} tokens")
        else:
            ax_strip.axis("off")
        return fig

    def _redraw(self, change=None) -> None:
        self.stride.disabled = self.no_overlap.value
        self.show()


# ------------------------------------------------------------------------------ position-similarity explorer


def position_similarity(kind: str, side: int, dim: int = 64, temperature: float = 10000.0,
                        seed: int = 0) -> torch.Tensor:
    """(N, N) similarity of every position of a side x side grid to every other, N = side^2, row-major.

    kind "sin-cos 2-D" and "sin-cos 1-D (flat index)": cosine similarity of the tables' rows. kind "RoPE 2-D":
    the score <R_m q, R_n k> / (|q| |k|) of one fixed random query q put at patch m and one fixed random key k
    put at patch n, rotated by axial 2-D RoPE (it depends on the offset n - m only). `temperature` is the T of
    the frequencies 1 / T^(2i/d) of all three.
    """
    from vitlab import posenc

    if kind == "sin-cos 2-D":
        table = posenc.sincos_2d(side, side, dim, temperature, dtype=torch.float64)
    elif kind == "sin-cos 1-D (flat index)":
        table = posenc.sincos_1d(side * side, dim, temperature, dtype=torch.float64)
    elif kind == "RoPE 2-D":
        gen = torch.Generator().manual_seed(seed)
        q, k = torch.nn.functional.normalize(torch.randn(2, dim, generator=gen, dtype=torch.float64), dim=-1)
        pos = posenc.grid_positions(side, side)
        n = side * side
        rq = posenc.apply_rope(q.expand(n, dim), pos, temperature)
        return rq @ posenc.apply_rope(k.expand(n, dim), pos, temperature).T
    else:
        raise ValueError(f"unknown kind {kind!r}: choose one of {', '.join(PositionSimilarityExplorer.KINDS)}")
    table = torch.nn.functional.normalize(table, dim=-1)
    return table @ table.T


class PositionSimilarityExplorer(FigureWidget):
    """Pick a patch with two sliders and see how similar its position code is to every other patch's.

    Encodings: the 2-D sin-cos table (MAE), a 1-D sin-cos table over the flattened index (what a 1-D
    encoding does to an image), and 2-D RoPE (the score of a fixed query at the picked patch with a fixed key
    everywhere). `tables` adds learned tables, name -> pos_embed (1, num_prefix_tokens + N, D) on a square
    grid; for another grid side they are resampled in 2-D (vitlab.posenc.resample_pos_embed). A slider sets
    the temperature T of the sin-cos and RoPE frequencies. The figure shows the map over the grid (colours
    scaled to its own range) and the same values against the distance from the picked patch.
    """

    KINDS = ("sin-cos 2-D", "sin-cos 1-D (flat index)", "RoPE 2-D")

    def __init__(self, side: int = 14, row: int = 3, col: int = 4, kind: str = "sin-cos 2-D", dim: int = 64,
                 temperature: float = 10000.0, tables: dict[str, torch.Tensor] | None = None,
                 num_prefix_tokens: int = 1, max_side: int = 24):
        self.dim = dim
        self.tables = dict(tables or {})
        self.num_prefix_tokens = num_prefix_tokens
        self._cache: dict[tuple[str, int, float], torch.Tensor] = {}
        self._quiet = False
        self.kind = W.Dropdown(options=[*self.KINDS, *self.tables], value=kind, description="encoding")
        self.side = W.IntSlider(value=side, min=2, max=max_side, description="grid side", continuous_update=False)
        self.temperature = W.FloatLogSlider(value=temperature, base=10, min=0, max=4, step=0.25,
                                            description="T (sin-cos, RoPE)", continuous_update=False,
                                            style={"description_width": "initial"})
        self.row = W.IntSlider(value=min(row, side - 1), min=0, max=side - 1, description="row",
                               continuous_update=False)
        self.col = W.IntSlider(value=min(col, side - 1), min=0, max=side - 1, description="column",
                               continuous_update=False)
        self.out = W.Output()
        self.side.observe(self._resize, names="value")
        for control in (self.kind, self.temperature, self.row, self.col):
            control.observe(self._redraw, names="value")
        super().__init__([W.HBox([self.kind, self.side, self.temperature]), W.HBox([self.row, self.col]),
                          self.out])
        self._redraw()

    def similarity(self) -> torch.Tensor:
        """(N, N) similarity of the current encoding on the current grid."""
        key = (self.kind.value, self.side.value, self.temperature.value)
        if key not in self._cache:
            kind, side, temperature = key
            if kind in self.tables:
                from vitlab import posenc

                pos_embed = self.tables[kind].detach().double().cpu()
                pos_embed = posenc.resample_pos_embed(pos_embed, (side, side), self.num_prefix_tokens)
                table = torch.nn.functional.normalize(pos_embed[0, self.num_prefix_tokens:], dim=-1)
                self._cache[key] = table @ table.T
            else:
                self._cache[key] = position_similarity(kind, side, self.dim, temperature)
        return self._cache[key]

    def map(self) -> torch.Tensor:
        """The picked patch's similarity to every patch, (side, side)."""
        side = self.side.value
        return self.similarity()[self.row.value * side + self.col.value].reshape(side, side)

    def figure(self) -> Figure:
        """The current state as a static figure: the map on the grid, and its values against distance."""
        side, r, c = self.side.value, self.row.value, self.col.value
        m = self.map()
        fig = Figure(figsize=(11, 4.2))
        ax_map, ax_dist = fig.subplots(1, 2, width_ratios=[1, 1.2])
        fig.subplots_adjust(left=0.06, right=0.98, bottom=0.14, top=0.88, wspace=0.25)
        viz.grid_map(m, (side, side), ax=ax_map, mark=(r, c),
                     title=f"{self.kind.value}: patch ({r}, {c}) on a {side} x {side} grid")
        rows, cols = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        distance = ((rows - r) ** 2 + (cols - c) ** 2).double().sqrt().flatten()
        same_row = (rows == r).flatten()
        values = m.flatten()
        ax_dist.scatter(distance[~same_row], values[~same_row], s=10, alpha=0.6, label="other rows")
        ax_dist.scatter(distance[same_row], values[same_row], s=14, color="tab:orange",
                        label=f"row {r} (the patch's own row)")
        ax_dist.set_xlabel(f"distance from patch ({r}, {c}) on the grid (patches)")
        ax_dist.set_ylabel("similarity")
        ax_dist.grid(alpha=0.3)
        ax_dist.legend(fontsize=8, loc="upper right")
        ax_dist.set_title("one dot per patch: does similarity follow distance?", fontsize=10)
        return fig

    def _resize(self, change=None) -> None:
        self._quiet = True  # lowering a slider's max may move its value: redraw once, afterwards
        self.row.max = self.col.max = self.side.value - 1
        self._quiet = False
        self._redraw()

    def _redraw(self, change=None) -> None:
        if self._quiet:
            return
        self.show()


def grey_rgb(image: torch.Tensor) -> np.ndarray:
    """An image (C, H, W) in [0, 1] as a grey (H, W, 3) array, so that a coloured overlay stands out on it.

    One channel is drawn as dark ink on white; three channels by their luminance (0.299 R + 0.587 G + 0.114 B).
    """
    x = image.detach().float().cpu()
    if x.shape[0] == 1:
        grey = 1 - x[0]
    else:
        grey = (torch.tensor([0.299, 0.587, 0.114])[:, None, None] * x[:3]).sum(0)
    return grey.clamp(0, 1)[..., None].expand(-1, -1, 3).numpy()


class AttentionMapViewer(FigureWidget):
    """What one token of a trained ViT attends to: sliders for the image, layer, head and query token.

    `model` is a `vitlab.vit.VisionTransformer` (or anything with its `get_attention_maps`, `grid_size`,
    `patch_size` and `num_prefix_tokens`); its attention maps are computed once, without gradients, for `images`
    (B, C, H, W). Left: the image, in grey, with the query's attention over the patches (query 0 is the CLS
    token, query 1 + i is patch i, framed in blue). Middle: the whole (T, T) matrix, the query's row framed in
    red. Right: the mean attention distance of every head at every layer over all the images, the chosen head in
    red. Ticking "rollout" shows the attention rollout of layers 1 to the chosen one instead of a single head.
    """

    def __init__(self, model, images: torch.Tensor, titles=None, image: int = 0, layer: int | None = None,
                 head: int = 0, query: int = 0):
        from vitlab import vit

        was_training = model.training
        model.eval()
        with torch.no_grad():
            device = next(model.parameters()).device
            self.maps = torch.stack(model.get_attention_maps(images.to(device))).float().cpu()  # (L, B, H, T, T)
        model.train(was_training)
        self.images = images.cpu()
        self.titles = list(titles) if titles is not None else [f"image {i}" for i in range(len(images))]
        self.prefix = model.num_prefix_tokens
        self.grid = tuple(model.grid_size)
        self.distances = vit.mean_attention_distance(self.maps, self.grid, model.patch_size, self.prefix)
        n_layers, n_images, n_heads, n_tokens, _ = self.maps.shape
        opts = dict(continuous_update=False)
        self.image = W.IntSlider(value=image, min=0, max=n_images - 1, description="image", **opts)
        self.layer = W.IntSlider(value=n_layers if layer is None else layer, min=1, max=n_layers,
                                 description="layer", **opts)
        self.head = W.IntSlider(value=head, min=0, max=n_heads - 1, description="head", **opts)
        self.query = W.IntSlider(value=query, min=0, max=n_tokens - 1, description="query token", **opts)
        self.rollout = W.Checkbox(value=False, description="rollout of layers 1..layer (heads averaged)")
        self.out = W.Output()
        for control in (self.image, self.layer, self.head, self.query, self.rollout):
            control.observe(self._redraw, names="value")
        super().__init__([W.HBox([self.image, self.layer, self.head]), W.HBox([self.query, self.rollout]),
                          self.out])
        self._redraw()

    def matrix(self) -> torch.Tensor:
        """The (T, T) matrix on show: one head of one layer for the current image, or the rollout."""
        from vitlab import vit

        b, layer = self.image.value, self.layer.value
        if self.rollout.value:
            return vit.attention_rollout(self.maps[:layer, b:b + 1])[0]
        return self.maps[layer - 1, b, self.head.value]

    def figure(self) -> Figure:
        """The current state as a static figure (three panels)."""
        from matplotlib.patches import Rectangle

        a = self.matrix()
        q, p, cols = self.query.value, self.prefix, self.grid[1]
        patch = q - p if q >= p else None
        where = "the CLS token" if patch is None else f"patch {patch} (row {patch // cols}, col {patch % cols})"
        what = (f"rollout of layers 1-{self.layer.value}" if self.rollout.value
                else f"layer {self.layer.value}, head {self.head.value}")
        fig = Figure(figsize=(13.5, 4.3))
        ax_img, ax_mat, ax_dist = fig.subplots(1, 3, width_ratios=[1, 1, 1.2])
        fig.subplots_adjust(left=0.03, right=0.98, bottom=0.14, top=0.84, wspace=0.3)
        viz.patch_weights_overlay(grey_rgb(self.images[self.image.value]), a[q, p:], self.grid, query=patch,
                                  ax=ax_img, title=f"{self.titles[self.image.value]}; query: {where}")
        if p:
            ax_img.set_xlabel(f"weight on the CLS token: {float(a[q, :p].sum()):.2f}", fontsize=9)
        ax_mat.imshow(viz.to_numpy(a), cmap="viridis", vmin=0, interpolation="nearest")
        ax_mat.add_patch(Rectangle((-0.5, q - 0.5), a.shape[1], 1, fill=False, edgecolor="tab:red", lw=1.5))
        ax_mat.set_title(f"all {a.shape[0]} queries (rows) over all keys", fontsize=10)
        ax_mat.set_xlabel("key token (0 = CLS)")
        ax_mat.set_ylabel("query token")
        viz.attention_distance_plot(self.distances, ax=ax_dist, title="mean attention distance, every head")
        if not self.rollout.value:
            heads = self.distances.shape[1]
            offset = np.linspace(-0.15, 0.15, heads)[self.head.value] if heads > 1 else 0.0
            ax_dist.scatter([self.layer.value + offset], [float(self.distances[self.layer.value - 1, self.head.value])],
                            s=80, color="tab:red", zorder=3, label="this head")
            ax_dist.legend(fontsize=8)
        fig.suptitle(what, fontsize=12)
        return fig


