"""The Vision Transformer, weight for weight timm's `VisionTransformer`, and the tools to look inside it.

Parameter names, shapes and numerics follow timm (LayerNorm eps 1e-6, exact GELU, a fused `qkv` Linear,
a position table with a row for the CLS token, `fc_norm` after average pooling), so a timm state_dict
loads with `strict=True` and gives the same logits, and a model trained here loads into timm.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from vitlab.attention import MultiHeadAttention
from vitlab.patches import PatchEmbed

LN_EPS = 1e-6  # timm's ViT LayerNorm eps (torch's default is 1e-5)

# timm's architectures at 224 x 224 with a 1000-class head: VisionTransformer(**VIT_CONFIGS[name]).
VIT_CONFIGS: dict[str, dict[str, int]] = {
    "vit_tiny_patch16_224": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "vit_small_patch16_224": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6),
    "vit_base_patch16_224": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12),
    "vit_large_patch16_224": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16),
    "vit_huge_patch14_224": dict(patch_size=14, embed_dim=1280, depth=32, num_heads=16),
}


class Mlp(nn.Module):
    """Linear -> GELU (exact, erf) -> Linear, applied to each token: (..., in) -> (..., out)."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 drop: float = 0.0) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


def drop_path(x: Tensor, p: float = 0.0, training: bool = False) -> Tensor:
    """Stochastic depth: zero a whole sample's residual branch with probability p, scale survivors by 1/(1-p).

    x (B, ...) -> (B, ...); the expectation over the random drop equals x. Identity when p == 0 or not training.
    """
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep if keep > 0 else x * mask


class DropPath(nn.Module):
    """`drop_path` as a module: active in training mode only."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p:.3f}"


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x)). (B, N, dim) -> (B, N, dim)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = MultiHeadAttention(dim, num_heads, qkv_bias=qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """x (B, N, dim) -> (B, N, dim), and the attention weights (B, heads, N, N) if return_attention."""
        if return_attention:
            out, weights = self.attn(self.norm1(x), return_attention=True)
        else:
            out = self.attn(self.norm1(x))
        x = x + self.drop_path(out)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return (x, weights) if return_attention else x


class VisionTransformer(nn.Module):
    """ViT (Dosovitskiy et al. 2021) with timm's state_dict: images (B, C, H, W) -> logits (B, num_classes).

    Keys: patch_embed.proj, cls_token (1, 1, D) if class_token, pos_embed (1, prefix + N, D),
    blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm, fc_norm, head. As in timm,
    global_pool="token" reads the CLS token after the final `norm`; global_pool="avg" averages the patch tokens
    and normalises the average with `fc_norm` instead (then `norm` is an identity).
    """

    def __init__(self, img_size: int = 224, patch_size: int = 16, in_chans: int = 3, num_classes: int = 1000,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, class_token: bool = True, global_pool: str = "token",
                 drop_path_rate: float = 0.0) -> None:
        super().__init__()
        if global_pool not in ("token", "avg"):
            raise ValueError(f"global_pool must be 'token' or 'avg', got {global_pool!r}")
        if global_pool == "token" and not class_token:
            raise ValueError("global_pool='token' needs class_token=True")
        self.global_pool = global_pool
        self.num_classes = num_classes
        self.embed_dim = embed_dim
        self.num_prefix_tokens = int(class_token)
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.patch_size = patch_size
        self.grid_size = self.patch_embed.grid_size
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + self.patch_embed.num_patches, embed_dim))
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # deeper blocks drop more often
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, rate) for rate in rates)
        use_fc_norm = global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.fc_norm = nn.LayerNorm(embed_dim, eps=LN_EPS) if use_fc_norm else nn.Identity()
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """timm's initialisation: pos_embed ~ truncated N(0, 0.02), cls ~ N(0, 1e-6), Linear ~ trunc N(0, 0.02)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def embed(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> tokens (B, prefix + N, D): patches, CLS prepended, then positions added."""
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        return x + self.pos_embed

    def forward_features(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Images (B, C, H, W) -> tokens (B, prefix + N, D) after the blocks and `norm`.

        With return_attention, also the list (one per block) of attention weights (B, heads, T, T).
        """
        x = self.embed(x)
        maps = []
        for block in self.blocks:
            if return_attention:
                x, weights = block(x, return_attention=True)
                maps.append(weights)
            else:
                x = block(x)
        x = self.norm(x)
        return (x, maps) if return_attention else x

    def pool(self, x: Tensor) -> Tensor:
        """Tokens (B, T, D) -> (B, D): the CLS token, or the mean of the patch tokens."""
        return x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens:].mean(dim=1)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        """Tokens (B, T, D) -> logits (B, num_classes), or the pooled, normalised features (B, D)."""
        x = self.fc_norm(self.pool(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Images (B, C, H, W) -> logits (B, num_classes), and the per-block attention maps if asked."""
        if return_attention:
            x, maps = self.forward_features(x, return_attention=True)
            return self.forward_head(x), maps
        return self.forward_head(self.forward_features(x))

    def get_attention_maps(self, x: Tensor) -> list[Tensor]:
        """Images (B, C, H, W) -> one (B, heads, T, T) attention map per block (rows: queries; T = prefix + N).

        The maps keep their autograd graph: call it under torch.no_grad() when they are only for pictures.
        """
        return self.forward_features(x, return_attention=True)[1]

    def load_timm_state_dict(self, source: str | Path | Mapping[str, Tensor], strict: bool = True) -> VisionTransformer:
        """`load_timm_state_dict(self, source, strict)`; returns self."""
        return load_timm_state_dict(self, source, strict)


def load_timm_state_dict(model: nn.Module, source: str | Path | Mapping[str, Tensor],
                         strict: bool = True) -> nn.Module:
    """Load timm weights into `model`: a state_dict, a .safetensors file, or a file saved with torch.save.

    Works for timm's plain ViTs (e.g. the `model.safetensors` of a `timm/vit_base_patch16_224.*` hub repository,
    into VisionTransformer(**VIT_CONFIGS["vit_base_patch16_224"])). Returns the model.
    """
    if isinstance(source, (str, Path)):
        path = Path(source)
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    else:
        state = dict(source)
    own = model.state_dict()
    wrong = [f"{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}" for k, v in state.items()
             if k in own and own[k].shape != v.shape]
    if wrong:
        raise ValueError("these weights were saved for another configuration (image size, patch size, width?):\n  "
                         + "\n  ".join(wrong)
                         + "\n  (vitlab.posenc.resample_pos_embed adapts a pos_embed table to another grid)")
    model.load_state_dict(state, strict=strict)
    return model


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters (only those with requires_grad when trainable_only); works on the meta device."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _stack_maps(maps: Sequence[Tensor] | Tensor) -> Tensor:
    """A list of L maps (B, H, T, T), or a tensor (L, B, H, T, T) -> (L, B, H, T, T)."""
    return maps if isinstance(maps, Tensor) else torch.stack(list(maps))


def attention_rollout(maps: Sequence[Tensor] | Tensor, discard_ratio: float = 0.0) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): how much each output token draws on each input token.

    maps: one (B, heads, T, T) map per layer, first layer first. Each layer's map is averaged over heads; with
    discard_ratio > 0 the smallest floor(discard_ratio * T * T) entries of that average are set to zero (a common
    way to sharpen the picture). The residual connection is modelled by adding the identity and renormalising the
    rows, A' = (A + I) / rowsum; the rollout is A'_L ... A'_2 A'_1, shape (B, T, T). Its row 0 (the CLS token),
    columns prefix:, reshaped to the patch grid, is the usual picture.
    """
    maps = _stack_maps(maps)
    n_layers, b, _, t, _ = maps.shape
    eye = torch.eye(t, dtype=maps.dtype, device=maps.device)
    rollout = eye.expand(b, t, t)
    for layer in range(n_layers):
        a = maps[layer].mean(dim=1)  # (B, T, T)
        n_drop = int(discard_ratio * t * t)
        if n_drop:
            smallest = a.flatten(1).topk(n_drop, dim=-1, largest=False).indices
            a = a.flatten(1).scatter(1, smallest, 0.0).view(b, t, t)
        a = a + eye
        rollout = (a / a.sum(dim=-1, keepdim=True)) @ rollout
    return rollout


def patch_centres(grid: int | tuple[int, int], patch_size: int = 1) -> Tensor:
    """Pixel coordinates (row, col) of the centres of a (h, w) grid of patches, row-major: (h * w, 2)."""
    h, w = (grid, grid) if isinstance(grid, int) else grid
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return (torch.stack([rows.flatten(), cols.flatten()], dim=-1).double() + 0.5) * patch_size


def mean_attention_distance(maps: Sequence[Tensor] | Tensor, grid: int | tuple[int, int], patch_size: int,
                            num_prefix_tokens: int = 1) -> Tensor:
    """Mean attention distance in pixels per layer and head: (layers, heads), float64.

    For a query patch, the attention-weighted mean of the distances between its centre and the centres of the
    patches it attends to; averaged over query patches and images. Prefix tokens (CLS) have no position: their
    rows and columns are dropped and each query's weights over the patches renormalised to sum to 1.
    maps: one (B, heads, T, T) map per layer, T = num_prefix_tokens + h * w.
    """
    maps = _stack_maps(maps)
    p = num_prefix_tokens
    a = maps[..., p:, p:].double()
    a = a / a.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    centres = patch_centres(grid, patch_size).to(a.device)
    if centres.shape[0] != a.shape[-1]:
        raise ValueError(f"grid {grid} has {centres.shape[0]} patches but the maps have {a.shape[-1]} patch tokens")
    distance = torch.cdist(centres, centres)  # (N, N)
    return (a * distance).sum(dim=-1).mean(dim=(1, 3))  # sum over keys, mean over images and queries


def position_similarity(pos_embed: Tensor, num_prefix_tokens: int = 1) -> Tensor:
    """Cosine similarity between the learned position embeddings of every pair of patches: (N, N).

    pos_embed (1, prefix + N, D); reshape a row to the patch grid to see which positions a patch resembles.
    """
    table = pos_embed[0, num_prefix_tokens:]
    table = table / table.norm(dim=-1, keepdim=True)
    return table @ table.T
