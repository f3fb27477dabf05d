"""Figure helpers for the chapters: attention heatmaps, grids of heatmaps, line plots, weight bars.

Every helper takes tensors or arrays, draws with matplotlib and returns the `Figure`. Pass `ax=` to draw into
an axes you made yourself (several panels in one figure); otherwise a new figure is created with pyplot, so
that Jupyter shows it at the end of the cell.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib.pyplot as plt
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
        middle = (np.nanmax(w) + np.nanmin(w)) / 2
        for i, j in np.ndindex(*w.shape):
            ax.text(j, i, f"{w[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if w[i, j] > middle else "white")
    if colorbar:
        fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def heatmap_grid(maps, titles: Sequence[str] | None = None, *, query_labels: Sequence[str] | None = None,
                 key_labels: Sequence[str] | None = None, ncols: int = 4, suptitle: str | None = None,
                 shared_scale: bool = True, vmin: float | None = 0.0, cmap: str = "viridis",
                 panel_size: float = 2.4) -> Figure:
    """Draw several 2-D maps side by side, e.g. the (H, Lq, Lk) attention weights of the heads of one layer.

    `maps` is a tensor/array of shape (n, rows, cols) or a list of 2-D maps (shapes may differ when
    `shared_scale` is False). One image per map; unused grid cells are removed.
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
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.remove()
            continue
        a = arrays[i]
        scale = dict(vmin=low, vmax=high) if shared_scale else dict(vmin=vmin)
        image = ax.imshow(a, cmap=cmap, aspect="auto", interpolation="nearest", **scale)
        if titles is not None:
            ax.set_title(titles[i], fontsize=9)
        first_col, last_row = i % ncols == 0, i >= n - ncols
        _label_ticks(ax, query_labels if first_col else None, key_labels if last_row else None)
        if query_labels is None or not first_col:
            ax.set_yticks([])
        if key_labels is None or not last_row:
            ax.set_xticks([])
    if shared_scale and image is not None:
        fig.colorbar(image, ax=axes, shrink=0.8)
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
                          ax: Axes | None = None, title: str | None = None, alpha: float = 0.6) -> Figure:
    """Draw `image` (H, W, 3) with one attention row over its `grid` = (rows, cols) of patches.

    `weights` has rows * cols entries in row-major patch order; `query` (a patch index) gets a red frame.
    """
    img = to_numpy(image)
    if img.max() > 1.0:
        img = img / 255.0
    rows, cols = grid
    w = to_numpy(weights).reshape(rows, cols)
    fig, ax = _axes(ax, (5.0, 5.0 * img.shape[0] / img.shape[1]))
    height, width = img.shape[:2]
    ax.imshow(img, extent=(0, width, height, 0))
    ax.imshow(w, cmap="magma", alpha=alpha, extent=(0, width, height, 0), interpolation="nearest",
              vmin=0, vmax=max(1e-9, float(w.max())))
    if query is not None:
        ph, pw = height / rows, width / cols
        r, c = divmod(query, cols)
        ax.add_patch(Rectangle((c * pw, r * ph), pw, ph, fill=False, edgecolor="red", linewidth=2))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title)
    return fig
