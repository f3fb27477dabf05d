"""Beyond single images: cross-attention fusion of text and image tokens, video tubelets, spectrogram patches,
and ImageGPT's k-means colour palette.

Shapes: B batch, L tokens, D features, C channels, T frames, H x W pixels, F frequency bins, K palette colours.
"""
from __future__ import annotations

import math
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from vitlab.patches import PatchEmbed
from vitlab.vit import Block

# ----------------------------------------------------------------------------------- cross-attention


class CrossAttention(nn.Module):
    """Multi-head cross-attention: queries from x (B, Lq, dim), keys and values from context (B, Lk, context_dim).

    state_dict keys: q.weight, q.bias, kv.weight, kv.bias (keys then values, fused), proj.weight, proj.bias.
    """

    def __init__(self, dim: int, num_heads: int = 8, context_dim: int | None = None, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(context_dim or dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, context: Tensor, return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """(B, Lq, dim), (B, Lk, context_dim) -> (B, Lq, dim), and the weights (B, heads, Lq, Lk) if asked."""
        b, lq, dim = x.shape
        q = self.q(x).reshape(b, lq, self.num_heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(context).reshape(b, context.shape[1], 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if return_attention:
            weights = (q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)).softmax(dim=-1)
            out = weights @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        out = self.proj(out.transpose(1, 2).reshape(b, lq, dim))
        return (out, weights) if return_attention else out


class FusionVQA(nn.Module):
    """Answer a question about an image: question tokens attend to image patch tokens through cross-attention.

    images (B, 3, S, S), questions (B, Lq) word indices -> answer logits (B, num_answers). The image goes through
    a patch embedding and `depth` ViT blocks, the question through a word embedding and one self-attention block;
    then each word reads the image (cross-attention + MLP, pre-norm), and the mean word feeds the head.
    """

    def __init__(self, vocab_size: int, num_answers: int, question_len: int = 5, img_size: int = 32,
                 patch_size: int = 4, dim: int = 64, num_heads: int = 4, depth: int = 1) -> None:
        super().__init__()
        self.patch_embed = PatchEmbed(img_size, patch_size, 3, dim)
        self.image_pos = nn.Parameter(0.02 * torch.randn(1, self.patch_embed.num_patches, dim))
        self.image_blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio=2.0) for _ in range(depth)])
        self.word_embed = nn.Embedding(vocab_size, dim)
        self.word_pos = nn.Parameter(0.02 * torch.randn(1, question_len, dim))
        self.text_block = Block(dim, num_heads, mlp_ratio=2.0)
        self.norm_text = nn.LayerNorm(dim, eps=1e-6)
        self.norm_image = nn.LayerNorm(dim, eps=1e-6)
        self.cross = CrossAttention(dim, num_heads)
        self.norm_mlp = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_answers)

    def fuse(self, images: Tensor, questions: Tensor, return_attention: bool = False):
        """The word features after reading the image (B, Lq, dim), and the cross-attention weights if asked."""
        image = self.image_blocks(self.patch_embed(images) + self.image_pos)
        text = self.text_block(self.word_embed(questions) + self.word_pos)
        read = self.cross(self.norm_text(text), self.norm_image(image), return_attention=return_attention)
        read, weights = read if return_attention else (read, None)
        text = text + read
        text = text + self.mlp(self.norm_mlp(text))
        return (text, weights) if return_attention else text

    def forward(self, images: Tensor, questions: Tensor) -> Tensor:
        return self.head(self.norm(self.fuse(images, questions)).mean(dim=1))


@torch.no_grad()
def vqa_accuracy(model: nn.Module, images: Tensor, questions: Tensor, answers: Tensor, batch_size: int = 512) -> float:
    """The fraction of answers the model gets right."""
    model.eval()
    dev = next(model.parameters()).device
    right = sum((model(images[i:i + batch_size].to(dev), questions[i:i + batch_size].to(dev)).argmax(-1).cpu()
                 == answers[i:i + batch_size]).sum().item() for i in range(0, len(answers), batch_size))
    return right / len(answers)


def fit_vqa(model: nn.Module, train: tuple[Tensor, Tensor, Tensor], test: tuple[Tensor, Tensor, Tensor], *,
            steps: int, batch_size: int = 128, lr: float = 2e-3, weight_decay: float = 0.05, seed: int = 0,
            device: torch.device | str = "cpu") -> dict:
    """Train on (images, questions, answers) with AdamW, cross-entropy and a linear warmup + cosine schedule.

    Returns {"train_loss": per step, "test_acc": at the end, "seconds": training time}.
    """
    from vitlab.train import param_groups, warmup_cosine

    model.to(device).train()
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, steps, steps // 10))
    gen = torch.Generator().manual_seed(seed)
    history: dict = {"train_loss": []}
    started = time.perf_counter()
    for _ in (bar := tqdm(range(steps), unit="step")):
        idx = torch.randint(len(train[2]), (batch_size,), generator=gen)
        images, questions, answers = (t[idx].to(device) for t in train)
        loss = F.cross_entropy(model(images, questions), answers)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        history["train_loss"].append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    history["seconds"] = time.perf_counter() - started
    history["test_acc"] = vqa_accuracy(model, *test)
    return history


# ------------------------------------------------------------------------------------------- video


def tubelet_embed(video: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """Embed non-overlapping t x p x q tubelets: video (B, C, T, H, W), weight (D, C, t, p, q) -> (B, N, D).

    Tokens are ordered time first, then rows, then columns (a Conv3d output flattened); N = T//t * H//p * W//q.
    """
    return F.conv3d(video, weight, bias, stride=weight.shape[2:]).flatten(2).transpose(1, 2)


def tubelets(video: Tensor, size: tuple[int, int, int]) -> Tensor:
    """Cut video (B, C, T, H, W) into t x p x q tubelets, each flattened in the order (C, t, p, q): (B, N, C*t*p*q).

    The remainder of T, H, W that does not fill a whole tubelet is dropped, as a strided Conv3d drops it.
    """
    b, c = video.shape[:2]
    t, p, q = size
    nt, nh, nw = (n // s for n, s in zip(video.shape[2:], size))
    x = video[:, :, :nt * t, :nh * p, :nw * q].reshape(b, c, nt, t, nh, p, nw, q)
    return x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, nt * nh * nw, c * t * p * q)


class TubeletEmbed(nn.Module):
    """Video patch embedding with a Conv3d of kernel = stride = tubelet: (B, C, T, H, W) -> (B, N, D)."""

    def __init__(self, tubelet: tuple[int, int, int] = (2, 4, 4), in_chans: int = 3, embed_dim: int = 64) -> None:
        super().__init__()
        self.tubelet = tuple(tubelet)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=self.tubelet, stride=self.tubelet)

    def forward(self, video: Tensor) -> Tensor:
        return self.proj(video).flatten(2).transpose(1, 2)


def attention_pairs(frames: int, patches: int, kind: str = "joint") -> int:
    """Query-key pairs one self-attention layer scores for `frames` x `patches` tokens (no CLS token).

    "joint": every token attends to every token, (T N)^2. "divided" (TimeSformer): a time attention over the T
    tokens at the same place, then a space attention over the N tokens of the same frame, T N (T + N).
    "frames": space attention only, each frame on its own, T N^2.
    """
    t, n = frames, patches
    counts = {"joint": (t * n) ** 2, "divided": t * n * (t + n), "frames": t * n * n}
    if kind not in counts:
        raise ValueError(f"kind must be one of {', '.join(counts)}, got {kind!r}")
    return counts[kind]


# ------------------------------------------------------------------------------------------- audio


def spectrogram(wave: Tensor, n_fft: int = 256, hop: int = 64) -> Tensor:
    """Power spectrogram in decibels: wave (..., L) -> (..., n_fft // 2 + 1, frames), frames = L // hop + 1.

    Hann window of n_fft samples, centred frames (reflect padding), 10 log10(|X|^2 + 1e-10).
    """
    window = torch.hann_window(n_fft, dtype=wave.dtype, device=wave.device)
    flat = wave.reshape(-1, wave.shape[-1])
    spec = torch.stft(flat, n_fft, hop_length=hop, window=window, return_complex=True)
    power = spec.real ** 2 + spec.imag ** 2
    return (10 * torch.log10(power + 1e-10)).reshape(*wave.shape[:-1], *spec.shape[-2:])


def spectrogram_patches(wave: Tensor, n_fft: int = 256, hop: int = 64, patch: int = 8) -> Tensor:
    """wave (B, L) -> patches (B, N, patch * patch) of its decibel spectrogram, like an image's.

    The spectrogram (B, F, frames) is cropped to whole patches (the top bins, Nyquist first, and the last frames
    go); patches run over frequency rows from the lowest band up, and within a row over time.
    """
    spec = spectrogram(wave, n_fft, hop)
    nf, nt = spec.shape[-2] // patch, spec.shape[-1] // patch
    x = spec[:, :nf * patch, :nt * patch].reshape(-1, nf, patch, nt, patch)
    return x.permute(0, 1, 3, 2, 4).reshape(-1, nf * nt, patch * patch)


# ------------------------------------------------------------------------------------ colour palette


def nearest_colour(pixels: Tensor, palette: Tensor) -> Tensor:
    """Index (N,) of the palette colour (K, 3) nearest to each pixel (N, 3) in squared Euclidean distance."""
    distances = (pixels * pixels).sum(-1, keepdim=True) - 2 * pixels @ palette.T + (palette * palette).sum(-1)
    return distances.argmin(dim=-1)


def kmeans_step(pixels: Tensor, palette: Tensor) -> tuple[Tensor, Tensor]:
    """One Lloyd step: (labels (N,) of the nearest colours, new palette (K, 3) = mean pixel of each cluster).

    A colour that no pixel chose keeps its old value.
    """
    labels = ((pixels[:, None, :] - palette[None]) ** 2).sum(-1).argmin(dim=-1)
    counts = torch.bincount(labels, minlength=len(palette)).to(pixels.dtype)
    sums = torch.zeros_like(palette).index_add_(0, labels, pixels)
    new = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], palette)
    return labels, new


def kmeans(pixels: Tensor, palette: Tensor, max_iter: int = 100) -> tuple[Tensor, Tensor, float]:
    """Lloyd's k-means from the initial palette (K, 3) until no pixel changes cluster (or max_iter steps).

    Returns (palette (K, 3), labels (N,) of the final palette, inertia = sum of squared distances).
    """
    labels = None
    for _ in range(max_iter):
        new_labels, palette = kmeans_step(pixels, palette)
        if labels is not None and torch.equal(new_labels, labels):
            break
        labels = new_labels
    labels = nearest_colour(pixels, palette)
    return palette, labels, float(((pixels - palette[labels]) ** 2).sum())


def init_palette(pixels: Tensor, k: int, seed: int = 0) -> Tensor:
    """k distinct pixels (N, 3), chosen at random, as a starting palette (K, 3)."""
    colours = torch.unique(pixels, dim=0)
    pick = torch.randperm(len(colours), generator=torch.Generator().manual_seed(seed))[:k]
    return colours[pick].clone()


def quantise(images: Tensor, palette: Tensor) -> Tensor:
    """images (B, 3, H, W) -> palette indices (B, H, W): ImageGPT's tokens, one per pixel."""
    b, _, h, w = images.shape
    return nearest_colour(images.permute(0, 2, 3, 1).reshape(-1, 3), palette).reshape(b, h, w)


def dequantise(indices: Tensor, palette: Tensor) -> Tensor:
    """palette indices (B, H, W) -> images (B, 3, H, W) in the palette's colours."""
    return palette[indices].permute(0, 3, 1, 2)
