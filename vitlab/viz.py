"""Figure helpers for the chapters: attention heatmaps, grids of heatmaps, line plots, weight bars.

Every helper takes tensors or arrays, draws with matplotlib and returns the `Figure`. Pass `ax=` to draw into
an axes you made yourself (several panels in one figure); otherwise a new figure is created with pyplot, so
that Jupyter shows it at the end of the cell.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import matplotlib.ticker as ticker
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def to_numpy(x) -> np.ndarray:
    """A float numpy copy of a tensor (any device, with or without grad), array or nested list."""
    if isinstance(x, torch.Tensor):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=float)


def _axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, layout="constrained")
        return fig, ax
    return ax.figure, ax


def _label_ticks(ax: Axes, query_labels: Sequence[str] | None, key_labels: Sequence[str] | None,
                 rotate: bool = True) -> None:
    if key_labels is not None:
        ax.set_xticks(range(len(key_labels)), key_labels, rotation=90 if rotate else 0, fontsize=8)
    if query_labels is not None:
        ax.set_yticks(range(len(query_labels)), query_labels, fontsize=8)


def _annotate(ax: Axes, a: np.ndarray, fmt: str) -> None:
    """Write each value of the 2-D array `a` in its cell, dark on light cells and light on dark ones."""
    low, high = ax.images[-1].get_clim()
    middle = (low + high) / 2
    for i, j in np.ndindex(*a.shape):
        ax.text(j, i, fmt.format(a[i, j]), ha="center", va="center", fontsize=7,
                color="black" if a[i, j] > middle else "white")


def attention_heatmap(weights, query_labels: Sequence[str] | None = None, key_labels: Sequence[str] | None = None,
                      *, ax: Axes | None = None, title: str | None = None, annotate: bool = False,
                      vmin: float | None = 0.0, vmax: float | None = None, cmap: str = "viridis",
                      colorbar: bool = True, xlabel: str = "key", ylabel: str = "query") -> Figure:
    """Draw a (Lq, Lk) matrix of attention weights: row i is what query i attends to.

    Entries that are exactly zero (blocked keys) show in the lowest colour. `annotate` writes each value in its
    cell (for small matrices). Set `vmin=None` for signed data such as scores.
    """
    w = to_numpy(weights)
    if w.ndim != 2:
        raise ValueError(f"attention_heatmap wants a 2-D (Lq, Lk) matrix, got shape {w.shape}")
    fig, ax = _axes(ax, (1.2 + 0.45 * w.shape[1], 1.0 + 0.4 * w.shape[0]))
    image = ax.imshow(w, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    _label_ticks(ax, query_labels, key_labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if annotate:
        _annotate(ax, w, "{:.2f}")
    if colorbar:
        fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def heatmap_grid(maps, titles: Sequence[str] | None = None, *, query_labels: Sequence[str] | None = None,
                 key_labels: Sequence[str] | None = None, ncols: int = 4, suptitle: str | None = None,
                 shared_scale: bool = True, vmin: float | None = 0.0, cmap: str = "viridis",
                 panel_size: float = 2.4, annotate: str | None = None) -> Figure:
    """Draw several 2-D maps side by side, e.g. the (H, Lq, Lk) attention weights of the heads of one layer.

    `maps` is a tensor/array of shape (n, rows, cols) or a list of 2-D maps (shapes may differ when
    `shared_scale` is False). One image per map; unused grid cells are removed. `annotate`, a format
    string such as "{:.0f}", writes each value in its cell.
    """
    arrays = [to_numpy(m) for m in maps]
    if not arrays or any(a.ndim != 2 for a in arrays):
        raise ValueError("heatmap_grid wants a non-empty stack or list of 2-D maps")
    n = len(arrays)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size * ncols + 0.6, panel_size * nrows + 0.4),
                             layout="constrained", squeeze=False)
    low = min(float(np.nanmin(a)) for a in arrays) if vmin is None else vmin
    high = max(float(np.nanmax(a)) for a in arrays)
    image = None
    kept = []
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.remove()
            continue
        kept.append(ax)
        a = arrays[i]
        scale = dict(vmin=low, vmax=high) if shared_scale else dict(vmin=vmin)
        image = ax.imshow(a, cmap=cmap, aspect="auto", interpolation="nearest", **scale)
        if annotate:
            _annotate(ax, a, annotate)
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
        first_col, last_row = i % ncols == 0, i >= n - ncols
        _label_ticks(ax, query_labels if first_col else None, key_labels if last_row else None)
        if query_labels is None or not first_col:
            ax.set_yticks([])
        if key_labels is None or not last_row:
            ax.set_xticks([])
    if shared_scale and image is not None:
        fig.colorbar(image, ax=kept, shrink=0.8)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def line_plot(x, series: Mapping[str, Sequence[float]], *, ax: Axes | None = None, xlabel: str = "",
              ylabel: str = "", title: str | None = None, logx: bool = False, logy: bool = False,
              styles: Mapping[str, str] | None = None, markers: bool = True) -> Figure:
    """One line per entry of `series` (label -> y values, same length as `x`; NaN leaves a gap).

    `styles` maps a label to a matplotlib format string such as "k--" (a reference line, say).
    """
    fig, ax = _axes(ax, (5.5, 3.6))
    xs = to_numpy(x)
    for label, ys in series.items():
        ys = to_numpy(ys)
        if ys.shape != xs.shape:
            raise ValueError(f"series {label!r} has {ys.shape[0]} values for {xs.shape[0]} x positions")
        fmt = (styles or {}).get(label, "-o" if markers else "-")
        ax.plot(xs, ys, fmt, label=label, markersize=4)
    if logx:
        ax.set_xscale("log", base=2)
        # plain numbers at the powers of two; matplotlib would also label some minor ticks, rounded to 2^k
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def weights_bar(weights, labels: Sequence[str] | None = None, *, ax: Axes | None = None, title: str | None = None,
                highlight: int | None = None) -> Figure:
    """A bar chart of one row of attention weights (one bar per key); `highlight` colours one bar red."""
    w = to_numpy(weights).reshape(-1)
    fig, ax = _axes(ax, (max(4.0, 0.35 * len(w) + 1.0), 2.8))
    colours = ["tab:red" if i == highlight else "tab:blue" for i in range(len(w))]
    ax.bar(range(len(w)), w, color=colours)
    if labels is not None:
        ax.set_xticks(range(len(w)), labels, rotation=90, fontsize=8)
    ax.set_ylabel("weight")
    ax.set_ylim(0, max(1e-9, float(w.max())) * 1.1)
    if title:
        ax.set_title(title)
    return fig


def patch_weights_overlay(image, weights, grid: tuple[int, int], *, query: int | None = None,
                          ax: Axes | None = None, title: str | None = None, alpha: float = 0.7) -> Figure:
    """Draw `image` (H, W, 3) with one attention row over its `grid` = (rows, cols) of patches.

    `weights` has rows * cols entries in row-major patch order; each patch is tinted with an opacity
    proportional to its weight (the largest gets `alpha`). `query` (a patch index) gets a blue frame.
    """
    img = to_numpy(image)
    if img.max() > 1.0:
        img = img / 255.0
    rows, cols = grid
    w = to_numpy(weights).reshape(rows, cols)
    fig, ax = _axes(ax, (5.0, 5.0 * img.shape[0] / img.shape[1]))
    height, width = img.shape[:2]
    ax.imshow(img, extent=(0, width, height, 0))
    top = max(1e-12, float(w.max()))
    ax.imshow(w, cmap="autumn_r", alpha=alpha * w / top, extent=(0, width, height, 0), interpolation="nearest",
              vmin=0, vmax=top)
    if query is not None:
        ph, pw = height / rows, width / cols
        r, c = divmod(query, cols)
        ax.add_patch(Rectangle((c * pw, r * ph), pw, ph, fill=False, edgecolor="tab:blue", linewidth=2.5))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return fig


# ------------------------------------------------------------------------------------------- patches


def image_hwc(image) -> np.ndarray:
    """An image as a float (H, W, C) array in [0, 1]: tensors are read as (C, H, W), arrays as (H, W, C)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu()
        image = image.permute(1, 2, 0) if image.ndim == 3 else image
    img = np.asarray(image, dtype=float)
    return img / 255.0 if img.max() > 1.0 else img


def _show(ax: Axes, img: np.ndarray) -> None:
    """imshow with pixel edges on integer coordinates: pixel (r, c) covers [c, c+1) x [r, r+1)."""
    height, width = img.shape[:2]
    ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
              extent=(0, width, height, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def patch_grid(image, patch: int, *, ax: Axes | None = None, title: str | None = None, numbers: bool = False,
               color: str = "white", max_lines: int = 64) -> Figure:
    """Draw `image` cut into `patch` x `patch` patches: the grid, and (`numbers`) each token's index.

    Rows and columns left over when a side is not a multiple of `patch` are shaded: no patch covers them.
    Grid lines are left out when a side has more than `max_lines` patches (the picture would be all lines).
    """
    img = image_hwc(image)
    height, width = img.shape[:2]
    rows, cols = height // patch, width // patch
    fig, ax = _axes(ax, (5.0, 5.0 * height / width))
    _show(ax, img)
    if max(rows, cols) <= max_lines:
        for r in range(rows + 1):
            ax.plot([0, cols * patch], [r * patch, r * patch], color=color, lw=0.8)
        for c in range(cols + 1):
            ax.plot([c * patch, c * patch], [0, rows * patch], color=color, lw=0.8)
    for x, y, w, h in ((cols * patch, 0, width - cols * patch, height), (0, rows * patch, cols * patch,
                                                                          height - rows * patch)):
        if w > 0 and h > 0:
            ax.add_patch(Rectangle((x, y), w, h, facecolor="black", alpha=0.55, hatch="//", edgecolor="gray"))
    if numbers:
        size = max(5.0, min(9.0, 200 / max(rows, cols)))
        for i in range(rows * cols):
            r, c = divmod(i, cols)
            ax.text((c + 0.5) * patch, (r + 0.5) * patch, str(i), ha="center", va="center", fontsize=size,
                    color="black", bbox=dict(boxstyle="round,pad=0.1", fc="white", ec="none", alpha=0.7))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    if title:
        ax.set_title(title)
    return fig


def token_strip(image, patch: int, tokens: Sequence[int] | None = None, *, stride: int | None = None,
                ax: Axes | None = None, title: str | None = None, gap: float = 0.15) -> Figure:
    """Draw some tokens of `image` side by side, in sequence order, each labelled with its index.

    Token i is the `patch` x `patch` window in row i // cols, column i % cols of the window grid, windows
    `stride` pixels apart (default `patch`: no overlap). `tokens` defaults to the first two rows of the grid
    (at most 32). `gap` is the space between tiles, as a fraction of a tile.
    """
    img = image_hwc(image)
    stride = patch if stride is None else stride
    rows, cols = (img.shape[0] - patch) // stride + 1, (img.shape[1] - patch) // stride + 1
    if tokens is None:
        tokens = range(min(2 * cols, 32, rows * cols))
    tokens = list(tokens)
    step = patch + max(1, round(gap * patch))
    canvas = np.ones((patch, step * len(tokens) - (step - patch), img.shape[2]))
    for k, i in enumerate(tokens):
        r, c = divmod(i, cols)
        canvas[:, k * step:k * step + patch] = img[r * stride:r * stride + patch, c * stride:c * stride + patch]
    fig, ax = _axes(ax, (min(16.0, 0.55 * len(tokens) + 1), 1.3))
    _show(ax, canvas)
    ax.set_xticks([k * step + patch / 2 for k in range(len(tokens))], [str(i) for i in tokens],
                  fontsize=7 if len(tokens) > 20 else 8)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    return fig


def overlap_windows(image, kernel: int, stride: int, padding: int = 0,
                    windows: Sequence[tuple[int, int]] | None = None, *, ax: Axes | None = None,
                    title: str | None = None) -> Figure:
    """Draw `image` with some `kernel` x `kernel` windows, `stride` apart, outlined in turn in four colours.

    `padding` pixels of zeros are drawn around the image (light grey). `windows` lists (row, col) grid
    positions; the default is the first three of row 0 and the first two of row 1, where they overlap.
    """
    img = image_hwc(image)
    height, width = img.shape[:2]
    padded = np.full((height + 2 * padding, width + 2 * padding, img.shape[2]), 0.85)
    padded[padding:padding + height, padding:padding + width] = img
    rows = (height + 2 * padding - kernel) // stride + 1
    cols = (width + 2 * padding - kernel) // stride + 1
    if windows is None:
        windows = [(r, c) for r, c in ((0, 0), (0, 1), (0, 2), (1, 0), (1, 1)) if r < rows and c < cols]
    fig, ax = _axes(ax, (5.0, 5.0 * padded.shape[0] / padded.shape[1]))
    _show(ax, padded)
    if padding:
        ax.add_patch(Rectangle((padding, padding), width, height, fill=False, edgecolor="gray", ls="--", lw=1))
    colours = ["tab:red", "tab:cyan", "gold", "tab:green"]
    for k, (r, c) in enumerate(windows):
        inset = 0.4 + 0.6 * (k % 2)
        ax.add_patch(Rectangle((c * stride + inset, r * stride + inset), kernel - 2 * inset, kernel - 2 * inset,
                               fill=False, edgecolor=colours[k % len(colours)], lw=2))
    if title:
        ax.set_title(title)
    return fig


# ------------------------------------------------------------------------------------------ positions


def grid_map(values, grid: tuple[int, int], *, ax: Axes | None = None, mark: tuple[int, int] | None = None,
             title: str | None = None, cmap: str = "viridis", vmin: float | None = None, vmax: float | None = None,
             colorbar: bool = True) -> Figure:
    """Draw one value per patch, `grid` = (rows, cols) values in row-major order, as a (rows, cols) image.

    `mark` = (row, col) frames one patch (the query of a similarity map, say).
    """
    rows, cols = grid
    v = to_numpy(values).reshape(rows, cols)
    fig, ax = _axes(ax, (3.6, 3.2 * rows / cols + 0.4))
    image = ax.imshow(v, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    if mark is not None:
        r, c = mark
        ax.add_patch(Rectangle((c - 0.5, r - 0.5), 1, 1, fill=False, edgecolor="tab:red", linewidth=2))
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    if title:
        ax.set_title(title, fontsize=10)
    if colorbar:
        fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def similarity_mosaic(similarity, grid: tuple[int, int], *, step: int = 1, ax: Axes | None = None,
                      title: str | None = None, cmap: str = "viridis", vmin: float | None = None,
                      vmax: float | None = None, colorbar: bool = True) -> Figure:
    """The ViT paper's position-similarity picture: one small map per patch, laid out on the patch grid.

    `similarity` is (N, N) for N = rows * cols patches in row-major order (a cosine similarity, say). The
    small map at (r, c) is row r * cols + c of it, reshaped to (rows, cols). `step` > 1 keeps every step-th
    row and column of panels only. Panels are separated by a blank line of pixels; one colour scale for all
    (`vmin`, `vmax`, default the data's range).
    """
    rows, cols = grid
    s = to_numpy(similarity)
    if s.shape != (rows * cols, rows * cols):
        raise ValueError(f"a {rows} x {cols} grid needs a ({rows * cols}, {rows * cols}) similarity, got {s.shape}")
    picked_r, picked_c = list(range(0, rows, step)), list(range(0, cols, step))
    canvas = np.full((len(picked_r) * (rows + 1) - 1, len(picked_c) * (cols + 1) - 1), np.nan)
    for i, r in enumerate(picked_r):
        for j, c in enumerate(picked_c):
            top, left = i * (rows + 1), j * (cols + 1)
            canvas[top:top + rows, left:left + cols] = s[r * cols + c].reshape(rows, cols)
    fig, ax = _axes(ax, (6.0, 6.0 * canvas.shape[0] / canvas.shape[1] + 0.3))
    image = ax.imshow(canvas, cmap=plt.get_cmap(cmap).with_extremes(bad="white"), vmin=vmin, vmax=vmax,
                      interpolation="nearest")
    ax.set_xticks([j * (cols + 1) + (cols - 1) / 2 for j in range(len(picked_c))], [str(c) for c in picked_c],
                  fontsize=7)
    ax.set_yticks([i * (rows + 1) + (rows - 1) / 2 for i in range(len(picked_r))], [str(r) for r in picked_r],
                  fontsize=7)
    ax.tick_params(length=0)
    ax.set_xlabel("column of the patch")
    ax.set_ylabel("row of the patch")
    for side in ax.spines.values():
        side.set_visible(False)
    if title:
        ax.set_title(title, fontsize=10)
    if colorbar:
        fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


# ------------------------------------------------------------------------------------ vision transformer


def show_images(images, titles: Sequence[str] | None = None, *, ncols: int = 8, colors: Sequence[str] | None = None,
                suptitle: str | None = None, panel_size: float = 1.3, cmap: str = "gray_r") -> Figure:
    """Draw a batch of images (N, C, H, W) tensor (C = 1 or 3; values in [0, 1]) in a grid, one title each.

    Single-channel images use `cmap` (ink dark on light by default); `colors` colours each title (say red for a
    wrong prediction).
    """
    x = to_numpy(images)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"show_images wants images of shape (N, 1 or 3, H, W), got {x.shape}")
    n = x.shape[0]
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size * ncols, (panel_size + 0.25) * nrows + 0.3),
                             layout="constrained", squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        if x.shape[1] == 1:
            ax.imshow(x[i, 0], cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        else:
            ax.imshow(np.clip(x[i].transpose(1, 2, 0), 0, 1), interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=8, color=colors[i] if colors is not None else "black")
    if suptitle:
        fig.suptitle(suptitle)
    return fig


def attention_distance_plot(distances, *, ax: Axes | None = None, title: str | None = None,
                            references: Mapping[str, float] | None = None, label: str | None = None,
                            color: str = "tab:blue", ylabel: str = "mean attention distance (pixels)") -> Figure:
    """One dot per head at each layer (x: layer 1..L, y: distance), as in the ViT paper's Figure 7 (right).

    `distances` is (layers, heads), e.g. `vitlab.vit.mean_attention_distance(...)`. `references` draws labelled
    horizontal lines (such as the distance of uniform attention). Dots of a layer are spread a little sideways.
    """
    d = to_numpy(distances)
    if d.ndim != 2:
        raise ValueError(f"attention_distance_plot wants a (layers, heads) array, got shape {d.shape}")
    fig, ax = _axes(ax, (5.0, 3.6))
    layers, heads = d.shape
    offsets = np.linspace(-0.15, 0.15, heads) if heads > 1 else np.zeros(1)
    x = np.arange(1, layers + 1)[:, None] + offsets[None, :]
    ax.scatter(x.ravel(), d.ravel(), s=22, color=color, alpha=0.8, label=label)
    for i, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, color="gray", ls=["--", ":", "-."][i % 3], lw=1, label=name)
    ax.set_xticks(range(1, layers + 1))
    ax.set_xlabel("layer (network depth)")
    ax.set_ylabel(ylabel)
    top = max([float(np.nanmax(d)), *[float(v) for v in (references or {}).values()]])
    ax.set_ylim(0, max(ax.get_ylim()[1], 1.1 * top))  # room for earlier calls on the same axes, and for this one
    if title:
        ax.set_title(title)
    if label or references:
        ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return fig


def stacked_bars(rows: Mapping[str, Mapping[str, float]], *, ax: Axes | None = None, title: str | None = None,
                 normalise: bool = True, xlabel: str | None = None) -> Figure:
    """Horizontal stacked bars: one bar per row (e.g. a model), split into its parts (e.g. parameter groups).

    `rows` maps a bar's label to {part: amount}; every bar lists the same parts in the same order. With
    `normalise` each bar is shown as fractions of its total, and parts of at least 4% carry their percentage.
    """
    names = list(rows)
    parts = list(next(iter(rows.values())))
    values = np.array([[float(rows[n][p]) for p in parts] for n in names])
    if normalise:
        values = values / values.sum(axis=1, keepdims=True)
    fig, ax = _axes(ax, (8.0, 0.55 * len(names) + 1.4))
    left = np.zeros(len(names))
    for j, part in enumerate(parts):
        bars = ax.barh(names, values[:, j], left=left, label=part)
        if normalise:
            for bar, v in zip(bars, values[:, j]):
                if v >= 0.04:
                    ax.text(bar.get_x() + bar.get_width() / 2, bar.get_y() + bar.get_height() / 2, f"{v:.0%}",
                            ha="center", va="center", fontsize=7, color="white")
        left += values[:, j]
    ax.invert_yaxis()
    ax.set_xlabel(xlabel or ("fraction of the total" if normalise else ""))
    ax.legend(fontsize=8, ncols=min(len(parts), 6), loc="upper center", bbox_to_anchor=(0.5, -0.25))
    if title:
        ax.set_title(title)
    return fig


# ---- 07_detection: boxes drawn on images ----

BOX_COLOURS = ("tab:orange", "tab:cyan", "tab:pink", "tab:olive", "tab:purple", "tab:brown")


def draw_boxes(ax: Axes, boxes, size: int, labels=None, scores=None, *, class_names: Sequence[str] | None = None,
               dashed: bool = False, color: str | None = None, lw: float = 1.5) -> None:
    """Draw normalised cxcywh `boxes` (n, 4) on an image of size x size pixels shown with `_show`'s extent.

    Each box is coloured by its label (or `color`), captioned with its class name and `scores` when given;
    `dashed` marks ground truth.
    """
    boxes = to_numpy(boxes).reshape(-1, 4) * size
    labels = [0] * len(boxes) if labels is None else [int(k) for k in to_numpy(labels).reshape(-1)]
    for i, ((cx, cy, w, h), k) in enumerate(zip(boxes, labels)):
        edge = color or BOX_COLOURS[k % len(BOX_COLOURS)]
        ax.add_patch(Rectangle((cx - w / 2, cy - h / 2), w, h, fill=False, edgecolor=edge, lw=lw,
                               linestyle="--" if dashed else "-"))
        caption = class_names[k] if class_names else ""
        if scores is not None:
            caption = f"{caption} {float(to_numpy(scores).reshape(-1)[i]):.2f}".strip()
        if caption:
            ax.text(cx - w / 2, cy - h / 2 - 0.5, caption, color=edge, fontsize=7, va="bottom",
                    clip_on=True)


def scene_panel(ax: Axes, image, target: dict | None = None, found: dict | None = None,
                class_names: Sequence[str] | None = None, title: str | None = None) -> None:
    """One image with its ground-truth boxes (white, dashed) and predicted boxes (coloured by class, with scores)."""
    img = image_hwc(image)
    _show(ax, img)
    size = img.shape[0]
    if target is not None:
        draw_boxes(ax, target["boxes"], size, dashed=True, color="white", lw=1.0)
    if found is not None:
        draw_boxes(ax, found["boxes"], size, found["labels"], found.get("scores"), class_names=class_names)
    if title:
        ax.set_title(title, fontsize=9)


# ---- 08_segmentation: class masks in colour ----

SEGMENT_COLOURS = ("#1b1b1b", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4")


def colour_mask(mask, colours: Sequence[str] = SEGMENT_COLOURS) -> np.ndarray:
    """A class mask (H, W) of ints -> an RGB picture (H, W, 3): class k in colours[k] (0, background, near black)."""
    from matplotlib.colors import to_rgb

    table = np.array([to_rgb(c) for c in colours])
    return table[np.asarray(to_numpy(mask), dtype=int) % len(table)]


def show_segmentation(images, rows: Mapping[str, object], class_names: Sequence[str], *, ncols: int = 8,
                      panel_size: float = 1.4, suptitle: str | None = None) -> Figure:
    """Images (N, 3, H, W) in the first row, then one row of class masks (N, H, W) per entry of `rows`.

    `class_names` names classes 0, 1, ... (0 is the background); the legend shows their colours.
    """
    from matplotlib.patches import Patch

    n = min(len(images), ncols)
    fig, axes = plt.subplots(1 + len(rows), n, figsize=(panel_size * n, panel_size * (1 + len(rows)) + 0.6),
                             layout="constrained", squeeze=False)
    pictures = [image_hwc(images[i]) for i in range(n)]
    for r, (label, masks) in enumerate([("image", None), *rows.items()]):
        for i in range(n):
            ax = axes[r, i]
            ax.imshow(pictures[i] if masks is None else colour_mask(masks[i]), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r, 0].set_ylabel(label, fontsize=9)
    handles = [Patch(color=SEGMENT_COLOURS[k], label=name) for k, name in enumerate(class_names)]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    return fig


# ---- 05_training: many small images in one axes ----
def image_mosaic(images, titles: Sequence[str] | None = None, *, ncols: int = 8, ax: Axes | None = None,
                 suptitle: str | None = None, panel_size: float = 1.3, pad: int = 1) -> Figure:
    """A batch of images (N, C, H, W) in [0, 1] (C = 1 or 3) tiled into one picture, `pad` white pixels apart
    (more between rows, for the titles), with one short title above each tile: the look of `show_images` at the
    cost of a single axes."""
    x = to_numpy(images).clip(0, 1)
    n, c, h, w = x.shape
    nrows = -(-n // ncols)
    row_gap = max(pad, round(0.25 * h)) if titles else pad
    grid = np.ones((nrows * (h + row_gap), ncols * (w + pad) - pad, 3))
    for i in range(n):
        r, col = divmod(i, ncols)
        top, left = r * (h + row_gap) + row_gap, col * (w + pad)
        tile = x[i].transpose(1, 2, 0)
        grid[top: top + h, left: left + w] = 1 - tile if c == 1 else tile  # grey: ink dark on light
    fig, ax = _axes(ax, (panel_size * ncols, panel_size * nrows * (h + row_gap) / h + 0.3))
    ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()
    for i, title in enumerate(titles or []):
        r, col = divmod(i, ncols)
        ax.text(col * (w + pad) + w / 2, r * (h + row_gap) + row_gap - 0.8, title, ha="center", va="bottom",
                fontsize=8)
    if suptitle:
        ax.set_title(suptitle)
    return fig
