"""CLIP (Radford et al. 2021), weight for weight open_clip's `CLIP`: tokenizer, text tower, image tower, loss,
zero-shot classifiers and retrieval metrics.

Parameter names, shapes and numerics follow open_clip 3.3 (LayerNorm eps 1e-5, exact GELU, `logit_scale`
initialised to log(1/0.07)), so `open_clip.CLIP(**model.config)` loads `model.state_dict()` with strict=True and
gives the same features. The image tower is written with open_clip's own keys (conv1, class_embedding,
positional_embedding, ln_pre, transformer.resblocks.i..., ln_post, proj) rather than mapped from
`vitlab.vit.VisionTransformer`: open_clip's tower has a LayerNorm before the blocks (ln_pre), a bias-free
patch convolution and eps 1e-5, so no renaming of a timm-style ViT computes the same function. Both towers share
`Transformer`, whose blocks keep open_clip's names (ln_1, attn.in_proj_weight, attn.out_proj, ln_2, mlp.c_fc,
mlp.c_proj) and run torch's fused attention kernel.
"""
from __future__ import annotations

import math
import time
from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from vitlab.device import device as best_device
from vitlab.train import param_groups, warmup_cosine

LOGIT_SCALE_INIT = math.log(1 / 0.07)  # temperature tau = 0.07 at the start
LOGIT_SCALE_MAX = math.log(100)  # open_clip clamps the logit scale at 100 (tau >= 0.01)
PAD, SOT, EOT = "<pad>", "<start_of_text>", "<end_of_text>"


# ------------------------------------------------------------------------------------------ tokenizer


class Tokenizer:
    """A lower-cased byte-level BPE (Hugging Face `tokenizers`) with open_clip's framing.

    `tokenizer(texts)` -> LongTensor (N, context_length): [SOT, tokens..., EOT, 0, 0, ...]. The pad id is 0 and
    EOT is the largest id, so `ids.argmax(-1)` finds the end of every text (open_clip's pooling rule). Texts
    longer than the context are cut and still end with EOT.
    """

    def __init__(self, backend, context_length: int = 32) -> None:
        self.backend = backend
        self.context_length = context_length
        self.pad_id = backend.token_to_id(PAD)
        self.sot_id = backend.token_to_id(SOT)
        self.eot_id = backend.token_to_id(EOT)
        self.vocab_size = backend.get_vocab_size()
        assert self.pad_id == 0 and self.eot_id == self.vocab_size - 1 and self.sot_id == self.vocab_size - 2

    def encode(self, text: str) -> list[int]:
        """The BPE ids of one text, without SOT and EOT."""
        return self.backend.encode(text.strip()).ids

    def tokens(self, text: str) -> list[str]:
        """The BPE pieces of one text, readable ('Ġ' marks a leading space)."""
        return self.backend.encode(text.strip()).tokens

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> Tensor:
        """Texts -> ids (N, context_length), int64, framed with SOT / EOT and padded with 0."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        length = context_length or self.context_length
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for i, ids in enumerate(self.backend.encode_batch([t.strip() for t in texts])):
            ids = [self.sot_id, *ids.ids][:length - 1] + [self.eot_id]
            out[i, :len(ids)] = torch.tensor(ids)
        return out

    def decode(self, ids: Tensor | Sequence[int]) -> str:
        """Ids of one text (framed or not) -> the text, without SOT, EOT and padding."""
        ids = ids.tolist() if isinstance(ids, Tensor) else list(ids)
        return self.backend.decode([i for i in ids if i not in (self.pad_id, self.sot_id, self.eot_id)]).strip()


def train_tokenizer(texts: Sequence[str], vocab_size: int = 512, context_length: int = 32) -> Tokenizer:
    """Train a byte-level BPE on `texts` (deterministic): ids 0 = pad, then the 256 bytes and the merges, then
    SOT and EOT last. Stops merging early when every word of the corpus is one token."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    backend = Backend(models.BPE())
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 2, special_tokens=[PAD], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(list(texts), trainer)
    backend.add_special_tokens([SOT, EOT])
    return Tokenizer(backend, context_length)


# --------------------------------------------------------------------------------------- transformer


def build_causal_mask(n: int, device: torch.device | str | None = None) -> Tensor:
    """open_clip's causal mask: float (n, n), 0 where query i may see key j (j <= i), -inf above the diagonal."""
    return torch.full((n, n), float("-inf"), device=device).triu_(1)


class Attention(nn.Module):
    """Multi-head self-attention with nn.MultiheadAttention's parameter names (in_proj_weight, in_proj_bias,
    out_proj), computed with F.scaled_dot_product_attention. (B, N, D) -> (B, N, D)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """x (B, N, D); attn_mask (N, N), float added to the scores or bool True = attend."""
        b, n, d = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, self.num_heads, -1).permute(
            2, 0, 3, 1, 4)
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class ResidualAttentionBlock(nn.Module):
    """open_clip's pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x)); mlp = c_fc -> GELU -> c_proj."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.ln_1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        """(B, N, width) -> (B, N, width)."""
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """`layers` ResidualAttentionBlocks in `resblocks`; forward(x (B, N, width), attn_mask) -> (B, N, width)."""

    def __init__(self, width: int, layers: int, heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        self.width = width
        self.layers = layers
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_ratio) for _ in range(layers))

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


def _init_blocks(transformer: Transformer) -> None:
    """open_clip's initialisation of the blocks (scaled normal weights)."""
    width, layers = transformer.width, transformer.layers
    proj_std = width ** -0.5 * (2 * layers) ** -0.5
    for block in transformer.resblocks:
        nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
        nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
        nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
        nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)


# ----------------------------------------------------------------------------------------- the towers


def _encode_text(m: nn.Module, text: Tensor) -> Tensor:
    """The text tower's forward on any module holding its parts (TextTransformer, or CLIP as open_clip lays it out).

    ids (B, L) -> token embeddings + positions -> causal blocks -> ln_final -> the EOT token (the largest id of
    each row) -> @ text_projection: (B, output_dim).
    """
    x = m.token_embedding(text) + m.positional_embedding
    x = m.transformer(x, attn_mask=m.attn_mask)
    x = m.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
    return x @ m.text_projection


class TextTransformer(nn.Module):
    """The text tower: ids (B, context_length) -> features (B, output_dim), pooled at the EOT token.

    Keys: token_embedding, positional_embedding (context_length, width), transformer.resblocks.i..., ln_final,
    text_projection (width, output_dim). The causal mask is a non-persistent buffer, as in open_clip.
    """

    def __init__(self, context_length: int = 77, vocab_size: int = 49408, width: int = 512, heads: int = 8,
                 layers: int = 12, mlp_ratio: float = 4.0, output_dim: int = 512) -> None:
        super().__init__()
        self.context_length = context_length
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = Transformer(width, layers, heads, mlp_ratio)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, output_dim))
        self.register_buffer("attn_mask", build_causal_mask(context_length), persistent=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width ** -0.5)
        _init_blocks(self.transformer)

    def forward(self, text: Tensor) -> Tensor:
        return _encode_text(self, text)


class VisionTransformer(nn.Module):
    """open_clip's image tower: images (B, 3, H, W) -> features (B, output_dim), from the CLS token.

    conv1 (bias-free patch embedding) -> prepend class_embedding -> + positional_embedding (N + 1, width) ->
    ln_pre -> blocks -> ln_post on the CLS token -> @ proj (width, output_dim). heads = width // head_width.
    """

    def __init__(self, image_size: int = 224, patch_size: int = 16, width: int = 768, layers: int = 12,
                 head_width: int = 64, mlp_ratio: float = 4.0, output_dim: int = 512) -> None:
        super().__init__()
        self.grid_size = (image_size // patch_size, image_size // patch_size)
        self.patch_size = patch_size
        scale = width ** -0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn(self.grid_size[0] * self.grid_size[1] + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, width // head_width, mlp_ratio)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        _init_blocks(self.transformer)

    def forward_features(self, x: Tensor) -> Tensor:
        """Images (B, 3, H, W) -> all tokens (B, 1 + N, width) after the blocks (before ln_post)."""
        x = self.conv1(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_embedding.expand(x.shape[0], 1, -1).to(x.dtype), x], dim=1)
        return self.transformer(self.ln_pre(x + self.positional_embedding))

    def forward(self, x: Tensor) -> Tensor:
        return self.ln_post(self.forward_features(x)[:, 0]) @ self.proj


class CLIP(nn.Module):
    """open_clip's CLIP: `visual` (the image tower) and the text tower's parts at the top level, plus logit_scale.

    CLIP(embed_dim, vision_cfg, text_cfg) takes open_clip's arguments: vision_cfg with image_size, patch_size,
    width, layers, head_width, mlp_ratio; text_cfg with context_length, vocab_size, width, heads, layers,
    mlp_ratio. `open_clip.CLIP(**model.config)` is the same model.
    """

    def __init__(self, embed_dim: int, vision_cfg: dict, text_cfg: dict) -> None:
        super().__init__()
        self.config = {"embed_dim": embed_dim, "vision_cfg": dict(vision_cfg), "text_cfg": dict(text_cfg)}
        self.visual = VisionTransformer(**vision_cfg, output_dim=embed_dim)
        text = TextTransformer(**text_cfg, output_dim=embed_dim)
        self.context_length = text.context_length
        self.vocab_size = text.vocab_size
        self.transformer = text.transformer  # open_clip's order, so that the state_dicts list the same keys in turn
        self.token_embedding = text.token_embedding
        self.positional_embedding = text.positional_embedding
        self.ln_final = text.ln_final
        self.text_projection = text.text_projection
        self.register_buffer("attn_mask", text.attn_mask, persistent=False)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))

    def no_weight_decay(self) -> set[str]:
        return {"positional_embedding", "visual.class_embedding", "visual.positional_embedding"}

    def encode_image(self, image: Tensor, normalize: bool = False) -> Tensor:
        """Images (B, 3, H, W) -> (B, embed_dim), L2-normalised if asked."""
        features = self.visual(image)
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(self, text: Tensor, normalize: bool = False) -> Tensor:
        """Ids (B, context_length) -> (B, embed_dim), L2-normalised if asked."""
        features = _encode_text(self, text)
        return F.normalize(features, dim=-1) if normalize else features

    def forward(self, image: Tensor, text: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(normalised image features (B, E), normalised text features (B', E), exp(logit_scale) clamped at 100)."""
        return (self.encode_image(image, normalize=True), self.encode_text(text, normalize=True),
                self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp())


class ClipHead(nn.Module):
    """The core of the paper's pseudocode: project both towers' features into one space, L2-normalise, and keep a
    learned temperature. W_i = image_projection (image_dim, embed_dim), W_t = text_projection (text_dim,
    embed_dim), logit_scale = log(1 / tau), initialised to log(1/0.07).

    forward(image_features (B, image_dim), text_features (B', text_dim)) ->
    (I_e (B, embed_dim), T_e (B', embed_dim), exp(logit_scale) clamped at 100).
    """

    def __init__(self, image_dim: int, text_dim: int, embed_dim: int) -> None:
        super().__init__()
        self.image_projection = nn.Parameter(torch.randn(image_dim, embed_dim) * image_dim ** -0.5)
        self.text_projection = nn.Parameter(torch.randn(text_dim, embed_dim) * text_dim ** -0.5)
        self.logit_scale = nn.Parameter(torch.tensor(LOGIT_SCALE_INIT))

    def forward(self, image_features: Tensor, text_features: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        image = F.normalize(image_features @ self.image_projection, dim=-1)
        text = F.normalize(text_features @ self.text_projection, dim=-1)
        return image, text, self.logit_scale.clamp(max=LOGIT_SCALE_MAX).exp()


# ---------------------------------------------------------------------------------------------- loss


def clip_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float) -> Tensor:
    """Symmetric InfoNCE: image i's caption is text i. Features (B, E), L2-normalised; logit_scale = 1 / tau.

    logits = logit_scale * I T^T (B, B); loss = (CE(logits, arange) + CE(logits^T, arange)) / 2, a scalar.
    """
    logits = logit_scale * image_features @ text_features.T
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


# ----------------------------------------------------------------------------------------- zero-shot


def class_embeddings(text_features: Tensor) -> Tensor:
    """Prompt ensembling: text features (K classes, T templates, E) -> class embeddings (K, E).

    Each prompt's feature is L2-normalised, the T of a class averaged, and the average normalised again.
    """
    return F.normalize(F.normalize(text_features, dim=-1).mean(dim=1), dim=-1)


@torch.no_grad()
def encode_texts(model: CLIP, tokenizer: Tokenizer, texts: Sequence[str], batch_size: int = 512) -> Tensor:
    """Unnormalised text features (N, E) of `texts`, in eval mode, on the model's device."""
    dev = model.logit_scale.device
    model.eval()
    return torch.cat([model.encode_text(tokenizer(texts[i:i + batch_size], model.context_length).to(dev))
                      for i in range(0, len(texts), batch_size)])


@torch.no_grad()
def encode_images(model: CLIP, images: Tensor, batch_size: int = 512) -> Tensor:
    """Unnormalised image features (N, E) of images (N, 3, H, W), in eval mode, on the model's device."""
    dev = model.logit_scale.device
    model.eval()
    return torch.cat([model.encode_image(images[i:i + batch_size].to(dev)) for i in range(0, len(images), batch_size)])


def zero_shot_classifier(model: CLIP, tokenizer: Tokenizer, classnames: Sequence[str],
                         templates: Sequence[str]) -> Tensor:
    """Class embeddings (K, E) from prompts: template.format(classname) for every pair, ensembled per class."""
    prompts = [t.format(c) for c in classnames for t in templates]
    features = encode_texts(model, tokenizer, prompts)
    return class_embeddings(features.view(len(classnames), len(templates), -1))


def zero_shot_accuracy(model: CLIP, classifier: Tensor, images: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy of argmax_k cos(image, class k) over images (N, 3, H, W) with labels (N,)."""
    features = F.normalize(encode_images(model, images), dim=-1)
    predicted = (features @ classifier.to(features).T).argmax(dim=-1).cpu()
    return (predicted == labels).float().mean().item()


# ----------------------------------------------------------------------------------------- retrieval


def retrieval_ranks(similarity: Tensor, matches: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """1-based ranks of the best-placed correct item, both ways: (image -> text (N_img,), text -> image (N_txt,)).

    similarity (N_img, N_txt); matches (N_img, N_txt) bool, True where the pair is correct (default: the
    diagonal). Rank 1 = a correct item scores highest; ties are counted against the query (rank = 1 + the number
    of wrong items scoring at least as high as the best correct one).
    """
    if matches is None:
        matches = torch.eye(*similarity.shape, dtype=torch.bool, device=similarity.device)
    ranks = []
    for sim, ok in ((similarity, matches), (similarity.T, matches.T)):
        best = sim.masked_fill(~ok, float("-inf")).amax(dim=1, keepdim=True)
        ranks.append(1 + ((sim >= best) & ~ok).sum(dim=1))
    return ranks[0], ranks[1]


def recall_at_k(similarity: Tensor, k: int, matches: Tensor | None = None) -> tuple[float, float]:
    """(image -> text Recall@k, text -> image Recall@k): the fraction of queries with a correct item in the top k."""
    i2t, t2i = retrieval_ranks(similarity, matches)
    return (i2t <= k).float().mean().item(), (t2i <= k).float().mean().item()


def retrieval_metrics(similarity: Tensor, matches: Tensor | None = None, ks: Sequence[int] = (1, 5, 10)
                      ) -> dict[str, float]:
    """Recall@k both ways for each k, and the median ranks: {"i2t R@1": ..., "t2i R@1": ..., "i2t median rank": ...}."""
    i2t, t2i = retrieval_ranks(similarity, matches)
    out = {}
    for k in ks:
        out[f"i2t R@{k}"] = (i2t <= k).float().mean().item()
        out[f"t2i R@{k}"] = (t2i <= k).float().mean().item()
    out["i2t median rank"] = i2t.float().median().item()
    out["t2i median rank"] = t2i.float().median().item()
    return out


# ------------------------------------------------------------------------------------------ training


def train_clip(model: CLIP, images: Tensor, captions: Sequence[Sequence[str]], tokenizer: Tokenizer, *,
               steps: int, batch_size: int = 128, lr: float = 1e-3, weight_decay: float = 0.1,
               warmup_steps: int = 50, temperature: float | None = None, seed: int = 0,
               device: torch.device | str | None = None, progress: bool = True) -> dict:
    """Train `model` with `clip_loss` on (image, caption) pairs, AdamW and warmup + cosine, for `steps` steps.

    images (N, 3, H, W); captions: N lists of phrasings, one drawn at random per image and step. After each step
    logit_scale is clamped to [0, ln 100] as open_clip does. With `temperature`, logit_scale is fixed at
    log(1 / temperature) and not trained. Returns {"loss", "logit_scale" per step, "seconds", "steps"}.
    """
    dev = torch.device(device) if device is not None else best_device()
    model.to(dev).train()
    if temperature is not None:
        with torch.no_grad():
            model.logit_scale.fill_(math.log(1 / temperature))
        model.logit_scale.requires_grad_(False)
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, warmup_steps))
    gen = torch.Generator().manual_seed(seed)
    tokens = [tokenizer(list(options), model.context_length) for options in zip(*captions)]  # per phrasing (N, L)
    tokens = torch.stack(tokens, dim=1)  # (N, phrasings, L)
    history: dict = {"loss": [], "logit_scale": [], "seconds": 0.0, "steps": 0}
    started = time.perf_counter()
    for step in tqdm(range(steps), disable=not progress, unit="step", desc="CLIP"):
        index = torch.randperm(len(images), generator=gen)[:batch_size]  # no image twice in a batch
        choice = torch.randint(tokens.shape[1], (len(index),), generator=gen)
        image_features, text_features, scale = model(images[index].to(dev), tokens[index, choice].to(dev))
        loss = clip_loss(image_features, text_features, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)
        history["loss"].append(loss.item())
        history["logit_scale"].append(model.logit_scale.item())
        history["steps"] = step + 1
    history["seconds"] = time.perf_counter() - started
    model.eval()
    return history
