"""Checks for the exercises of 09_clip: each compares the learner's code with `vitlab.clip` (open_clip's layout).

Visible checks use `seed=0`; graded checks pass another seed and `graded=True`, which adds float64, other widths
and depths, texts that fill the whole context, one-pair batches, ties in the similarities and a logit scale
above the clamp.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vitlab import clip
from vitlab.check import CheckFailed, Mistake, call_learner, check_function, check_module, describe, randn, tolerance

from vitlab.check import exercise_check
TEXT_BUILTINS = {
    clip.TextTransformer: "vitlab.clip.TextTransformer",
    clip._encode_text: "vitlab.clip's text forward",
    clip.build_causal_mask: "vitlab.clip.build_causal_mask",
    nn.Transformer.generate_square_subsequent_mask: "nn.Transformer.generate_square_subsequent_mask",
    nn.TransformerEncoderLayer: "nn.TransformerEncoderLayer",
}
HEAD_BUILTINS = {clip.ClipHead: "vitlab.clip.ClipHead", clip.CLIP: "vitlab.clip.CLIP", F.normalize: "F.normalize"}
LOSS_BUILTINS = {clip.clip_loss: "vitlab.clip.clip_loss"}
ENSEMBLE_BUILTINS = {clip.class_embeddings: "vitlab.clip.class_embeddings",
                     clip.zero_shot_classifier: "vitlab.clip.zero_shot_classifier"}
RECALL_BUILTINS = {clip.recall_at_k: "vitlab.clip.recall_at_k", clip.retrieval_ranks: "vitlab.clip.retrieval_ranks",
                   clip.retrieval_metrics: "vitlab.clip.retrieval_metrics"}


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Generic random values for every parameter, LayerNorm scales and shifts included (defaults hide mistakes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            if name.startswith("ln") or ".ln_" in name:
                p.copy_(1 + 0.2 * noise if name.endswith("weight") else 0.2 * noise)
            elif p.ndim <= 1 or "embedding" in name:
                p.copy_(0.5 * noise)
            else:
                p.copy_(noise / math.sqrt(p.shape[-1] if p.ndim == 2 and "projection" not in name else p.shape[0]))
    return module


# ------------------------------------------------------------------------------------- TextTransformer


class _WrongText(clip.TextTransformer):
    """The reference text tower with one known mistake in its forward pass."""

    def __init__(self, config: dict, mistake: str):
        super().__init__(**config)
        self.mistake = mistake

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(text)
        if self.mistake != "no_position":
            x = x + self.positional_embedding
        n = text.shape[1]
        mask = {"no_mask": None,
                "future_mask": torch.full((n, n), float("-inf")).tril(-1).to(x),
                "diagonal_masked": torch.full((n, n), float("-inf")).triu().to(x)}.get(self.mistake, self.attn_mask)
        x = self.transformer(x, attn_mask=mask)
        if self.mistake != "no_ln_final":
            x = self.ln_final(x)
        rows = torch.arange(x.shape[0])
        pooled = {"first": lambda: x[:, 0], "last": lambda: x[:, -1], "mean": lambda: x.mean(1),
                  "eot_minus_one": lambda: x[rows, text.argmax(-1) - 1]}.get(
            self.mistake, lambda: x[rows, text.argmax(-1)])()
        return pooled if self.mistake == "no_projection" else pooled @ self.text_projection


TEXT_MISTAKES = [
    ("read the first token (SOT), as if it were a CLS token", "first",
     "The book says the text feature is a CLS token's; CLIP reads the END token, the last real one, the only one "
     "that has seen the whole text under the causal mask: x[torch.arange(B), text.argmax(dim=-1)]."),
    ("read the last position of the context (a padding token for short texts)", "last",
     "Texts are padded to the context length, so x[:, -1] is usually padding. The EOT token sits at "
     "text.argmax(dim=-1): it has the largest id."),
    ("averaged the tokens", "mean", "CLIP pools one token, the EOT token: x[torch.arange(B), text.argmax(dim=-1)]."),
    ("pooled the token just before EOT", "eot_minus_one", "Index with text.argmax(dim=-1) itself, not minus one."),
    ("left out the causal mask", "no_mask",
     "Pass attn_mask to self.transformer: a (L, L) float mask with -inf above the diagonal, "
     "torch.full((L, L), float('-inf')).triu(1). Without it the EOT token also sees the padding after it."),
    ("masked the wrong triangle (each token sees the future, not the past)", "future_mask",
     "Query i may see keys j <= i: -inf goes ABOVE the diagonal, .triu(1), not below it."),
    ("masked the diagonal too (each token may not see itself)", "diagonal_masked",
     "-inf goes strictly above the diagonal: .triu(1). With .triu() the first token sees nothing at all."),
    ("forgot ln_final", "no_ln_final", "Apply self.ln_final to the tokens after the blocks, before pooling."),
    ("forgot the position embedding", "no_position",
     "Add self.positional_embedding (context_length, width) to the token embeddings."),
    ("forgot the projection", "no_projection", "End with pooled @ self.text_projection (width, output_dim)."),
]


def _texts(gen: torch.Generator, batch: int, context: int, vocab: int, lengths: list[int] | None = None
           ) -> torch.Tensor:
    """Token ids (batch, context) framed like the tokenizer's: SOT = vocab - 2, words, EOT = vocab - 1, zeros."""
    ids = torch.zeros(batch, context, dtype=torch.long)
    for i in range(batch):
        n = lengths[i] if lengths else int(torch.randint(0, context - 1, (1,), generator=gen))
        words = torch.randint(1, vocab - 2, (n,), generator=gen)
        ids[i, :n + 2] = torch.cat([torch.tensor([vocab - 2]), words, torch.tensor([vocab - 1])])
    return ids


def _text_configs(graded: bool) -> list[dict]:
    if graded:
        return [dict(context_length=9, vocab_size=23, width=24, heads=3, layers=3, output_dim=10),
                dict(context_length=4, vocab_size=7, width=16, heads=2, layers=1, output_dim=16)]
    return [dict(context_length=8, vocab_size=20, width=32, heads=4, layers=2, output_dim=12)]


@exercise_check
def text_transformer(cls, *, seed: int = 0, graded: bool = False) -> None:
    """Check `TextTransformer(context_length, vocab_size, width, heads, layers, output_dim)` against the reference.

    Its parameters must be named as open_clip's (token_embedding, positional_embedding, transformer.resblocks...,
    ln_final, text_projection) and the causal mask must not be saved in the state_dict.
    """
    dt = torch.float64 if graded else torch.float32
    gen = torch.Generator().manual_seed(seed)
    for config in _text_configs(graded):
        name = "TextTransformer(" + ", ".join(f"{k}={v}" for k, v in config.items()) + ")"
        module = call_learner(name, lambda: cls(**config), {}, "construction")
        if not isinstance(module, nn.Module):
            raise CheckFailed(f"{name} should build an nn.Module, got {describe(module)}")
        if "attn_mask" in module.state_dict():
            raise CheckFailed(f"{name}: the causal mask is saved in the state_dict (open_clip's is not).\n  Register "
                              "it with self.register_buffer('attn_mask', mask, persistent=False), or build it in "
                              "forward.")
        reference = _randomise(clip.TextTransformer(**config), seed).to(dt)
        mistakes = [Mistake(label, hint, _WrongText(config, key).to(dt)) for label, key, hint in TEXT_MISTAKES]
        context, vocab = config["context_length"], config["vocab_size"]
        inputs = [dict(text=_texts(gen, 3, context, vocab, [1, min(3, context - 2), context - 2]))]
        if graded:
            inputs += [dict(text=_texts(gen, 4, context, vocab)), dict(text=_texts(gen, 1, context, vocab, [0]))]
        check_module(lambda: module.to(dt), reference, inputs, name=name, mistakes=mistakes,
                     forbidden=TEXT_BUILTINS, **tolerance(dt))


# ------------------------------------------------------------------------------------------ ClipHead


class _WrongHead(clip.ClipHead):
    """The reference head with one known mistake."""

    def __init__(self, dims: tuple[int, int, int], mistake: str):
        super().__init__(*dims)
        self.mistake = mistake

    def forward(self, image_features, text_features):
        def embed(f, w):
            if self.mistake == "normalise_first":
                return (f / f.norm(dim=-1, keepdim=True)) @ w
            e = f @ w
            if self.mistake == "no_normalise":
                return e
            if self.mistake == "batch_norm":
                return e / e.norm()
            return e / e.norm(dim=0 if self.mistake == "wrong_dim" else -1, keepdim=True)

        scale = {"no_exp": self.logit_scale, "tau": (-self.logit_scale).exp(),
                 "no_clamp": self.logit_scale.exp()}.get(self.mistake, self.logit_scale.exp().clamp(max=100))
        return embed(image_features, self.image_projection), embed(text_features, self.text_projection), scale


HEAD_MISTAKES = [
    ("L2-normalised the features before projecting them", "normalise_first",
     "Project first, then normalise: I_e = l2_normalize(I_f @ W_i). A projection does not keep lengths."),
    ("forgot the L2 normalisation", "no_normalise",
     "Divide each embedding by its length, e / e.norm(dim=-1, keepdim=True): the logits are cosine similarities."),
    ("divided by the norm of the whole batch (e.norm() without dim)", "batch_norm",
     "Each row (one image or one text) gets unit length: e / e.norm(dim=-1, keepdim=True)."),
    ("normalised over the batch (dim=0) instead of each embedding", "wrong_dim",
     "Each row (one image or one text) gets unit length: norm over dim=-1, keepdim=True."),
    ("returned logit_scale itself instead of its exponential", "no_exp",
     "The parameter is log(1/tau); the logits are multiplied by exp(logit_scale) = 1/tau."),
    ("returned the temperature tau = exp(-logit_scale) instead of 1/tau", "tau",
     "Logits are similarities DIVIDED by tau, i.e. multiplied by 1/tau = exp(logit_scale)."),
    ("forgot to clamp the scale at 100", "no_clamp",
     "open_clip never lets 1/tau exceed 100: self.logit_scale.exp().clamp(max=100) (or clamp the log at ln 100)."),
]


def _head_init(module: nn.Module, name: str) -> None:
    """A fresh head must hold a learnable logit_scale = log(1/0.07); name the usual wrong starting values."""
    scale = getattr(module, "logit_scale", None)
    if not isinstance(scale, nn.Parameter) or not scale.requires_grad:
        raise CheckFailed(f"{name}: self.logit_scale should be a learnable nn.Parameter.\n  The book says the "
                          "temperature is hand-tuned; CLIP learns it: nn.Parameter(torch.tensor(math.log(1 / 0.07))).")
    value = float(scale.detach().reshape(-1)[0])
    wrong = {math.log(0.07): "log(0.07), a scale of 0.07: the temperature 1/0.07 = 14.3, far too soft",
             0.07: "0.07 itself: the parameter is the LOG of the scale 1/tau",
             1 / 0.07: "1/0.07 without the log: exp of it would be astronomically sharp"}
    for bad, why in wrong.items():
        if abs(value - bad) < 1e-4:
            raise CheckFailed(f"{name}: logit_scale starts at {why}.\n  Initialise it to math.log(1 / 0.07) = "
                              f"{clip.LOGIT_SCALE_INIT:.4f}, i.e. tau = 0.07.")
    if abs(value - clip.LOGIT_SCALE_INIT) > 1e-4:
        raise CheckFailed(f"{name}: logit_scale starts at {value:.4f}; it should be math.log(1 / 0.07) = "
                          f"{clip.LOGIT_SCALE_INIT:.4f}.")


@exercise_check
def clip_head(cls, *, seed: int = 0, graded: bool = False) -> None:
    """Check `ClipHead(image_dim, text_dim, embed_dim)`: projections, L2 normalisation, the learned scale and its clamp.

    The last configuration has a logit_scale above ln 100 in the reference weights, to see the clamp.
    """
    dt = torch.float64 if graded else torch.float32
    gen = torch.Generator().manual_seed(seed)
    configs = [((10, 6, 4), None), ((5, 7, 3), 5.0)]
    if graded:
        configs = [((12, 9, 5), None), ((3, 3, 1), None), ((8, 4, 6), 6.5)]
    for dims, log_scale in configs:
        name = f"ClipHead(image_dim={dims[0]}, text_dim={dims[1]}, embed_dim={dims[2]})"
        module = call_learner(name, lambda: cls(*dims), {}, "construction")
        if not isinstance(module, nn.Module):
            raise CheckFailed(f"{name} should build an nn.Module, got {describe(module)}")
        _head_init(module, name)
        reference = _randomise(clip.ClipHead(*dims), seed).to(dt)
        with torch.no_grad():
            reference.logit_scale.fill_(log_scale if log_scale is not None else 2.0 + float(randn(gen, 1)) * 0.3)
        mistakes = [Mistake(label, hint, _WrongHead(dims, key).to(dt)) for label, key, hint in HEAD_MISTAKES]
        inputs = [dict(image_features=randn(gen, 3, dims[0], dtype=dt), text_features=randn(gen, 4, dims[1], dtype=dt))]
        if graded:
            inputs.append(dict(image_features=randn(gen, 1, dims[0], dtype=dt) * 5,
                               text_features=randn(gen, 1, dims[1], dtype=dt) * 0.01))
        check_module(lambda: module.to(dt), reference, inputs, name=name, mistakes=mistakes, forbidden=HEAD_BUILTINS,
                     **tolerance(dt))


# ------------------------------------------------------------------------------------------ clip_loss


def _loss_variant(directions: str = "both", reduce: str = "mean", scale: str = "times", softmax_in: str = ""):
    """A contrastive loss that is wrong in the ways the keyword arguments say."""

    def wrong(image_features, text_features, logit_scale):
        sims = image_features @ text_features.T
        logits = {"times": sims * logit_scale, "divide": sims / logit_scale, "none": sims}[scale]
        labels = torch.arange(len(logits))
        i2t = F.cross_entropy(logits.softmax(-1) if "i2t" in softmax_in else logits, labels, reduction=reduce)
        t2i = F.cross_entropy(logits.T.softmax(-1) if "t2i" in softmax_in else logits.T, labels, reduction=reduce)
        return {"both": (i2t + t2i) / 2, "sum": i2t + t2i, "i2t": i2t, "t2i": t2i}[directions]

    return wrong


LOSS_MISTAKES = [
    Mistake("used only the image -> text direction",
            "The loss is symmetric: average cross_entropy(logits, labels) over images AND cross_entropy(logits.T, "
            "labels) over texts.", _loss_variant(directions="i2t")),
    Mistake("used only the text -> image direction",
            "Add the image -> text term, cross_entropy(logits, labels), and average the two.",
            _loss_variant(directions="t2i")),
    Mistake("added the two directions instead of averaging them", "loss = (loss_i + loss_t) / 2.",
            _loss_variant(directions="sum")),
    Mistake("divided the similarities by logit_scale",
            "logit_scale is already 1/tau: multiply, logits = logit_scale * image_features @ text_features.T.",
            _loss_variant(scale="divide")),
    Mistake("forgot the scale", "Multiply the cosine similarities by logit_scale before the cross-entropy.",
            _loss_variant(scale="none")),
    *[Mistake("passed probabilities (a softmax) to F.cross_entropy",
              "F.cross_entropy applies log_softmax itself: give it the logits, not logits.softmax(...).",
              _loss_variant(softmax_in=which)) for which in ("i2t", "t2i", "i2t t2i")],
    Mistake("summed over the batch instead of averaging", "cross_entropy averages over the rows by default; keep it.",
            _loss_variant(reduce="sum")),
]


def _unit(gen: torch.Generator, *shape: int, dtype: torch.dtype) -> torch.Tensor:
    x = randn(gen, *shape, dtype=dtype)
    return x / x.norm(dim=-1, keepdim=True)


@exercise_check
def clip_loss(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `clip_loss(image_features, text_features, logit_scale)`: symmetric cross-entropy, scalar."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32

    def case(b, e, scale, related=0.0):
        image = _unit(gen, b, e, dtype=dt)
        text = image * related + _unit(gen, b, e, dtype=dt)
        return dict(image_features=image, text_features=text / text.norm(dim=-1, keepdim=True),
                    logit_scale=torch.tensor(scale, dtype=dt))

    cases = [case(4, 8, 1 / 0.07, related=1.0), case(6, 5, 3.0)]
    if graded:
        cases += [case(1, 3, 10.0), case(16, 32, 100.0, related=2.0), case(7, 4, 1.0, related=0.5)]
    check_function(fn, clip.clip_loss, cases, name="clip_loss", mistakes=LOSS_MISTAKES, forbidden=LOSS_BUILTINS,
                   **tolerance(dt))


# ----------------------------------------------------------------------------------- class_embeddings


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


ENSEMBLE_MISTAKES = [
    Mistake("averaged the raw text features, without normalising each prompt first",
            "Normalise each prompt's feature before averaging: a prompt with a long feature vector would otherwise "
            "outvote the others.", lambda text_features: _normalise(text_features.mean(dim=1))),
    Mistake("did not normalise the average again",
            "The mean of unit vectors is shorter than 1; normalise it so that image @ class is a cosine.",
            lambda text_features: _normalise(text_features).mean(dim=1)),
    Mistake("forgot every normalisation", "Normalise each prompt's feature, average over templates (dim=1), "
            "normalise again.", lambda text_features: text_features.mean(dim=1)),
    Mistake("averaged over the classes instead of the templates",
            "text_features is (classes, templates, E): average over dim=1.",
            lambda text_features: _normalise(_normalise(text_features).mean(dim=0))),
]


@exercise_check
def class_embeddings(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `class_embeddings(text_features)`: (K, T, E) -> (K, E), normalise, average over templates, normalise."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    scales = randn(gen, 3, 4, 1, dtype=dt).abs() * 3 + 0.1
    cases = [dict(text_features=randn(gen, 3, 4, 6, dtype=dt) * scales), dict(text_features=randn(gen, 5, 5, 8, dtype=dt))]
    if graded:
        cases += [dict(text_features=randn(gen, 2, 1, 4, dtype=dt) * 7),
                  dict(text_features=randn(gen, 10, 6, 3, dtype=dt) * randn(gen, 10, 6, 1, dtype=dt).abs())]
    check_function(fn, clip.class_embeddings, cases, name="class_embeddings", mistakes=ENSEMBLE_MISTAKES,
                   forbidden=ENSEMBLE_BUILTINS, **tolerance(dt))


# ---------------------------------------------------------------------------------------- recall_at_k


def _ranks_strict(similarity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks that count only strictly better wrong items (ties in the query's favour)."""
    diag = similarity.diagonal()
    return 1 + (similarity > diag[:, None]).sum(1), 1 + (similarity.T > diag[:, None]).sum(1)


RECALL_MISTAKES = [
    Mistake("swapped the two directions",
            "Image -> text: each ROW of similarity is one image's scores over all texts. Text -> image uses the "
            "columns (similarity.T).",
            lambda similarity, k: tuple(reversed(clip.recall_at_k(similarity, k)))),
    Mistake("counted the top k - 1 (an off-by-one)",
            "A query counts when its match has rank <= k, where rank 1 is the best.",
            lambda similarity, k: clip.recall_at_k(similarity, k - 1) if k > 1 else (0.0, 0.0)),
    Mistake("returned Recall@1 whatever k is", "Look at the top k items (topk(k) or ranks), not only the argmax.",
            lambda similarity, k: clip.recall_at_k(similarity, 1)),
    Mistake("broke ties in favour of the right answer",
            "When a wrong item scores exactly as high as the match, count it as ranked above: a model that gives "
            "every item the same score must not get Recall@1 = 1.",
            lambda similarity, k: tuple((r <= k).float().mean().item() for r in _ranks_strict(similarity))),
]


@exercise_check
def recall_at_k(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `recall_at_k(similarity, k)` -> (image -> text, text -> image) as floats; pair i is (image i, text i)."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    base = randn(gen, 12, 12, dtype=dt) + 2.5 * torch.eye(12, dtype=dt)
    cases = [dict(similarity=base, k=1), dict(similarity=base, k=5), dict(similarity=randn(gen, 20, 20, dtype=dt), k=3)]
    if graded:
        tied = (randn(gen, 9, 9, dtype=dt) * 2).round()
        cases += [dict(similarity=tied, k=2), dict(similarity=torch.zeros(5, 5, dtype=dt), k=1),
                  dict(similarity=randn(gen, 1, 1, dtype=dt), k=1),
                  dict(similarity=randn(gen, 30, 30, dtype=dt) + torch.eye(30, dtype=dt), k=10)]

    def wrapped(similarity, k):
        got = fn(similarity=similarity, k=k)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise CheckFailed(f"recall_at_k should return a pair (image -> text, text -> image), got {describe(got)}")
        return tuple(float(v) for v in got)

    check_function(wrapped, clip.recall_at_k, cases, name="recall_at_k", mistakes=RECALL_MISTAKES,
                   forbidden=RECALL_BUILTINS, atol=1e-6, rtol=0, grad=False)

