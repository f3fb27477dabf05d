"""Knowledge distillation: the soft (Hinton) and hard (DeiT) distillation losses, the loss that mixes them
with the label loss, and DeiT's distillation-token ViT built on `vitlab.vit.VisionTransformer`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vitlab.train import soft_target_cross_entropy
from vitlab.vit import VisionTransformer


def soft_distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """T^2 KL(softmax(teacher / T) || softmax(student / T)), averaged over the batch. (B, K) x2 -> ().

    The T^2 keeps the gradient's size independent of T (the gradient of the KL shrinks like 1 / T^2).
    """
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                    reduction="batchmean", log_target=True) * t * t


def hard_distillation_loss(student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
    """Cross-entropy against the teacher's argmax (DeiT's hard distillation). (B, K) x2 -> ()."""
    return F.cross_entropy(student_logits, teacher_logits.argmax(dim=-1))


class DistillationLoss(nn.Module):
    """(1 - alpha) * label loss + alpha * distillation loss, as DeiT trains.

    Call `loss(outputs, inputs, targets)`: outputs are logits (B, K) or DeiT's pair (class logits, distillation
    logits); the label loss is on the class logits, the distillation loss on the distillation logits (the same
    logits for a plain model). The frozen `teacher` sees the same (possibly mixed) inputs. targets: labels (B,)
    or soft targets (B, K). kind: "soft" (KL at `temperature`), "hard" (teacher argmax) or "none".
    """

    def __init__(self, teacher: nn.Module, kind: str = "hard", alpha: float = 0.5, temperature: float = 1.0,
                 label_smoothing: float = 0.0) -> None:
        super().__init__()
        if kind not in ("soft", "hard", "none"):
            raise ValueError(f"kind must be 'soft', 'hard' or 'none', got {kind!r}")
        self.teacher = teacher.eval().requires_grad_(False)
        self.kind, self.alpha, self.temperature, self.label_smoothing = kind, alpha, temperature, label_smoothing

    def forward(self, outputs: Tensor | tuple[Tensor, Tensor], inputs: Tensor, targets: Tensor) -> Tensor:
        logits, dist_logits = outputs if isinstance(outputs, tuple) else (outputs, outputs)
        logits, dist_logits = logits.float(), dist_logits.float()
        if targets.ndim == 2:
            base = soft_target_cross_entropy(logits, targets)
        else:
            base = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        if self.kind == "none":
            return base
        with torch.no_grad():
            teacher_logits = self.teacher(inputs).float()
        if self.kind == "soft":
            distill = soft_distillation_loss(dist_logits, teacher_logits, self.temperature)
        else:
            distill = hard_distillation_loss(dist_logits, teacher_logits)
        return (1 - self.alpha) * base + self.alpha * distill


class DistilledVisionTransformer(VisionTransformer):
    """DeiT's ViT with a distillation token (timm's VisionTransformerDistilled state_dict).

    Tokens: [CLS, DIST, patches] + pos_embed (1, N + 2, D). Two heads: `head` reads CLS (trained on the labels),
    `head_dist` reads DIST (trained on the teacher). In training mode forward returns the pair of logits
    (B, K) x2; in eval mode their average.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        dim, n = self.embed_dim, self.patch_embed.num_patches
        self.num_prefix_tokens = 2
        self.dist_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 2, dim))
        self.head_dist = nn.Linear(dim, self.num_classes) if self.num_classes > 0 else nn.Identity()
        self.reset_parameters()
        nn.init.trunc_normal_(self.dist_token, std=0.02)

    def embed(self, x: Tensor) -> Tensor:
        """Images (B, C, H, W) -> tokens (B, 2 + N, D): CLS, DIST, patches, plus positions."""
        x = self.patch_embed(x)
        b = x.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), self.dist_token.expand(b, -1, -1), x], dim=1)
        return x + self.pos_embed

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Tokens (B, T, D) -> (class logits, distillation logits) in training, their mean in eval."""
        if pre_logits:
            return (x[:, 0] + x[:, 1]) / 2
        logits, dist_logits = self.head(x[:, 0]), self.head_dist(x[:, 1])
        return (logits, dist_logits) if self.training else (logits + dist_logits) / 2
