"""Parameter-efficient fine-tuning of `vitlab.vit.VisionTransformer`: LoRA, bottleneck adapters, prefix K/V.

Each method wraps modules of a pretrained ViT in place, without touching `vitlab.vit`: `add_lora` wraps
Linear layers, `add_adapters` each block's MLP, `add_prefix` each block's attention. All of them freeze the
pretrained weights and leave only the new parameters (and the names in `train_also`, the head by default)
trainable. LoRA and adapters start as the identity change (B = 0, up-projection = 0): the wrapped model
computes exactly what the pretrained one did until the first step.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.attention import MultiHeadAttention
from vitlab.transfer import freeze


class LoRALinear(nn.Module):
    """A frozen Linear plus a low-rank update (Hu et al. 2021): x -> base(x) + (alpha / r) x A^T B^T.

    (..., in) -> (..., out). `lora_A` (r, in) starts random (Kaiming-uniform, as nn.Linear), `lora_B` (out, r)
    starts at zero, so the layer starts as `base`. state_dict keys: base.weight, base.bias, lora_A, lora_B.
    """

    def __init__(self, base: nn.Linear, r: int = 4, alpha: float = 4.0) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.r, self.alpha, self.scaling = r, alpha, alpha / r
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.lora_A.T @ self.lora_B.T) * self.scaling

    def delta_weight(self) -> Tensor:
        """The update (alpha / r) B A, shaped like base.weight (out, in)."""
        return self.scaling * self.lora_B @ self.lora_A

    @torch.no_grad()
    def merge(self) -> nn.Linear:
        """One nn.Linear with weight W0 + (alpha / r) B A and the base's bias: the same outputs, no extra cost."""
        merged = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                           device=self.base.weight.device, dtype=self.base.weight.dtype)
        merged.weight.copy_(self.base.weight + self.delta_weight())
        if self.base.bias is not None:
            merged.bias.copy_(self.base.bias)
        return merged

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}"


class Adapter(nn.Module):
    """A bottleneck adapter (Houlsby et al. 2019): h -> h + up(GELU(down(h))). (..., dim) -> (..., dim).

    `up` starts at zero (weight and bias), so the adapter starts as the identity.
    """

    def __init__(self, dim: int, bottleneck: int) -> None:
        super().__init__()
        self.down = nn.Linear(dim, bottleneck)
        self.act = nn.GELU()
        self.up = nn.Linear(bottleneck, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.up(self.act(self.down(h)))


class AdaptedMlp(nn.Module):
    """A block's MLP followed by an adapter, inside the residual branch: x -> adapter(mlp(x))."""

    def __init__(self, mlp: nn.Module, adapter: Adapter) -> None:
        super().__init__()
        self.mlp, self.adapter = mlp, adapter

    def forward(self, x: Tensor) -> Tensor:
        return self.adapter(self.mlp(x))


class PrefixAttention(nn.Module):
    """Self-attention with `length` learned keys and values prepended at this layer (Li & Liang 2021).

    x (B, N, dim) -> (B, N, dim). The queries are the N tokens' own; the keys and values are the learned
    `prefix_k`, `prefix_v` (length, dim), split into heads like the tokens' keys and values, followed by the
    tokens' own. The wrapped attention is frozen. state_dict keys: attn.qkv.*, attn.proj.*, prefix_k, prefix_v.
    """

    def __init__(self, attn: MultiHeadAttention, length: int = 4) -> None:
        super().__init__()
        self.attn = attn.requires_grad_(False)
        dim = attn.qkv.in_features
        factory = {"device": attn.qkv.weight.device, "dtype": attn.qkv.weight.dtype}
        self.prefix_k = nn.Parameter(0.02 * torch.randn(length, dim, **factory))
        self.prefix_v = nn.Parameter(0.02 * torch.randn(length, dim, **factory))

    def forward(self, x: Tensor) -> Tensor:
        b, n, dim = x.shape
        heads, head_dim = self.attn.num_heads, self.attn.head_dim
        q, k, v = self.attn.qkv(x).reshape(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)  # (B, H, N, hd)

        def split(prefix: Tensor) -> Tensor:  # (P, dim) -> (B, H, P, hd)
            return prefix.reshape(-1, heads, head_dim).transpose(0, 1).expand(b, -1, -1, -1)

        k = torch.cat([split(self.prefix_k), k], dim=2)
        v = torch.cat([split(self.prefix_v), v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.attn.proj(out.transpose(1, 2).reshape(b, n, dim))


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    """Set the submodule called `name` (dotted) of `model` to `new`."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def add_lora(model: nn.Module, r: int = 4, alpha: float = 4.0, targets: Sequence[str] = ("attn.qkv",),
             train_also: Sequence[str] = ("head",)) -> nn.Module:
    """Freeze `model`, then wrap every Linear whose name ends with one of `targets` in a LoRALinear. Returns model."""
    freeze(model, train_also)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.endswith(tuple(targets))]
    for name in names:
        _replace(model, name, LoRALinear(model.get_submodule(name), r, alpha))
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every LoRALinear by its merged nn.Linear, in place: the state_dict keys are the plain ViT's again."""
    for name in [n for n, m in model.named_modules() if isinstance(m, LoRALinear)]:
        _replace(model, name, model.get_submodule(name).merge())
    return model


def add_adapters(model: nn.Module, bottleneck: int = 8, train_also: Sequence[str] = ("head",)) -> nn.Module:
    """Freeze `model`, then put an Adapter after the MLP of every block (`blocks.i.mlp`). Returns model."""
    freeze(model, train_also)
    for block in model.blocks:
        mlp = block.mlp
        block.mlp = AdaptedMlp(mlp, Adapter(mlp.fc2.out_features, bottleneck).to(mlp.fc2.weight))
    return model


def add_prefix(model: nn.Module, length: int = 4, train_also: Sequence[str] = ("head",)) -> nn.Module:
    """Freeze `model`, then give every block's attention `length` learned keys and values. Returns model."""
    freeze(model, train_also)
    for block in model.blocks:
        block.attn = PrefixAttention(block.attn, length)
    return model
