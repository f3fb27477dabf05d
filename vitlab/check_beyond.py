"""Checks for the exercises of 10_beyond: each compares the learner's code with `vitlab.beyond` or a closed form.

Visible checks use `seed=0`; graded checks pass another seed and `graded=True`, which adds float64, other
widths, head counts and lengths, one-token sequences, sizes that leave a remainder, and empty clusters.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vitlab import beyond
from vitlab.attention import MultiHeadAttention
from vitlab.check import Mistake, check_function, check_module, randn, tolerance

from vitlab.check import exercise_check
CROSS_BUILTINS = {
    nn.MultiheadAttention: "nn.MultiheadAttention",
    F.multi_head_attention_forward: "torch's F.multi_head_attention_forward",
    beyond.CrossAttention: "vitlab.beyond.CrossAttention",
    MultiHeadAttention: "vitlab.attention.MultiHeadAttention",
}
TUBELET_BUILTINS = {
    F.conv3d: "torch's F.conv3d",
    nn.Conv3d: "nn.Conv3d",
    beyond.tubelet_embed: "vitlab.beyond.tubelet_embed",
    beyond.tubelets: "vitlab.beyond.tubelets",
    beyond.TubeletEmbed: "vitlab.beyond.TubeletEmbed",
}
SPECTROGRAM_BUILTINS = {
    beyond.spectrogram: "vitlab.beyond.spectrogram",
    beyond.spectrogram_patches: "vitlab.beyond.spectrogram_patches",
}
KMEANS_BUILTINS = {
    beyond.kmeans_step: "vitlab.beyond.kmeans_step",
    beyond.kmeans: "vitlab.beyond.kmeans",
    beyond.nearest_colour: "vitlab.beyond.nearest_colour",
}
PAIRS_BUILTINS = {beyond.attention_pairs: "vitlab.beyond.attention_pairs"}


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Generic random weights and biases (zero biases would hide a swapped key/value split)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            p.copy_(0.3 * noise if p.ndim == 1 else noise / math.sqrt(p.shape[-1]))
    return module


# -------------------------------------------------------------------------------- cross-attention


class _WrongCrossAttention(beyond.CrossAttention):
    """The reference cross-attention with one known mistake in its forward pass."""

    def __init__(self, dim: int, num_heads: int, context_dim: int | None, mistake: str):
        super().__init__(dim, num_heads, context_dim)
        self.mistake = mistake

    def forward(self, x, context):
        b, lq, dim = x.shape
        h, hd = self.num_heads, self.head_dim
        source = x if self.mistake == "self" else context
        if self.mistake == "heads":
            q = self.q(x).reshape(b, lq, hd, h).permute(0, 3, 1, 2)
            k, v = self.kv(source).reshape(b, source.shape[1], 2, hd, h).permute(2, 0, 4, 1, 3)
        else:
            q = self.q(x).reshape(b, lq, h, hd).transpose(1, 2)
            k, v = self.kv(source).reshape(b, source.shape[1], 2, h, hd).permute(2, 0, 3, 1, 4)
        if self.mistake == "swap":
            k, v = v, k
        scale = {"no_scale": 1.0, "dim_scale": math.sqrt(dim)}.get(self.mistake, math.sqrt(hd))
        weights = (q @ k.transpose(-2, -1) / scale).softmax(dim=-2 if self.mistake == "query_softmax" else -1)
        out = (weights @ v).transpose(1, 2).reshape(b, lq, dim)
        return out if self.mistake == "no_proj" else self.proj(out)


CROSS_MISTAKES = [
    ("took the keys and values from the queries' own tokens (self-attention)", "self",
     "In cross-attention the queries come from x (the text) and the keys and values from `context` (the image): "
     "k, v = self.kv(context)..."),
    ("swapped keys and values", "swap",
     "self.kv(context) holds the keys in its first `dim` outputs and the values in the next `dim`: after "
     "reshape(B, Lk, 2, heads, head_dim), index 0 is k and index 1 is v."),
    ("forgot to divide the scores by sqrt(head_dim)", "no_scale",
     "Scores are q k^T / sqrt(d) with d = head_dim, the width of one head."),
    ("divided the scores by sqrt(dim) instead of sqrt(head_dim)", "dim_scale",
     "Each head works in head_dim = dim // num_heads dimensions, so the scale is 1 / sqrt(head_dim)."),
    ("took the softmax over the queries instead of the keys", "query_softmax",
     "Each query's weights over the Lk image tokens sum to one: softmax over the last axis (dim=-1)."),
    ("split the heads in the wrong order", "heads",
     "reshape(B, L, num_heads, head_dim): the head index comes first, then the features inside a head, as "
     "in the reference's fused layout."),
    ("left out the output projection", "no_proj",
     "After merging the heads back to (B, Lq, dim), apply self.proj."),
]


def _cross_inputs(seed: int, dim: int, context_dim: int, graded: bool, dtype: torch.dtype) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    shapes = [(2, 5, 16), (1, 3, 7)] + ([(3, 1, 9), (2, 4, 1)] if graded else [])
    return [dict(x=randn(gen, b, lq, dim, dtype=dtype), context=randn(gen, b, lk, context_dim, dtype=dtype))
            for b, lq, lk in shapes]


@exercise_check
def cross_attention(cls, *, seed: int = 0, graded: bool = False) -> None:
    """Check a learner's `CrossAttention(dim, num_heads, context_dim=None)` with the reference's weights.

    Submodules must be named as the reference's: q, kv (keys then values), proj.
    """
    configs = [(32, 4, None), (24, 1, 40), (48, 8, 16)] if graded else [(32, 4, None), (32, 4, 48)]
    dt = torch.float64 if graded else torch.float32
    for dim, heads, context_dim in configs:
        reference = _randomise(beyond.CrossAttention(dim, heads, context_dim), seed).to(dt)
        mistakes = [Mistake(label, hint, _WrongCrossAttention(dim, heads, context_dim, key).to(dt))
                    for label, key, hint in CROSS_MISTAKES if key != "self" or context_dim is None]
        kwargs = {"context_dim": context_dim} if context_dim else {}
        check_module(lambda: cls(dim, heads, **kwargs).to(dt), reference,
                     _cross_inputs(seed, dim, context_dim or dim, graded, dt),
                     name=f"CrossAttention(dim={dim}, num_heads={heads}"
                          f"{f', context_dim={context_dim}' if context_dim else ''})",
                     mistakes=mistakes, forbidden=CROSS_BUILTINS, **tolerance(dt))


# ---------------------------------------------------------------------------------------- tubelets


def _tubelet_variant(mistake: str):
    def wrong(video, weight, bias=None):
        d, c, t, p, q = weight.shape
        b = video.shape[0]
        nt, nh, nw = (n // s for n, s in zip(video.shape[2:], (t, p, q)))
        x = video[:, :, :nt * t, :nh * p, :nw * q].reshape(b, c, nt, t, nh, p, nw, q)
        if mistake == "channels_last":
            x = x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, nt * nh * nw, -1)
            w = weight.reshape(d, -1)
        elif mistake == "space_first":
            x = x.permute(0, 4, 6, 2, 1, 3, 5, 7).reshape(b, nt * nh * nw, -1)
            w = weight.reshape(d, -1)
        else:
            x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, nt * nh * nw, -1)
            w = weight.reshape(d, -1)
        out = x @ w.T
        return out if mistake == "no_bias" or bias is None else out + bias

    return wrong


TUBELET_MISTAKES = [
    Mistake("flattened each tubelet with the channels last",
            "Conv3d's weight (D, C, t, p, q) flattens in the order C, t, p, q: move the channel axis next to the "
            "tubelet's own axes, permute(0, 2, 4, 6, 1, 3, 5, 7) after reshape(B, C, T', t, H', p, W', q).",
            _tubelet_variant("channels_last")),
    Mistake("ordered the tokens space first, then time",
            "A Conv3d output (B, D, T', H', W') flattens with time outermost: token index = (t' H' + h') W' + w'.",
            _tubelet_variant("space_first")),
    Mistake("forgot the bias", "Add `bias` (D,) to every token, as the Conv3d does.", _tubelet_variant("no_bias")),
]


def _tubelet_cases(seed: int, graded: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32

    def case(b, c, frames, h, w, d, tubelet):
        return dict(video=randn(gen, b, c, frames, h, w, dtype=dt), weight=randn(gen, d, c, *tubelet, dtype=dt),
                    bias=randn(gen, d, dtype=dt))

    cases = [case(2, 3, 4, 8, 8, 16, (2, 4, 4)), case(1, 3, 6, 12, 8, 8, (3, 4, 4))]
    if graded:
        cases += [case(2, 1, 5, 9, 7, 6, (2, 2, 3)), case(1, 2, 1, 4, 4, 5, (1, 2, 2)), case(3, 3, 4, 6, 6, 4, (4, 6, 6))]
    return cases


@exercise_check
def tubelet_embed(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `tubelet_embed(video, weight, bias)`: Conv3d patch embedding with kernel = stride, as (B, N, D)."""
    dt = torch.float64 if graded else torch.float32
    check_function(fn, beyond.tubelet_embed, _tubelet_cases(seed, graded), name="tubelet_embed",
                   mistakes=TUBELET_MISTAKES, forbidden=TUBELET_BUILTINS, **tolerance(dt))


# ------------------------------------------------------------------------------------- spectrogram


def _spectrogram_variant(mistake: str):
    def wrong(wave, n_fft=256, hop=64, patch=8):
        window = None if mistake == "no_window" else torch.hann_window(n_fft, dtype=wave.dtype)
        spec = torch.stft(wave, n_fft, hop_length=hop, window=window, return_complex=True,
                          center=mistake != "not_centred").abs()
        if mistake == "magnitude":
            spec = 10 * torch.log10(spec + 1e-10)
        elif mistake == "natural_log":
            spec = torch.log(spec ** 2 + 1e-10)
        elif mistake == "no_log":
            spec = spec ** 2
        else:
            spec = 10 * torch.log10(spec ** 2 + 1e-10)
        nf, nt = spec.shape[-2] // patch, spec.shape[-1] // patch
        x = spec[:, :nf * patch, :nt * patch].reshape(-1, nf, patch, nt, patch)
        order = (0, 3, 1, 2, 4) if mistake == "time_first" else (0, 1, 3, 2, 4)
        return x.permute(*order).reshape(-1, nf * nt, patch * patch)

    return wrong


SPECTROGRAM_MISTAKES = [
    Mistake("left out the Hann window", "Pass window=torch.hann_window(n_fft, dtype=wave.dtype) to torch.stft; "
            "without it torch uses a rectangular window, whose spectrum leaks into far-away bins.",
            _spectrogram_variant("no_window")),
    Mistake("took 10 log10 of the magnitude instead of the power",
            "Power is |X|^2: 10 log10(|X|^2 + 1e-10) decibels (or 20 log10 |X|, but keep the 1e-10 inside).",
            _spectrogram_variant("magnitude")),
    Mistake("used the natural log", "Decibels are 10 * log10(power + 1e-10).", _spectrogram_variant("natural_log")),
    Mistake("forgot the log", "Take 10 * log10(power + 1e-10): raw power spans many orders of magnitude.",
            _spectrogram_variant("no_log")),
    Mistake("ordered the patches time first",
            "Treat the spectrogram (F, frames) as an image with frequency as its rows: patches go row by row, "
            "lowest frequency band first, and along time inside a band.", _spectrogram_variant("time_first")),
    Mistake("turned off centring", "Keep torch.stft's default center=True: frames = L // hop + 1.",
            _spectrogram_variant("not_centred")),
]


def _spectrogram_cases(seed: int, graded: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    t = torch.arange(2048, dtype=torch.float64) / 2048
    tone = torch.sin(2 * math.pi * 300 * t)[None].to(dt)
    cases = [dict(wave=randn(gen, 2, 1024, dtype=dt), n_fft=64, hop=16, patch=8),
             dict(wave=tone + 0.1 * randn(gen, 1, 2048, dtype=dt), n_fft=128, hop=32, patch=16)]
    if graded:
        cases += [dict(wave=randn(gen, 3, 999, dtype=dt), n_fft=32, hop=8, patch=4),
                  dict(wave=randn(gen, 1, 700, dtype=dt), n_fft=64, hop=20, patch=5)]
    return cases


@exercise_check
def spectrogram_patches(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `spectrogram_patches(wave, n_fft, hop, patch)`: decibel power spectrogram cut into patches."""
    check_function(fn, beyond.spectrogram_patches, _spectrogram_cases(seed, graded), name="spectrogram_patches",
                   mistakes=SPECTROGRAM_MISTAKES, forbidden=SPECTROGRAM_BUILTINS,
                   **({"atol": 1e-8, "rtol": 1e-8} if graded else {"atol": 1e-3, "rtol": 1e-4}))


# ------------------------------------------------------------------------------------------ k-means


def _kmeans_variant(mistake: str):
    def wrong(pixels, palette):
        diff = pixels[:, None, :] - palette[None]
        distances = diff.abs().sum(-1) if mistake == "l1" else (diff ** 2).sum(-1)
        labels = distances.argmax(-1) if mistake == "argmax" else distances.argmin(-1)
        onehot = F.one_hot(labels, len(palette)).to(pixels.dtype)
        counts = onehot.sum(0)[:, None]
        means = onehot.T @ pixels / counts
        if mistake == "nan_empty":
            return labels, means
        if mistake == "zero_empty":
            return labels, torch.where(counts > 0, means, torch.zeros_like(palette))
        if mistake == "no_update":
            return labels, palette
        if mistake == "sums":
            return labels, torch.where(counts > 0, onehot.T @ pixels, palette)
        return labels, torch.where(counts > 0, means, palette)

    return wrong


KMEANS_MISTAKES = [
    Mistake("measured distances with the L1 norm", "k-means uses squared Euclidean distance: "
            "((pixels[:, None, :] - palette[None]) ** 2).sum(-1).", _kmeans_variant("l1")),
    Mistake("picked the farthest colour (argmax)", "Each pixel joins the nearest colour: argmin over the palette.",
            _kmeans_variant("argmax")),
    Mistake("let an empty cluster's colour become NaN",
            "A colour no pixel chose has a count of zero, and 0 / 0 is NaN: keep its old value "
            "(torch.where(counts > 0, means, palette)).", _kmeans_variant("nan_empty")),
    Mistake("set an empty cluster's colour to zero", "A colour no pixel chose keeps its old value.",
            _kmeans_variant("zero_empty")),
    Mistake("summed the pixels of each cluster without dividing by their count",
            "The new colour is the cluster's mean: onehot.T @ pixels / counts (counts clamped at 1 for empty ones).",
            _kmeans_variant("sums")),
    Mistake("returned the old palette", "The new palette holds, for each colour, the mean of the pixels assigned "
            "to it.", _kmeans_variant("no_update")),
]


def _kmeans_cases(seed: int, graded: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32

    def case(n, k):
        pixels = torch.rand(n, 3, generator=gen, dtype=torch.float64).to(dt)
        return dict(pixels=pixels, palette=pixels[torch.randperm(n, generator=gen)[:k]].clone())

    far = case(50, 4)
    far["palette"][2] = torch.tensor([9.0, 9.0, 9.0], dtype=dt)  # no pixel is near it: an empty cluster
    cases = [case(200, 8), far]
    if graded:
        cases += [case(500, 16), case(30, 1), case(7, 7)]
    return cases


@exercise_check
def kmeans_step(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `kmeans_step(pixels, palette)` -> (labels, new palette): one assignment and one update."""
    check_function(fn, beyond.kmeans_step, _kmeans_cases(seed, graded), name="kmeans_step",
                   mistakes=KMEANS_MISTAKES, forbidden=KMEANS_BUILTINS, grad=False,
                   **tolerance(torch.float64 if graded else torch.float32))


# ------------------------------------------------------------------------------------ pair counts


def _pairs(frames: int, patches: int, kind: str) -> int:
    """The closed forms, for the mistakes to fall back on (the reference itself counts as a shortcut)."""
    t, n = frames, patches
    return {"joint": (t * n) ** 2, "divided": t * n * (t + n), "frames": t * n * n}[kind]


PAIRS_MISTAKES = [
    Mistake("counted T^2 + N^2 pairs for divided attention (one query per frame and per place)",
            "Every one of the T N tokens is a query in both attentions: T N tokens x T keys (time) plus "
            "T N tokens x N keys (space) = T N (T + N).",
            lambda frames, patches, kind: frames ** 2 + patches ** 2 if kind == "divided" else
            _pairs(frames, patches, kind)),
    Mistake("cubed the token count for joint attention, as the book claims",
            "Joint attention scores every token against every token: (T N) queries times (T N) keys, (T N)^2.",
            lambda frames, patches, kind: (frames * patches) ** 3 if kind == "joint" else
            _pairs(frames, patches, kind)),
    Mistake("counted joint attention frame by frame (T N^2)",
            "Joint attention lets a token attend to the tokens of all frames, not only its own.",
            lambda frames, patches, kind: frames * patches ** 2 if kind == "joint" else
            _pairs(frames, patches, kind)),
    Mistake("left out the time attention of divided attention",
            "Divided attention runs two attentions per layer: over the T tokens at the same place (T N of them, "
            "T keys each), then over the N tokens of the same frame.",
            lambda frames, patches, kind: frames * patches ** 2 if kind == "divided" else
            _pairs(frames, patches, kind)),
    Mistake("counted the time attention as T^2 per frame instead of T^2 per place",
            "There are N places (patch positions), each with its own time attention over T frames: N T^2.",
            lambda frames, patches, kind: frames * patches ** 2 + frames ** 3 if kind == "divided" else
            _pairs(frames, patches, kind)),
]


@exercise_check
def attention_pairs(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `attention_pairs(frames, patches, kind)` against the closed forms (ints)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [(8, 196), (4, 16)] + [tuple(int(v) for v in torch.randint(1, 40, (2,), generator=gen))
                                   for _ in range(3 if graded else 1)]
    if graded:
        sizes += [(1, 1), (1, 64), (16, 1)]
    cases = [dict(frames=t, patches=n, kind=kind) for t, n in sizes for kind in ("joint", "divided", "frames")]
    check_function(fn, beyond.attention_pairs, cases, name="attention_pairs", mistakes=PAIRS_MISTAKES,
                   forbidden=PAIRS_BUILTINS, grad=False)
