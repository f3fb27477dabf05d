"""Interactive explorers for the chapters (ipywidgets), each with a static fallback.

An explorer is a widget box: in a live Jupyter kernel its sliders redraw a figure inside an `Output`
widget. Its display bundle also carries a PNG of the current state, so a notebook executed headless
(nbconvert, nbgrader) or viewed without a widget manager still shows a figure. Importing this module
needs no display: figures are drawn on the Agg canvas, outside pyplot.
"""
from __future__ import annotations

import base64
import io
import math

import ipywidgets as W
import numpy as np
import torch
from IPython.display import Image, display
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


class AttentionExplorer(W.VBox):
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
        self.query = W.IntSlider(value=n // 2 + self.grid[1] // 3 if query is None else query, min=0, max=n - 1,
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
        fig = Figure(figsize=(13, 3.8), layout="constrained")
        ax_img, ax_bar, ax_h = fig.subplots(1, 3, width_ratios=[1.5, 1.2, 1])
        viz.patch_weights_overlay(self.image, w, self.grid, query=self.query.value, ax=ax_img,
                                  title=f"query patch {self.query.value} (red frame)")
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

    def png(self) -> bytes:
        """The current figure as PNG bytes."""
        buf = io.BytesIO()
        self.figure().savefig(buf, format="png", dpi=80)
        return buf.getvalue()

    def _redraw(self, change=None) -> None:
        with self.out:
            self.out.clear_output(wait=True)
            display(Image(data=self.png()))

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle["image/png"] = base64.b64encode(self.png()).decode("ascii")
        return bundle
