"""The checks against typical wrong answers: every mutant fails its check, and the message names the mistake.

A mutant is a graded exercise's solution (from solutions/NN_x/NN_x.ipynb) with one line edited the way a
learner typically gets it wrong. It runs through the chapter's visible check in-process; the test asserts that
the check fails (so the mutant loses the points) and that the message holds words naming the mistake (a known
`Mistake`, or `vitlab.diagnose`'s description), not a bare "differs from the reference".
Three lists: MUTANTS (the suite the checks were built against), FRESH (written after it) and HELD (a held-out set
written after FRESH without reading the mistake lists). bench/mutants.py prints the named/total tables of
bench/RESULTS.md from the same lists.
"""
from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from vitlab import check as vcheck

ROOT = Path(__file__).resolve().parents[1]
SKIPPED_IMPORTS = ("matplotlib", "import ipywidgets", "tqdm")


@dataclass(frozen=True)
class Mutant:
    chapter: str
    grade_id: str
    check: str      # "check_attention.sdpa(scaled_dot_product_attention)": the visible check call
    old: str        # the text of one solution line, replaced by `new`
    new: str
    words: str      # words the failure message must contain to name the mistake

    @property
    def id(self) -> str:
        return f"{self.chapter[:2]}-{self.grade_id.removesuffix('-solution')}-{self.new[:30]}"


M = Mutant
A, P, T, V, TR = "01_attention", "02_patches", "03_positions", "04_vit", "05_training"
X, D, S, C, B = "06_transfer_and_scale", "07_detection", "08_segmentation", "09_clip", "10_beyond"
SDPA = "check_attention.sdpa(scaled_dot_product_attention)"
MHA = "check_attention.multi_head(MultiHeadAttention)"
QKV = "qkv(x).reshape(b, n, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)"
KV = "kv(context).reshape(b, lk, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)"
ROPE = "torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)"
HULL = "torch.maximum(a[:, None, 2:], b[None, :, 2:]) - torch.minimum(a[:, None, :2], b[None, :, :2])"
TUBE = "x.permute(0, 2, 4, 6, 1, 3, 5, 7)"
MUTANTS = [
    # 01 attention
    M(A, "sdpa-solution", SDPA, "/ math.sqrt(q.shape[-1])", "", "1/sqrt(d_k)"),
    M(A, "sdpa-solution", SDPA, "/ math.sqrt(q.shape[-1])", "/ q.shape[-1]", "instead of sqrt(d_k)"),
    M(A, "sdpa-solution", SDPA, "masked_fill(dead, 0.0).softmax(dim=-1)", "masked_fill(dead, 0.0).softmax(dim=-2)",
      "wrong axis"),
    M(A, "sdpa-solution", SDPA, "torch.where(mask, scores", "torch.where(~mask, scores", "flipped the mask"),
    M(A, "sdpa-solution", SDPA, "dtype=torch.bool, device=q.device).tril()", "dtype=torch.bool, device=q.device).triu()",
      "triangle"),
    M(A, "mha-solution", MHA, QKV, QKV.replace("3, self.num_heads", "self.num_heads, 3").replace("(2, 0, 3,", "(3, 0, 2,"),
      "heads"),
    M(A, "mha-solution", MHA, QKV, QKV.replace("b, n, 3, self.num_heads, dim // self.num_heads", "b, n, 3, dim // self.num_heads, self.num_heads").replace("(2, 0, 3, 1, 4)", "(2, 0, 4, 1, 3)"),
      "heads"),
    M(A, "mha-solution", MHA, "out.transpose(1, 2).reshape(b, n, dim)", "out.reshape(b, n, dim)", "heads"),
    M(A, "additive-solution", "check_attention.additive(AdditiveAttention)", "torch.tanh(", "torch.relu(", "tanh"),
    M(A, "linear-solution", "check_attention.linear(linear_attention)", "F.elu(q) + 1, F.elu(k) + 1",
      "F.elu(q), F.elu(k)", "elu(x) + 1"),
    # 02 patches
    M(P, "patchify-solution", "check_patches.patchify(patchify)", "(p1 p2 c)", "(c p1 p2)", "channel-first"),
    M(P, "patchify-solution", "check_patches.patchify(patchify)", "b (h w)", "b (w h)", "column"),
    M(P, "unfold-solution", "check_patches.patchify_unfold(patchify_unfold)", "b n (p1 p2 c)", "b n (c p1 p2)",
      "channel"),
    M(P, "unpatchify-solution", "check_patches.unpatchify(unpatchify)", "b (h w) (p1 p2 c)", "b (w h) (p1 p2 c)",
      "column"),
    M(P, "conv-to-linear-solution", "check_patches.conv_weight_to_linear(conv_weight_to_linear)", "(p1 p2 c)",
      "(c p1 p2)", "without a permute"),
    M(P, "num-patches-solution", "check_patches.num_patches(num_patches)", "+ 2 * padding", "+ padding", "padding"),
    M(P, "num-patches-solution", "check_patches.num_patches(num_patches)", "// stride + 1", "// stride", "+ 1"),
    M(P, "patch-embed-solution", "check_patches.patch_embed(PatchEmbed)", ".flatten(2).transpose(1, 2)",
      ".flatten(2)", "(B, D, N)"),
    # 03 positions
    M(T, "sincos-1d-solution", "check_posenc.sincos_1d(sincos_1d)", "2 * i / dim", "i / dim", "i/D"),
    M(T, "sincos-1d-solution", "check_posenc.sincos_1d(sincos_1d)", "[angles.sin(), angles.cos()]",
      "[angles.cos(), angles.sin()]", "swapped sin and cos"),
    M(T, "sincos-1d-solution", "check_posenc.sincos_1d(sincos_1d)", "torch.arange(n, dtype", "torch.arange(1, n + 1, dtype",
      "from 1"),
    M(T, "sincos-1d-solution", "check_posenc.sincos_1d(sincos_1d)", "1.0 / temperature", "1.0 / 10000.0",
      "temperature"),
    M(T, "sincos-1d-solution", "check_posenc.sincos_1d(sincos_1d)", "torch.cat([angles.sin(), angles.cos()], dim=1)",
      "torch.stack([angles.sin(), angles.cos()], dim=2).flatten(1)", "interleave"),
    M(T, "sincos-2d-solution", "check_posenc.sincos_2d(sincos_2d)", "[col_table[cols], row_table[rows]]",
      "[row_table[rows], col_table[cols]]", "row table first"),
    M(T, "relative-index-solution", "check_posenc.relative_position_index(relative_position_index)",
      "* (2 * w - 1)", "* (2 * h - 1)", "2h - 1"),
    M(T, "relative-index-solution", "check_posenc.relative_position_index(relative_position_index)",
      "coords[:, None, :] - coords[None, :, :]", "coords[None, :, :] - coords[:, None, :]", "other way round"),
    M(T, "rope-solution", "check_posenc.apply_rope(apply_rope)", "even, odd = x[..., 0::2], x[..., 1::2]",
      "even, odd = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]", "halves"),
    M(T, "rope-solution", "check_posenc.apply_rope(apply_rope)", ROPE,
      ROPE.replace("cos - odd * sin, even * sin", "cos + odd * sin, -even * sin"), "wrong way"),
    M(T, "rope-solution", "check_posenc.apply_rope(apply_rope)", "2 * i / width", "2 * i / dim", "exponent"),
    M(T, "resample-solution", "check_posenc.resample_pos_embed(resample_pos_embed)", 'mode="bicubic"',
      'mode="bilinear"', "bicubic"),
    M(T, "resample-solution", "check_posenc.resample_pos_embed(resample_pos_embed)",
      "image = grid.reshape(b, gh, gw, dim).permute(0, 3, 1, 2)", "image = grid.reshape(b, dim, gh, gw)", "permute"),
    M(T, "relative-bias-solution", "check_posenc.relative_position_bias(RelativePositionBias)",
      "bias.reshape(n, n, -1).permute(2, 0, 1)", "bias.reshape(-1, n, n)", "permute"),
    # 04 vit
    M(V, "layer-norm-solution", "check_vit.layer_norm(layer_norm)",
      "var = ((x - mean) ** 2).mean(dim=-1, keepdim=True)", "var = x.var(dim=-1, keepdim=True)", "unbiased"),
    M(V, "layer-norm-solution", "check_vit.layer_norm(layer_norm)", "torch.sqrt(var + eps)", "(torch.sqrt(var) + eps)",
      "eps"),
    M(V, "layer-norm-solution", "check_vit.layer_norm(layer_norm)", "(x - mean) / torch", "x / torch", "mean"),
    M(V, "gelu-solution", "check_vit.gelu(gelu)", "torch.erf(x / math.sqrt(2))", "torch.erf(x)", "sqrt(2)"),
    M(V, "gelu-solution", "check_vit.gelu(gelu)", "0.5 * x * (1 + torch.erf(x / math.sqrt(2)))",
      "0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))", "tanh"),
    M(V, "block-solution", "check_vit.block(Block)", "x = x + self.attn(self.norm1(x))",
      "x = self.attn(self.norm1(x))", "residual"),
    M(V, "block-solution", "check_vit.block(Block)", "x = x + self.mlp(self.norm2(x))",
      "x = self.norm2(x + self.mlp(x))", "post-norm"),
    M(V, "vit-solution", "check_vit.vision_transformer(VisionTransformer)", "self.head(self.norm(x)[:, 0])",
      "self.head(self.norm(x).mean(dim=1))", "averaged the tokens"),
    M(V, "vit-solution", "check_vit.vision_transformer(VisionTransformer)", "self.head(self.norm(x)[:, 0])",
      "self.head(x[:, 0])", "norm"),
    M(V, "count-solution", "check_vit.parameter_count(vit_parameter_count)", "+ (n + 1) * d", "+ n * d", "CLS"),
    M(V, "count-solution", "check_vit.parameter_count(vit_parameter_count)", "(d * 3 * d + 3 * d)", "(d * 3 * d)",
      "bias"),
    # 05 training
    M(TR, "cosine-solution", "check_training.cosine_lr(cosine_lr)", "return warmup_lr_init + step *",
      "return warmup_lr_init + (step + 1) *", "off by one"),
    M(TR, "cosine-solution", "check_training.cosine_lr(cosine_lr)", "if step < warmup_steps:",
      "if step <= warmup_steps:", "warm-up"),
    M(TR, "cosine-solution", "check_training.cosine_lr(cosine_lr)", "math.pi * step / total_steps",
      "math.pi * (step - warmup_steps) / (total_steps - warmup_steps)", "warm-up"),
    M(TR, "cosine-solution", "check_training.cosine_lr(cosine_lr)", "return min_lr + 0.5 * (base_lr - min_lr) *",
      "return 0.5 * base_lr *", "min_lr"),
    M(TR, "clip-solution", "check_training.clip_grad_norm(clip_grad_norm)",
      "torch.clamp(max_norm / (total + 1e-6), max=1.0)", "max_norm / (total + 1e-6)", "below max_norm"),
    M(TR, "ema-solution", "check_training.ema_update(ema_update)", "ema_v.mul_(decay).add_(model_v, alpha=1 - decay)",
      "ema_v.mul_(1 - decay).add_(model_v, alpha=decay)", "swapped"),
    M(TR, "smoothing-solution", "check_training.label_smoothing_cross_entropy(label_smoothing_cross_entropy)",
      "+ smoothing / k", "+ smoothing / (k - 1)", "K - 1"),
    M(TR, "smoothing-solution", "check_training.label_smoothing_cross_entropy(label_smoothing_cross_entropy)",
      ".sum(dim=-1).mean()", ".mean()", "mean"),
    M(TR, "cutmix-solution", "check_training.cutmix(cutmix)", "return mixed, kept * targets + (1 - kept) *",
      "return mixed, lam * targets + (1 - lam) *", "area"),
    M(TR, "kd-solution", "check_training.soft_distillation_loss(soft_distillation_loss)", ".mean() * t * t",
      ".mean()", "T^2"),
    M(TR, "kd-solution", "check_training.soft_distillation_loss(soft_distillation_loss)", "student_logits / t",
      "student_logits", "temperature"),
    # 06 transfer and scale
    M(X, "lrd-solution", "check_transfer.layer_decay_groups(layer_decay_groups)", "layer_decay ** (depth + 1 - layer)",
      "layer_decay ** (depth - layer)", "layer"),
    M(X, "lrd-solution", "check_transfer.layer_decay_groups(layer_decay_groups)",
      'decay = p.ndim > 1 and name not in ("cls_token", "pos_embed")', "decay = p.ndim > 1", "pos_embed"),
    M(X, "lora-solution", "check_transfer.lora_linear(LoRALinear)", "self.lora_B.T * self.scaling", "self.lora_B.T",
      "alpha / r"),
    M(X, "lora-solution", "check_transfer.lora_linear(LoRALinear)", "self.base.requires_grad_(False)", "pass",
      "trainable"),
    M(X, "prefix-solution", "check_transfer.prefix_attention(PrefixAttention)",
      "return prefix.reshape(-1, heads, head_dim).transpose(0, 1)", "return prefix.reshape(heads, -1, head_dim)",
      "heads"),
    M(X, "allreduce-solution", "check_transfer.average_gradients(average_gradients)", "p.grad /= world", "pass",
      "sum"),
    M(X, "tp-solution", "check_transfer.tensor_parallel_mlp(tensor_parallel_mlp)", "partials.sum(dim=0) + b2",
      "partials.sum(dim=0) + parts * b2", "bias"),
    # 07 detection
    M(D, "boxes-solution", "check_detection.box_formats(box_cxcywh_to_xyxy, box_xyxy_to_cxcywh)",
      "[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]", "[cx - w, cy - h, cx + w, cy + h]", "half"),
    M(D, "boxes-solution", "check_detection.box_formats(box_cxcywh_to_xyxy, box_xyxy_to_cxcywh)",
      "[(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]", "[x0, y0, x1 - x0, y1 - y0]", "corner"),
    M(D, "iou-solution", "check_detection.box_iou(box_iou)", "wh = (bottom_right - top_left).clamp(min=0)",
      "wh = bottom_right - top_left", "clamp"),
    M(D, "iou-solution", "check_detection.box_iou(box_iou)", "area_a[:, None] + area_b[None, :] - inter",
      "area_a[:, None] + area_b[None, :]", "union"),
    M(D, "giou-solution", "check_detection.generalized_box_iou(generalized_box_iou)", HULL,
      HULL.replace("maximum", "MAX").replace("minimum", "maximum").replace("MAX", "minimum"), "enclos"),
    M(D, "giou-solution", "check_detection.generalized_box_iou(generalized_box_iou)", "(hull - union) / hull",
      "(hull - union) / union", "enclos"),
    M(D, "match-solution", "check_detection.hungarian_match(hungarian_match)", "cost = -1 * prob + 5 * l1 - 2 * giou",
      "cost = prob + 5 * l1 - 2 * giou", "added the class probability"),
    M(D, "loss-solution", "check_detection.set_loss(set_loss)", "weight[-1] = eos_coef", "weight[0] = eos_coef",
      "no-object"),
    M(D, "head-solution", "check_detection.detr_head(DETRHead)", "self.input_proj(tokens[:, self.num_prefix_tokens:])",
      "self.input_proj(tokens)", "CLS"),
    # 08 segmentation
    M(S, "tokens-to-grid-solution", "check_segmentation.tokens_to_grid(tokens_to_grid)",
      "patches.transpose(1, 2).reshape(", "patches.reshape(", "straight to (B, D, h, w)"),
    M(S, "tokens-to-grid-solution", "check_segmentation.tokens_to_grid(tokens_to_grid)", "h, w = grid", "w, h = grid",
      "h, w"),
    M(S, "tokens-to-grid-solution", "check_segmentation.tokens_to_grid(tokens_to_grid)",
      "tokens[:, num_prefix_tokens:]", "tokens[:, 1:]", "num_prefix_tokens"),
    M(S, "mask-transformer-solution", "check_segmentation.mask_transformer(MaskTransformer)",
      "F.normalize(patches, dim=-1), F.normalize(classes, dim=-1)", "patches, classes", "normalis"),
    M(S, "dice-loss-solution", "check_segmentation.dice_loss(dice_loss)", "((2 * overlap + smooth)",
      "((overlap + smooth)", "2"),
    M(S, "confusion-solution", "check_segmentation.confusion_matrix(confusion_matrix)",
      "target.reshape(-1).long() * num_classes + pred.reshape(-1).long()",
      "pred.reshape(-1).long() * num_classes + target.reshape(-1).long()",
      "predicted class in the rows"),
    M(S, "miou-solution", "check_segmentation.mean_iou(mean_iou)", ".nanmean()", ".mean()", "NaN"),
    # 09 clip
    M(C, "text-solution", "check_clip.text_transformer(TextTransformer)", "text.argmax(dim=-1)]", "-1]", "EOT"),
    M(C, "text-solution", "check_clip.text_transformer(TextTransformer)", "attn_mask=self.attn_mask", "attn_mask=None",
      "causal"),
    M(C, "head-solution", "check_clip.clip_head(ClipHead)", "self.logit_scale.exp().clamp(max=100)",
      "self.logit_scale", "exp"),
    M(C, "loss-solution", "check_clip.clip_loss(clip_loss)", "return (loss_i + loss_t) / 2", "return loss_i",
      "symmetric"),
    M(C, "loss-solution", "check_clip.clip_loss(clip_loss)", "logits = logit_scale * image", "logits = image",
      "logit_scale"),
    M(C, "ensemble-solution", "check_clip.class_embeddings(class_embeddings)", "return mean / mean.norm(dim=-1, keepdim=True)",
      "return mean", "normalis"),
    M(C, "recall-solution", "check_clip.recall_at_k(recall_at_k)", "(i2t_rank <= k)", "(i2t_rank < k)", "k - 1"),
    # 10 beyond
    M(B, "cross-attention-solution", "check_beyond.cross_attention(CrossAttention)", KV,
      KV.replace("2, self.num_heads", "self.num_heads, 2").replace("(2, 0, 3,", "(3, 0, 2,"), "heads"),
    M(B, "cross-attention-solution", "check_beyond.cross_attention(CrossAttention)", "/ math.sqrt(self.head_dim)",
      "/ math.sqrt(dim)", "head_dim"),
    M(B, "tubelet-embed-solution", "check_beyond.tubelet_embed(tubelet_embed)", TUBE,
      "x.permute(0, 2, 4, 6, 3, 5, 7, 1)", "channel"),
    M(B, "tubelet-embed-solution", "check_beyond.tubelet_embed(tubelet_embed)", TUBE,
      "x.permute(0, 4, 6, 2, 1, 3, 5, 7)", "order"),
    M(B, "attention-pairs-solution", "check_beyond.attention_pairs(attention_pairs)",
      "return tokens * frames + tokens * patches", "return frames * frames + patches * patches", "T^2 + N^2"),
    M(B, "spectrogram-patches-solution", "check_beyond.spectrogram_patches(spectrogram_patches)",
      "10 * torch.log10", "20 * torch.log10", "times 2"),
    M(B, "kmeans-step-solution", "check_beyond.kmeans_step(kmeans_step)", "torch.where(counts > 0, means, palette)",
      "means", "empty"),
]


# Written after the checks were tuned on MUTANTS, as a stand-in for a held-out set, and measured once before the
# checks learned them (bench/RESULTS.md). Without words: named means more than a bare difference.
FRESH = [
    M(A, "sdpa-solution", SDPA, "scores = scores + mask.to(scores.dtype)", "scores = scores * mask.to(scores.dtype)", ""),
    M(A, "mha-solution", MHA, "return self.proj(out.transpose(1, 2).reshape(b, n, dim))",
      "return out.transpose(1, 2).reshape(b, n, dim)", ""),
    M(A, "linear-solution", "check_attention.linear(linear_attention)", "z = phi_k.sum(dim=-2, keepdim=True)",
      "z = phi_k.mean(dim=-2, keepdim=True)", ""),
    M(P, "num-patches-solution", "check_patches.num_patches(num_patches)", "return side * side", "return side * side + 1",
      ""),
    M(P, "patch-embed-solution", "check_patches.patch_embed(PatchEmbed)", "kernel_size=patch_size, stride=patch_size)",
      "kernel_size=patch_size, stride=patch_size // 2)", ""),
    M(T, "sincos-2d-solution", "check_posenc.sincos_2d(sincos_2d)", "rows = torch.arange(h).repeat_interleave(w)",
      "rows = torch.arange(h).repeat(w)", ""),
    M(T, "rope-solution", "check_posenc.apply_rope(apply_rope)", "omega = 1.0 / temperature ** (2 * i / width)",
      "omega = temperature ** (2 * i / width)", ""),
    M(T, "resample-solution", "check_posenc.resample_pos_embed(resample_pos_embed)", "antialias=True",
      "antialias=False", ""),
    M(V, "gelu-solution", "check_vit.gelu(gelu)", "return 0.5 * x * (1", "return x * (1", ""),
    M(V, "vit-solution", "check_vit.vision_transformer(VisionTransformer)",
      "torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)",
      "torch.cat([x, self.cls_token.expand(x.shape[0], -1, -1)], dim=1)", ""),
    M(TR, "ema-solution", "check_training.ema_update(ema_update)", "ema_v.copy_(model_v)", "pass", ""),
    M(TR, "kd-solution", "check_training.soft_distillation_loss(soft_distillation_loss)",
      "torch.log_softmax(teacher_logits / t, dim=-1)", "torch.log_softmax(teacher_logits, dim=-1)", ""),
    M(TR, "cutmix-solution", "check_training.cutmix(cutmix)",
      "mixed[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]",
      "mixed[..., x0:x1, y0:y1] = x.flip(0)[..., x0:x1, y0:y1]", ""),
    M(X, "lrd-solution", "check_transfer.layer_decay_groups(layer_decay_groups)",
      'if name.startswith(("patch_embed", "cls_token", "pos_embed")):', 'if name.startswith("patch_embed"):', ""),
    M(X, "lora-solution", "check_transfer.lora_linear(LoRALinear)", "self.lora_B.T * self.scaling",
      "self.lora_B.T / self.scaling", ""),
    M(D, "iou-solution", "check_detection.box_iou(box_iou)", "top_left = torch.maximum(", "top_left = torch.minimum(",
      ""),
    M(D, "loss-solution", "check_detection.set_loss(set_loss)", "l1 = (matched - wanted).abs().sum() / num_boxes",
      "l1 = ((matched - wanted) ** 2).sum() / num_boxes", ""),
    M(S, "dice-loss-solution", "check_segmentation.dice_loss(dice_loss)", "probs = logits.softmax(dim=1)",
      "probs = logits.softmax(dim=-1)", ""),
    M(S, "miou-solution", "check_segmentation.mean_iou(mean_iou)", "union = cm.sum(0) + cm.sum(1) - tp",
      "union = cm.sum(0)", ""),
    M(C, "loss-solution", "check_clip.clip_loss(clip_loss)", "loss_t = F.cross_entropy(logits.T, labels)",
      "loss_t = F.cross_entropy(logits, labels)", ""),
    M(C, "ensemble-solution", "check_clip.class_embeddings(class_embeddings)", "mean = text_features.mean(dim=1)",
      "mean = text_features.mean(dim=0)", ""),
    M(C, "head-solution", "check_clip.clip_head(ClipHead)", "image = image / image.norm(dim=-1, keepdim=True)",
      "image = image / image.norm()", ""),
    M(B, "kmeans-step-solution", "check_beyond.kmeans_step(kmeans_step)",
      "means = onehot.T @ pixels / counts.clamp(min=1)", "means = onehot.T @ pixels", ""),
    M(B, "spectrogram-patches-solution", "check_beyond.spectrogram_patches(spectrogram_patches)", "hop_length=hop,",
      "hop_length=n_fft,", ""),
    M(B, "tubelet-embed-solution", "check_beyond.tubelet_embed(tubelet_embed)", "@ weight.reshape(d, -1).T + bias",
      "@ weight.reshape(d, -1).T", ""),
]
# A held-out set, written (from the solution cells alone, before reading the checks' mistake lists) after the
# FRESH round, and measured once before the checks were changed for it (bench/RESULTS.md). Words as for MUTANTS.
HELD = [
    # 01 attention
    M(A, "sdpa-solution", SDPA, "k.transpose(-2, -1) / math.sqrt", "k.transpose(-2, -1) * math.sqrt", "`q` multiplied by 8"),
    M(A, "sdpa-solution", SDPA, 'scores = torch.where(mask, scores, float("-inf"))',
      "scores = torch.where(mask, scores, 0.0)", "with 0 instead of -inf"),
    M(A, "sdpa-solution", SDPA, ".softmax(dim=-1).masked_fill(dead, 0.0)", ".softmax(dim=-1)", "allows nothing"),
    M(A, "sdpa-solution", SDPA, "device=q.device).tril()", "device=q.device).tril(-1)", "blocked the diagonal"),
    M(A, "mha-solution", MHA, "F.scaled_dot_product_attention(q, k, v, attn_mask=mask)",
      "F.scaled_dot_product_attention(q, k, v)", "items whose `mask` blocks some keys"),
    M(A, "linear-solution", "check_attention.linear(linear_attention, causal=True)", "z = torch.cumsum(phi_k, dim=-2)",
      "z = torch.cumsum(phi_k, dim=-1)", "over the features instead of over the keys"),
    M(A, "score-variance-solution", "check_attention.score_variance(score_variance)",
      "scores = scores / math.sqrt(d_k)", "scores = scores / d_k", "divided the dot products by d_k"),
    # 02 patches
    M(P, "patchify-solution", "check_patches.patchify(patchify)", "(p1 p2 c)", "(p2 p1 c)", "(p2 p1 c)"),
    M(P, "unpatchify-solution", "check_patches.unpatchify(unpatchify)", "rows, cols = grid", "cols, rows = grid", "axes 2 and 3 are swapped"),
    M(P, "patch-embed-solution", "check_patches.patch_embed(PatchEmbed)", "self.proj(x).flatten(2).transpose(1, 2)",
      "self.proj(x).transpose(1, 3).flatten(1, 2)", "column by column"),
    M(P, "unfold-solution", "check_patches.patchify_unfold(patchify_unfold)", "kernel_size=patch, stride=patch)",
      "kernel_size=patch, stride=1)", "stride at its default"),
    # 03 positions
    M(T, "sincos-2d-solution", "check_posenc.sincos_2d(sincos_2d)", "col_table = sincos_1d(w, dim // 2, temperature)",
      "col_table = sincos_1d(w, dim // 2)", "wrong only in the first half"),
    M(T, "relative-index-solution", "check_posenc.relative_position_index(relative_position_index)",
      "(offsets[..., 1] + w - 1)", "(offsets[..., 1] + w)", "plus 1, in every entry"),
    M(T, "relative-bias-solution", "check_posenc.relative_position_bias(RelativePositionBias)",
      "bias.reshape(n, n, -1).permute(2, 0, 1)", "bias.reshape(n, n, -1).permute(2, 1, 0)", "key axis before the query axis"),
    M(T, "rope-solution", "check_posenc.apply_rope(apply_rope)", "width = dim // axes", "width = dim", "One size is twice the other"),
    M(T, "rope-solution", "check_posenc.apply_rope(apply_rope)", ROPE,
      ROPE.replace("torch.stack([", "torch.cat([").replace(".flatten(-2)", ""), "two halves (torch.cat"),
    M(T, "resample-solution", "check_posenc.resample_pos_embed(resample_pos_embed)",
      "pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]", "pos_embed[:, :1], pos_embed[:, 1:]", "(one too many): a prefix"),
    M(T, "resample-solution", "check_posenc.resample_pos_embed(resample_pos_embed)", "align_corners=False",
      "align_corners=True", "align_corners=True"),
    # 04 vit
    M(V, "layer-norm-solution", "check_vit.layer_norm(layer_norm)", "* weight + bias", "* bias + weight", "`weight` and `bias` swapped"),
    M(V, "layer-norm-solution", "check_vit.layer_norm(layer_norm)", "mean = x.mean(dim=-1, keepdim=True)",
      "mean = x.mean(dim=0, keepdim=True)", "mean over the wrong axis"),
    M(V, "block-solution", "check_vit.block(Block)", "self.act = nn.GELU()", "self.act = nn.ReLU()", "ReLU"),
    M(V, "vit-solution", "check_vit.vision_transformer(VisionTransformer)", "self.patch_embed.num_patches + 1,",
      "self.patch_embed.num_patches,", "CLS slot in pos_embed"),
    M(V, "count-solution", "check_vit.parameter_count(vit_parameter_count)", "depth * block + 2 * d +",
      "depth * block +", "final LayerNorm"),
    # 05 training
    M(TR, "cosine-solution", "check_training.cosine_lr(cosine_lr)", "min_lr + 0.5 * (base_lr - min_lr)",
      "min_lr + (base_lr - min_lr)", "forgot the 0.5"),
    M(TR, "clip-solution", "check_training.clip_grad_norm(clip_grad_norm)",
      "total = torch.sqrt(sum((g.detach() ** 2).sum() for g in grads))", "total = sum(g.detach().norm() for g in grads)",
      "added the tensors' norms"),
    M(TR, "smoothing-solution", "check_training.label_smoothing_cross_entropy(label_smoothing_cross_entropy)",
      "logp = torch.log_softmax(logits, dim=-1)", "logp = torch.log_softmax(logits, dim=0)", "over the batch (dim=0)"),
    M(TR, "kd-solution", "check_training.soft_distillation_loss(soft_distillation_loss)",
      "(log_p.exp() * (log_p - log_q))", "(log_q.exp() * (log_q - log_p))", "KL(student || teacher)"),
    M(TR, "ema-solution", "check_training.ema_update(ema_update)", "ema_v.mul_(decay).add_(model_v, alpha=1 - decay)",
      "ema_v = decay * ema_v + (1 - decay) * model_v", "weights unchanged"),
    M(TR, "cutmix-solution", "check_training.cutmix(cutmix)", "int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))",
      "int(h * (1 - lam)), int(w * (1 - lam))", "sqrt(1 - lam)"),
    # 06 transfer and scale
    M(X, "lora-solution", "check_transfer.lora_linear(LoRALinear)", "torch.zeros(base.out_features, r)",
      "torch.randn(base.out_features, r)", "initialised B randomly"),
    M(X, "lora-solution", "check_transfer.lora_linear(LoRALinear)", "self.base.weight + self.scaling * self.lora_B",
      "self.base.weight + self.lora_B", "scaling alpha / r in the merged"),
    M(X, "prefix-solution", "check_transfer.prefix_attention(PrefixAttention)",
      "v = torch.cat([split(self.prefix_v), v], dim=2)", "v = torch.cat([split(self.prefix_k), v], dim=2)", "same prefix in front of the keys and the values"),
    M(X, "allreduce-solution", "check_transfer.average_gradients(average_gradients)",
      "dist.all_reduce(p.grad, op", "dist.all_reduce(p.grad.clone(), op", "never added them up"),
    M(X, "tp-solution", "check_transfer.tensor_parallel_mlp(tensor_parallel_mlp)", "w2.chunk(parts, dim=1)",
      "w2.chunk(parts, dim=0)", "split (chunk) along the wrong axis"),
    # 07 detection
    M(D, "giou-solution", "check_detection.generalized_box_iou(generalized_box_iou)", "(hull - union) / hull",
      "(hull - inter) / hull", "intersection, not the union"),
    M(D, "match-solution", "check_detection.hungarian_match(hungarian_match)", "prob = logits.softmax(-1)[:, tgt_labels]",
      "prob = logits[:, tgt_labels]", "raw logits"),
    M(D, "loss-solution", "check_detection.set_loss(set_loss)", "classes, weight=weight)", "classes)", "no-object class"),
    M(D, "head-solution", "check_detection.detr_head(DETRHead)", "self.bbox_embed(hidden).sigmoid()",
      "self.bbox_embed(hidden)", "sigmoid"),
    M(D, "iou-solution", "check_detection.box_iou(box_iou)", "area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])",
      "area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 0])", "?"),
    # 08 segmentation
    M(S, "linear-decoder-solution", "check_segmentation.linear_decoder(LinearDecoder)",
      "tokens_to_grid(self.head(x), grid, num_prefix_tokens=0)", "tokens_to_grid(self.head(x), grid)", "(one too few): a prefix"),
    M(S, "mask-transformer-solution", "check_segmentation.mask_transformer(MaskTransformer)",
      "masks = self.mask_norm(patches @ classes.transpose(1, 2))", "masks = patches @ classes.transpose(1, 2)", "mask_norm"),
    M(S, "dice-loss-solution", "check_segmentation.dice_loss(dice_loss)", "((2 * overlap + smooth)", "((2 * overlap)",
      "denominator only"),
    M(S, "confusion-solution", "check_segmentation.confusion_matrix(confusion_matrix)",
      "minlength=num_classes * num_classes", "minlength=num_classes", "minlength="),
    M(S, "miou-solution", "check_segmentation.mean_iou(mean_iou)", "union = cm.sum(0) + cm.sum(1) - tp",
      "union = cm.sum(0) + cm.sum(1)", "intersection twice"),
    # 09 clip
    M(C, "text-solution", "check_clip.text_transformer(TextTransformer)",
      "x = self.token_embedding(text) + self.positional_embedding", "x = self.token_embedding(text)", "position embedding"),
    M(C, "text-solution", "check_clip.text_transformer(TextTransformer)", '"-inf")).triu(1)', '"-inf")).triu()', "masked the diagonal too"),
    M(C, "loss-solution", "check_clip.clip_loss(clip_loss)", "loss_i = F.cross_entropy(logits, labels)",
      "loss_i = F.cross_entropy(logits.softmax(dim=-1), labels)", "passed probabilities"),
    M(C, "recall-solution", "check_clip.recall_at_k(recall_at_k)", "i2t_rank = (similarity >= correct)",
      "i2t_rank = (similarity > correct)", "for k=2"),
    M(C, "head-solution", "check_clip.clip_head(ClipHead)", "torch.tensor(math.log(1 / 0.07))",
      "torch.tensor(1 / 0.07)", "without the log"),
    M(C, "ensemble-solution", "check_clip.class_embeddings(class_embeddings)",
      "text_features = text_features / text_features.norm(dim=-1, keepdim=True)", "text_features = text_features", "without normalising each prompt"),
    # 10 beyond
    M(B, "cross-attention-solution", "check_beyond.cross_attention(CrossAttention)", "self.head_dim)).softmax(dim=-1)",
      "self.head_dim)).softmax(dim=-2)", "softmax over the queries"),
    M(B, "cross-attention-solution", "check_beyond.cross_attention(CrossAttention)",
      "nn.Linear(context_dim or dim, 2 * dim", "nn.Linear(dim, 2 * dim", "in_features=40"),
    M(B, "tubelet-embed-solution", "check_beyond.tubelet_embed(tubelet_embed)",
      "video.shape[3] // p, video.shape[4] // q", "video.shape[3] // q, video.shape[4] // p", "?"),
    M(B, "spectrogram-patches-solution", "check_beyond.spectrogram_patches(spectrogram_patches)", "spec.abs() ** 2",
      "spec.abs()", "magnitude instead of the power"),
    M(B, "spectrogram-patches-solution", "check_beyond.spectrogram_patches(spectrogram_patches)",
      "return x.permute(0, 1, 3, 2, 4).reshape(", "return x.reshape(", "a reshape where a permute"),
    M(B, "kmeans-step-solution", "check_beyond.kmeans_step(kmeans_step)", "labels = distances.argmin(dim=-1)",
      "labels = distances.argmax(dim=-1)", "farthest colour"),
    M(B, "attention-pairs-solution", "check_beyond.attention_pairs(attention_pairs)", "    return tokens * patches",
      "    return tokens * frames", "times frames/patches"),
]
BARE = (r"differs from the reference: largest error", r", expected about", r"has shape \([^)]*\), expected \([^)]*\)$",
        r"\) = \d+, expected [\d,]+\.$", r"output(\[\d\])? is \S+, expected \S+$")  # a bare difference


def _top_level_imports(source: str) -> str:
    return "\n".join(line for line in source.splitlines()
                     if re.match(r"(import|from) \w", line) and not any(s in line for s in SKIPPED_IMPORTS))


@functools.cache
def _cells(chapter: str) -> tuple[str, dict[str, str]]:
    """The notebook's top-level imports and its solution cells by grade_id."""
    nb = json.loads((ROOT / "solutions" / chapter / f"{chapter}.ipynb").read_text())
    imports, solutions = [], {}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        imports.append(_top_level_imports(source))
        if "### BEGIN SOLUTION" in source:
            solutions[cell["metadata"]["nbgrader"]["grade_id"]] = source
    return "\n".join(filter(None, imports)), solutions


def _in_solution(lines: list[str], i: int) -> bool:
    """Whether line i lies between a ### BEGIN SOLUTION and its ### END SOLUTION."""
    marks = [line.strip() for line in lines[:i] if line.strip() in ("### BEGIN SOLUTION", "### END SOLUTION")]
    return bool(marks) and marks[-1] == "### BEGIN SOLUTION"


def run_mutant(mutant: Mutant) -> str | None:
    """The failure message of the mutant's visible check (None when it passes)."""
    imports, solutions = _cells(mutant.chapter)
    namespace: dict = {"__name__": "__main__"}
    exec(compile(imports, "<imports>", "exec"), namespace)
    for grade_id, source in solutions.items():
        if grade_id == mutant.grade_id:
            lines = source.splitlines()
            inside = [i for i, line in enumerate(lines) if mutant.old in line and _in_solution(lines, i)]
            assert len(inside) == 1, f"{mutant.id}: {mutant.old!r} is on {len(inside)} solution lines of {grade_id}"
            lines[inside[0]] = lines[inside[0]].replace(mutant.old, mutant.new)
            source = "\n".join(lines)
        exec(compile(source, f"<{grade_id}>", "exec"), namespace)
    try:
        eval(mutant.check.replace(")", ", graded=True)", 1), namespace)  # the hidden tests' cases
    except vcheck.CheckFailed as failure:
        return str(failure)
    return None


def named(mutant: Mutant, message: str | None) -> bool:
    """Whether the message names the mistake: it holds the mutant's words, or (for FRESH, without words) says
    more than a bare difference."""
    if message is None or mutant.words == "?":
        return False
    if not mutant.words:
        first = message.splitlines()[0]
        return not any(re.search(bare, first) for bare in BARE)
    return mutant.words.lower() in message.lower()


@pytest.fixture(autouse=True)
def graded(monkeypatch):
    monkeypatch.setenv("NBGRADER_EXECUTION", "autograde")  # a chapter check raises, as under nbgrader


def test_every_graded_chapter_has_four_mutants():
    chapters = [m.chapter for m in MUTANTS]
    assert {c: chapters.count(c) for c in sorted(set(chapters)) if chapters.count(c) < 4} == {}
    assert len(set(chapters)) == 10


@pytest.mark.parametrize("mutant", MUTANTS, ids=lambda m: m.id)
def test_mutant_fails_and_is_named(mutant):
    message = run_mutant(mutant)
    assert message is not None, f"{mutant.id} passed its check"
    assert named(mutant, message), message


@pytest.mark.parametrize("mutant", FRESH, ids=lambda m: m.id)
def test_fresh_mutant_fails_with_more_than_a_bare_difference(mutant):
    message = run_mutant(mutant)
    assert message is not None, f"{mutant.id} passed its check"
    assert named(mutant, message), message


@pytest.mark.parametrize("mutant", HELD, ids=lambda m: m.id)
def test_held_out_mutant_fails_and_is_named(mutant):
    message = run_mutant(mutant)
    assert message is not None, f"{mutant.id} passed its check"
    assert mutant.words == "?" or named(mutant, message), message


def test_held_out_set_is_nine_in_ten_named():
    assert sum(m.words != "?" for m in HELD) >= 0.9 * len(HELD)


@pytest.mark.parametrize("chapter", sorted({m.chapter for m in MUTANTS}))
def test_unmutated_solutions_pass(chapter, capsys):
    mutant = next(m for m in MUTANTS if m.chapter == chapter)
    assert run_mutant(Mutant(chapter, mutant.grade_id, mutant.check, mutant.old, mutant.old, "")) is None
