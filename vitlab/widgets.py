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


def _full_labels(box: W.Box) -> None:
    """Give every control in `box` room for its whole label (ipywidgets cuts labels at about 8 characters)."""
    for child in box.children:
        if "description_width" in getattr(getattr(child, "style", None), "keys", ()):
            child.style.description_width = "initial"
        if isinstance(child, W.Box):
            _full_labels(child)


class FigureWidget(W.VBox):
    """Controls above a matplotlib figure that is redrawn as a PNG on every change.

    Subclasses create `self.out = W.Output()` and define `figure()`. `show()` puts the figure into the Output
    widget through its `outputs` state (not `with self.out:`, which routes output by message id and can stall
    headless executors such as nbclient), and the PNG also travels in the widget's own display bundle, so a
    notebook run without a browser keeps a still picture.
    """

    out: W.Output

    def __init__(self, children, **kwargs):
        super().__init__(children, **kwargs)
        _full_labels(self)

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
        rows, cols = self.grid
        start = min(49, n - 1) if query is None else query
        self.row = W.IntSlider(value=start // cols, min=0, max=rows - 1, description="query row",
                               continuous_update=False)
        self.col = W.IntSlider(value=start % cols, min=0, max=cols - 1, description="query column",
                               continuous_update=False)
        self.temperature = W.FloatLogSlider(value=temperature, base=10, min=-2, max=1, step=0.05,
                                            description="temperature", continuous_update=False)
        self.cosine = W.Checkbox(value=False, description="cosine (normalise q and k)")
        self.out = W.Output()
        for control in (self.row, self.col, self.temperature, self.cosine):
            control.observe(self._redraw, names="value")
        super().__init__([W.HBox([self.row, self.col]), W.HBox([self.temperature, self.cosine]), self.out])
        self._redraw()

    @property
    def query(self) -> int:
        """The query patch as a row-major index, row * columns + column (the bars' (row, col) labels)."""
        return self.row.value * self.grid[1] + self.col.value

    def weights(self, temperature: float | None = None) -> torch.Tensor:
        """The attention weights (N,) of the current query patch over all patches."""
        t = self.temperature.value if temperature is None else temperature
        f = self.features
        if self.cosine.value:
            f = torch.nn.functional.normalize(f, dim=-1)
            scores = f @ f[self.query] / t
        else:
            scores = f @ f[self.query] / (math.sqrt(f.shape[1]) * t)
        return scores.softmax(-1)

    def figure(self) -> Figure:
        """The current state as a static figure: weights over the photo, top weights, entropy vs temperature."""
        w = self.weights()
        n = w.numel()
        fig = Figure(figsize=(13, 3.9))
        ax_img, ax_bar, ax_h = fig.subplots(1, 3, width_ratios=[1.5, 1.2, 1])
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.2, top=0.9, wspace=0.22)
        viz.patch_weights_overlay(self.image, w, self.grid, query=self.query, ax=ax_img,
                                  title=f"query patch ({self.row.value}, {self.col.value}) (blue frame)")
        top = w.topk(min(self.top, n))
        cols = self.grid[1]
        labels = [f"{int(i) // cols},{int(i) % cols}" for i in top.indices]
        mine = (top.indices == self.query).nonzero()
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
        from matplotlib.ticker import MaxNLocator

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
        for axis in (ax_mat.xaxis, ax_mat.yaxis):
            axis.set_major_locator(MaxNLocator(integer=True))  # token numbers, never 2.5
        viz.attention_distance_plot(self.distances, ax=ax_dist, title="mean attention distance, every head")
        if not self.rollout.value:
            heads = self.distances.shape[1]
            offset = np.linspace(-0.15, 0.15, heads)[self.head.value] if heads > 1 else 0.0
            ax_dist.scatter([self.layer.value + offset], [float(self.distances[self.layer.value - 1, self.head.value])],
                            s=80, color="tab:red", zorder=3, label="this head")
            ax_dist.legend(fontsize=8)
        fig.suptitle(what, fontsize=12)
        return fig




# ---- 07_detection: predictions above a score threshold ----

class DetectionExplorer(FigureWidget):
    """A detector's predictions on a page of images, kept when their score exceeds the threshold slider.

    `found` holds every query of every image ({"scores", "labels", "boxes"} per image, as
    `vitlab.detection.detect(..., threshold=0)` gives them); ground truth is drawn dashed. Each panel counts
    true positives (IoU >= 0.5 with an unclaimed box of the same class, best scores first), false positives and
    missed objects, so moving the slider shows the trade that the precision-recall curve sums up.
    """

    def __init__(self, images: torch.Tensor, found: list[dict], targets: list[dict], class_names, page: int = 0,
                 threshold: float = 0.5, per_page: int = 6):
        self.images, self.found, self.targets, self.class_names = images, found, targets, list(class_names)
        self.per_page = per_page
        self.page = W.IntSlider(value=page, min=0, max=(len(images) - 1) // per_page, description="page")
        self.threshold = W.FloatSlider(value=threshold, min=0.0, max=0.99, step=0.01, description="score >")
        self.out = W.Output()
        for control in (self.page, self.threshold):
            control.observe(self._redraw, names="value")
        super().__init__([W.HBox([self.page, self.threshold]), self.out])
        self.show()

    def counts(self, i: int) -> tuple[int, int, int]:
        """(true positives, false positives, missed objects) of image i at the current threshold."""
        from vitlab.detection import box_cxcywh_to_xyxy, box_iou

        found, target = self.found[i], self.targets[i]
        keep = found["scores"] > self.threshold.value
        order = found["scores"][keep].argsort(descending=True)
        boxes, labels = found["boxes"][keep][order], found["labels"][keep][order]
        if not len(boxes) or not len(target["boxes"]):
            return 0, len(boxes), len(target["boxes"])
        iou = box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(target["boxes"]))[0]
        claimed, tp = set(), 0
        for p in range(len(boxes)):
            free = [(iou[p, t].item(), t) for t in range(len(target["boxes"]))
                    if t not in claimed and target["labels"][t] == labels[p] and iou[p, t] >= 0.5]
            if free:
                claimed.add(max(free)[1])
                tp += 1
        return tp, len(boxes) - tp, len(target["boxes"]) - tp

    def figure(self) -> Figure:
        start = self.page.value * self.per_page
        shown = range(start, min(start + self.per_page, len(self.images)))
        fig = Figure(figsize=(2.6 * self.per_page, 3.1))
        axes = fig.subplots(1, self.per_page, squeeze=False)[0]
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.02, top=0.8, wspace=0.05)
        totals = np.zeros(3, dtype=int)
        for ax, i in zip(axes, shown):
            keep = self.found[i]["scores"] > self.threshold.value
            kept = {k: v[keep] for k, v in self.found[i].items()}
            tp, fp, missed = self.counts(i)
            totals += (tp, fp, missed)
            viz.scene_panel(ax, self.images[i], self.targets[i], kept, self.class_names,
                            title=f"image {i}: {tp} hit, {fp} false, {missed} missed")
        for ax in axes[len(shown):]:
            ax.axis("off")
        fig.suptitle(f"score > {self.threshold.value:.2f}: {totals[0]} hits, {totals[1]} false alarms, "
                     f"{totals[2]} missed on this page (dashed white: ground truth)", fontsize=11)
        return fig


# ---- 10_beyond: the ImageGPT palette explorer ----


class PaletteExplorer(FigureWidget):
    """A photo quantised to a k-colour palette learned by k-means (ImageGPT's pixel tokens), with a k slider.

    The palette is fitted on a random sample of the photo's pixels, from k distinct sampled pixels, with
    `vitlab.beyond.kmeans`; each k is fitted once and kept. The figure shows the photo, its quantised version
    with the error per pixel, and the palette sorted by how many pixels use each colour.
    """

    def __init__(self, photo: str = "chelsea", size: int = 96, k: int = 8, sample: int = 4096, seed: int = 0):
        from vitlab import data

        self.image = data.photo(photo, size)
        pixels = self.image.permute(1, 2, 0).reshape(-1, 3)
        pick = torch.randperm(len(pixels), generator=torch.Generator().manual_seed(seed))[:sample]
        self.sample, self.seed, self.palettes = pixels[pick], seed, {}
        self.k = W.SelectionSlider(options=[2, 4, 8, 16, 32, 64, 128, 512], value=k, description="palette k",
                                   continuous_update=False)
        self.out = W.Output()
        self.k.observe(self._redraw, names="value")
        super().__init__([self.k, self.out])
        self._redraw()

    def palette(self, k: int | None = None) -> torch.Tensor:
        """The fitted palette (k, 3) for k colours (the slider's k by default)."""
        from vitlab import beyond

        k = self.k.value if k is None else k
        if k not in self.palettes:
            start = beyond.init_palette(self.sample, k, self.seed)
            self.palettes[k] = beyond.kmeans(self.sample, start, max_iter=30)[0]
        return self.palettes[k]

    def figure(self) -> Figure:
        from vitlab import beyond

        palette = self.palette()
        indices = beyond.quantise(self.image[None], palette)[0]
        quantised = beyond.dequantise(indices[None], palette)[0]
        error = (quantised - self.image).pow(2).mean().sqrt().item()
        fig = Figure(figsize=(11, 3.8), layout="constrained")
        axes = fig.subplots(1, 3, width_ratios=[1, 1, 1.2])
        for ax, img, title in ((axes[0], self.image, "photo (24-bit colour)"),
                               (axes[1], quantised, f"k = {len(palette)}: RMS error {error:.3f}")):
            ax.imshow(img.permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            ax.set(title=title, xticks=[], yticks=[])
        counts = torch.bincount(indices.flatten(), minlength=len(palette))
        order = counts.argsort(descending=True)
        share = (counts[order].float() / counts.sum()).numpy()
        axes[2].bar(range(len(palette)), share, color=palette[order].clamp(0, 1).numpy(), width=1.0,
                    edgecolor="black" if len(palette) <= 32 else "none", linewidth=0.5)
        axes[2].set(title=f"the palette: {math.log2(len(palette)):.0f} bits per pixel token",
                    xlabel="colour, by use", ylabel="share of pixels")
        return fig


# ---- 08_segmentation: a segmenter's score maps, upsampling and threshold ----


class SegmentationExplorer(FigureWidget):
    """What a trained `vitlab.segmentation.Segmenter` sees: pick an image, a class, an upsampling mode, a threshold.

    The decoder's scores on the patch grid are computed once for `images` (B, 3, H, W). Panels: the image; the
    true mask; the decoder's raw score for the class on the patch grid (for the mask transformer, a LayerNorm of
    cosine similarities); its probability after upsampling and the softmax, with the threshold's outline; and the
    pixels above the threshold against the truth (white: both, red: predicted only, blue: missed), with their IoU.
    """

    def __init__(self, model, images: torch.Tensor, masks: torch.Tensor, class_names, image: int = 0,
                 klass: int = 1):
        from vitlab import segmentation

        was_training = model.training
        model.eval()
        backbone, patch = model.backbone, model.backbone.patch_size
        with torch.no_grad():
            device = next(model.parameters()).device
            padded = segmentation.pad_to_multiple(images.to(device), patch)
            grid = (padded.shape[-2] // patch, padded.shape[-1] // patch)
            tokens = backbone.forward_features(padded)[:, backbone.num_prefix_tokens:]
            self.scores = model.decoder(tokens, grid).float().cpu()              # (B, K, h, w)
        model.train(was_training)
        self.images, self.masks, self.patch = images.cpu(), masks.cpu(), patch
        self.class_names = list(class_names)
        opts = dict(continuous_update=False)
        self.image = W.IntSlider(value=image, min=0, max=len(images) - 1, description="image", **opts)
        self.klass = W.Dropdown(options=[(n, k) for k, n in enumerate(self.class_names)], value=klass,
                                description="class")
        self.mode = W.ToggleButtons(options=["nearest", "bilinear", "bicubic"], value="bilinear",
                                    description="upsampling")
        self.threshold = W.FloatSlider(value=0.5, min=0.05, max=0.95, step=0.05, description="threshold", **opts)
        self.out = W.Output()
        for control in (self.image, self.klass, self.mode, self.threshold):
            control.observe(self._redraw, names="value")
        super().__init__([W.HBox([self.image, self.klass]), W.HBox([self.mode, self.threshold]), self.out])
        self._redraw()

    def probability(self) -> torch.Tensor:
        """The chosen class's probability (H, W) for the chosen image, upsampling mode applied before the softmax."""
        from vitlab import segmentation

        b = self.image.value
        size = tuple(self.images.shape[-2:])
        logits = segmentation.upsample_to(self.scores[b:b + 1], size, self.patch, self.mode.value)
        return logits.softmax(1)[0, self.klass.value]

    def figure(self) -> Figure:
        b, k = self.image.value, self.klass.value
        prob = self.probability()
        predicted, truth = prob > self.threshold.value, self.masks[b] == k
        union = int((predicted | truth).sum())
        iou = int((predicted & truth).sum()) / union if union else float("nan")
        fig = Figure(figsize=(14, 3.6))
        axes = fig.subplots(1, 5)
        fig.subplots_adjust(left=0.01, right=0.99, bottom=0.04, top=0.8, wspace=0.08)
        axes[0].imshow(viz.image_hwc(self.images[b]), interpolation="nearest")
        axes[0].set_title(f"image {b}", fontsize=9)
        axes[1].imshow(viz.colour_mask(self.masks[b]), interpolation="nearest")
        axes[1].set_title("true mask", fontsize=9)
        axes[2].imshow(viz.to_numpy(self.scores[b, k]), cmap="viridis", interpolation="nearest")
        axes[2].set_title(f"decoder score for '{self.class_names[k]}'\non the {self.scores.shape[-2]} x "
                          f"{self.scores.shape[-1]} patch grid", fontsize=9)
        axes[3].imshow(viz.to_numpy(prob), cmap="magma", vmin=0, vmax=1, interpolation="nearest")
        axes[3].contour(viz.to_numpy(prob), levels=[self.threshold.value], colors="cyan", linewidths=1)
        axes[3].set_title(f"P({self.class_names[k]}), {self.mode.value} upsampling\noutline at "
                          f"{self.threshold.value:.2f}", fontsize=9)
        both = np.zeros((*truth.shape, 3))
        both[viz.to_numpy(predicted & truth) > 0] = (1, 1, 1)
        both[viz.to_numpy(predicted & ~truth) > 0] = (0.9, 0.2, 0.2)
        both[viz.to_numpy(~predicted & truth) > 0] = (0.2, 0.4, 1.0)
        axes[4].imshow(both, interpolation="nearest")
        axes[4].set_title(f"above threshold vs truth: IoU {iou:.3f}\nwhite both, red extra, blue missed", fontsize=9)
        for ax in axes:
            ax.set_axis_off()
        return fig


# ---- 06_transfer_and_scale: layer-wise lr decay, layer by layer ----

from matplotlib.ticker import FuncFormatter, NullFormatter  # noqa: E402 - this block's own import


class LayerDecayExplorer(FigureWidget):
    """The lr multiplier of every layer of a ViT under layer-wise lr decay, and where the parameters sit.

    Layer 0 is the stem, i + 1 block i, L + 1 the final norm and head (BEiT's convention); layer j trains at
    decay ** (L + 1 - j) of the head's rate. Models are built on the meta device, so counting costs nothing.
    """

    def __init__(self, configs: dict[str, dict], decay: float = 0.65):
        self.configs = configs
        self.model = W.Dropdown(options=list(configs), description="model")
        self.decay = W.FloatSlider(value=decay, min=0.4, max=1.0, step=0.05, description="layer decay",
                                   continuous_update=False)
        self.out = W.Output()
        for control in (self.model, self.decay):
            control.observe(self._redraw, names="value")
        super().__init__([W.HBox([self.model, self.decay]), self.out])
        self._redraw()

    def layers(self) -> tuple[np.ndarray, np.ndarray]:
        """(parameters per layer, lr multiplier per layer) for the chosen model and decay."""
        from vitlab.transfer import layer_id
        from vitlab.vit import VisionTransformer

        config = self.configs[self.model.value]
        with torch.device("meta"):
            model = VisionTransformer(**config)
        depth = len(model.blocks)
        counts = np.zeros(depth + 2)
        for name, p in model.named_parameters():
            counts[layer_id(name, depth)] += p.numel()
        return counts, self.decay.value ** (depth + 1 - np.arange(depth + 2))

    def figure(self) -> Figure:
        counts, scale = self.layers()
        fig = Figure(figsize=(13, 3.8))
        ax_lr, ax_share = fig.subplots(1, 2)
        fig.subplots_adjust(left=0.07, right=0.98, bottom=0.16, top=0.86, wspace=0.25)
        x = np.arange(len(scale))
        ax_lr.bar(x, scale, color="tab:blue")
        ax_lr.set_yscale("log")
        ax_lr.set_ylim(min(scale.min() / 2, 0.5), 1.5)
        ax_lr.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # plain labels: no mathtext
        ax_lr.yaxis.set_minor_formatter(NullFormatter())
        ax_lr.set_xlabel("layer (0 = stem, 1..L = blocks, L + 1 = norm + head)")
        ax_lr.set_ylabel("lr / head lr (log)")
        ax_lr.set_title(f"stem at {scale[0]:.2g} of the head's lr, first block at {scale[1]:.2g}")
        moved = (counts * scale).sum() / counts.sum()
        ax_share.bar(x, counts / counts.sum(), color=[(0.12, 0.47, 0.71, 0.25 + 0.75 * s) for s in scale])
        ax_share.set_xlabel("layer")
        ax_share.set_ylabel("share of all parameters")
        ax_share.set_title(f"parameter-weighted mean lr: {moved:.2f} of the head's (darker = faster)")
        return fig


# ---- 05_training: mixup and cutmix, lambda by lambda ----
class MixExplorer(FigureWidget):
    """Mix two images with mixup or cutmix: a lambda slider, the cutmix box's centre, and the soft target.

    images (N, C, H, W) in [0, 1], labels (N,), class_names. Image A is `first`, its partner B is `second`. The
    panels show A, B, the mixed image (cutmix: the box from B outlined) and the target that goes with it,
    label-smoothed by `smoothing`; for cutmix the lambda actually used is 1 - box area / image area.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, class_names, first: int = 0, second: int = 1,
                 smoothing: float = 0.1):
        self.images, self.labels, self.class_names, self.smoothing = images, labels, list(class_names), smoothing
        h, w = images.shape[-2:]
        n = len(images)
        self.mode = W.ToggleButtons(options=["mixup", "cutmix"], value="cutmix", description="mode")
        self.lam = W.FloatSlider(value=0.6, min=0.0, max=1.0, step=0.02, description="lambda", continuous_update=False)
        self.cy = W.IntSlider(value=h // 2, min=0, max=h - 1, description="box row", continuous_update=False)
        self.cx = W.IntSlider(value=w // 2, min=0, max=w - 1, description="box column", continuous_update=False)
        self.first = W.IntSlider(value=first, min=0, max=n - 1, description="image A", continuous_update=False)
        self.second = W.IntSlider(value=second, min=0, max=n - 1, description="image B", continuous_update=False)
        self.out = W.Output()
        for control in (self.mode, self.lam, self.cy, self.cx, self.first, self.second):
            control.observe(self._redraw, names="value")
        super().__init__([W.HBox([self.mode, self.lam]), W.HBox([self.cy, self.cx]),
                          W.HBox([self.first, self.second]), self.out])
        self._redraw()

    def mixed(self) -> tuple[torch.Tensor, torch.Tensor, float, tuple[int, int, int, int] | None]:
        """(mixed image (C, H, W), soft target (K,), the lambda used, the cutmix box or None)."""
        from vitlab import augment, train

        pair = self.images[[self.first.value, self.second.value]]
        # the batch [A, B] flipped is [B, A]: A's partner is B, as in a training batch
        targets = train.smooth_targets(self.labels[[self.first.value, self.second.value]], len(self.class_names),
                                       self.smoothing)
        lam = self.lam.value
        if self.mode.value == "mixup":
            x, t = augment.mixup(pair, targets, lam)
            return x[0], t[0], lam, None
        h, w = pair.shape[-2:]
        box = augment.cutmix_box(h, w, lam, self.cy.value, self.cx.value)
        x, t = augment.cutmix(pair, targets, lam, self.cy.value, self.cx.value)
        return x[0], t[0], 1 - (box[1] - box[0]) * (box[3] - box[2]) / (h * w), box

    def figure(self) -> Figure:
        from matplotlib.patches import Rectangle
        from matplotlib.ticker import MaxNLocator

        image, target, used, box = self.mixed()
        fig = Figure(figsize=(13, 3.4))
        axes = fig.subplots(1, 4, width_ratios=[1, 1, 1, 1.6])
        fig.subplots_adjust(left=0.02, right=0.98, bottom=0.22, top=0.85, wspace=0.25)
        a, b = self.first.value, self.second.value
        for ax, img, title in [(axes[0], self.images[a], f"A: {self.class_names[int(self.labels[a])]}"),
                               (axes[1], self.images[b], f"B: {self.class_names[int(self.labels[b])]}"),
                               (axes[2], image, f"{self.mode.value}, lambda used {used:.2f}")]:
            pixels = viz.image_hwc(img)
            ax.imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, cmap="gray_r", vmin=0, vmax=1,
                      interpolation="nearest")
            ax.set_title(title, fontsize=9)
            ax.set_axis_off()
        if box is not None:
            y0, y1, x0, x1 = box
            axes[2].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color="tab:red", lw=2))
            axes[2].set_title(f"cutmix: box {y1 - y0} x {x1 - x0}, lambda used {used:.2f}", fontsize=9)
        k = len(self.class_names)
        axes[3].bar(range(k), target.numpy(), color="tab:blue")
        axes[3].set_xticks(range(k), self.class_names, rotation=30, fontsize=8)
        axes[3].set_ylim(0, 1)
        axes[3].set_title(f"soft target (label smoothing {self.smoothing})", fontsize=9)
        for i, v in enumerate(target.tolist()):
            axes[3].text(i, v + 0.02, f"{v:.3f}", ha="center", fontsize=7)
        return fig


# ---- 09_clip: the contrastive temperature, on a trained model's similarities ----


class TemperatureExplorer(FigureWidget):
    """What tau does to CLIP's softmax over captions: a temperature slider over a (N, N) cosine-similarity matrix.

    Left: the image -> text probabilities softmax(sim / tau) of every row (image i's caption is text i). Middle: one
    image's row as bars. Right: the contrastive loss and the mean probability of the right caption against tau,
    with the current tau and the model's learned one marked. Smaller tau, sharper rows.
    """

    def __init__(self, similarity: torch.Tensor, learned_tau: float | None = None, tau: float = 0.07,
                 row: int = 0, labels=None):
        self.similarity = similarity.detach().double().cpu()
        n = self.similarity.shape[0]
        self.learned_tau = learned_tau
        self.labels = labels
        self.tau = W.FloatLogSlider(value=tau, base=10, min=-2.3, max=0.5, step=0.05, description="tau",
                                    continuous_update=False)
        self.row = W.IntSlider(value=row, min=0, max=n - 1, description="image", continuous_update=False)
        self.out = W.Output()
        for control in (self.tau, self.row):
            control.observe(self._redraw, names="value")
        super().__init__([W.HBox([self.tau, self.row]), self.out])
        self._redraw()

    def probabilities(self, tau: float | None = None) -> torch.Tensor:
        """softmax(similarity / tau) over each row: (N, N)."""
        return (self.similarity / (self.tau.value if tau is None else tau)).softmax(dim=-1)

    def loss(self, tau: float) -> float:
        """The symmetric contrastive loss of the matrix at temperature tau."""
        logits = self.similarity / tau
        labels = torch.arange(len(logits))
        return float((torch.nn.functional.cross_entropy(logits, labels)
                      + torch.nn.functional.cross_entropy(logits.T, labels)) / 2)

    def figure(self) -> Figure:
        p = self.probabilities()
        n, i = p.shape[0], self.row.value
        fig = Figure(figsize=(14, 4.0))
        ax_m, ax_b, ax_l = fig.subplots(1, 3, width_ratios=[1.1, 1.3, 1.1])
        fig.subplots_adjust(left=0.05, right=0.98, bottom=0.16, top=0.88, wspace=0.3)
        viz.attention_heatmap(p, ax=ax_m, vmin=0, vmax=1, colorbar=False, xlabel="caption", ylabel="image",
                              title=f"softmax(sim / {self.tau.value:.3f}) per image")
        ax_m.axhline(i, color="tab:red", lw=0.8)
        colours = ["tab:green" if j == i else "tab:blue" for j in range(n)]
        ax_b.bar(range(n), p[i].numpy(), color=colours)
        ax_b.set_ylim(0, 1)
        name = f" ({self.labels[i]})" if self.labels is not None else ""
        ax_b.set_title(f"image {i}{name}: P(right caption) = {p[i, i]:.2f}", fontsize=9)
        ax_b.set_xlabel("caption (green: the right one)")
        taus = np.logspace(-2.3, 0.5, 60)
        ax_l.semilogx(taus, [self.loss(t) for t in taus], color="tab:blue", label="contrastive loss")
        ax_l.semilogx(taus, [float(self.probabilities(t).diagonal().mean()) for t in taus], color="tab:green",
                      label="mean P(right caption)")
        ax_l.axhline(math.log(n), color="gray", ls="--", lw=1, label=f"log N = {math.log(n):.2f} (chance)")
        ax_l.axvline(self.tau.value, color="tab:red", lw=1, label="tau now")
        if self.learned_tau is not None:
            ax_l.axvline(self.learned_tau, color="black", ls=":", lw=1, label=f"learned tau {self.learned_tau:.3f}")
        ax_l.set_xlabel("temperature tau")
        ax_l.legend(fontsize=7)
        ax_l.set_title(f"loss at tau = {self.tau.value:.3f}: {self.loss(self.tau.value):.3f}", fontsize=9)
        return fig
