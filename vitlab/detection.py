"""DETR-style detection on ViT tokens: boxes, IoU and GIoU, the Hungarian matcher, the set loss, a decoder head
with learned object queries, inference without NMS, and COCO mAP through pycocotools.

Conventions are DETR's (Carion et al. 2020): predicted and target boxes are normalised (cx, cy, w, h) in [0, 1],
the classifier has K + 1 outputs with "no object" last, the matching cost weighs class, L1 and GIoU by 1, 5, 2,
and the loss weighs the no-object class by 0.1 in the cross-entropy.
"""
from __future__ import annotations

import contextlib
import io
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from tqdm.auto import tqdm

from vitlab.posenc import sincos_2d
from vitlab.train import param_groups, warmup_cosine

COST_CLASS, COST_BBOX, COST_GIOU = 1.0, 5.0, 2.0  # DETR's matcher and loss weights
EOS_COEF = 0.1  # weight of the no-object class in the cross-entropy


# ------------------------------------------------------------------------------------------------ boxes

def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) [cx, cy, w, h] -> (..., 4) [x0, y0, x1, y1]."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) [x0, y0, x1, y1] -> (..., 4) [cx, cy, w, h]."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """(..., 4) xyxy -> (...) areas."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of xyxy boxes a (N, 4) and b (M, 4): (iou (N, M), union (N, M))."""
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a)[:, None] + box_area(b)[None, :] - inter
    return inter / union, union


def generalized_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise GIoU (N, M) of xyxy boxes a (N, 4) and b (M, 4): IoU - (hull - union) / hull, in [-1, 1]."""
    iou, union = box_iou(a, b)
    top_left = torch.minimum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.maximum(a[:, None, 2:], b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    hull = wh[..., 0] * wh[..., 1]
    return iou - (hull - union) / hull


# ------------------------------------------------------------------------------------------------ matching

def match_cost(logits: Tensor, boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor, cost_class: float = COST_CLASS,
               cost_bbox: float = COST_BBOX, cost_giou: float = COST_GIOU) -> Tensor:
    """DETR's matching cost (Q, M) between Q predictions (logits (Q, K+1), cxcywh boxes (Q, 4)) and M targets:
    -cost_class p(target class) + cost_bbox L1(boxes) - cost_giou GIoU(boxes)."""
    prob = logits.softmax(-1)[:, tgt_labels]
    l1 = (boxes[:, None, :] - tgt_boxes[None, :, :]).abs().sum(-1)
    giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt_boxes))
    return -cost_class * prob + cost_bbox * l1 - cost_giou * giou


@torch.no_grad()
def hungarian_match(logits: Tensor, boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor, **weights: float
                    ) -> tuple[Tensor, Tensor]:
    """The one-to-one assignment of minimum total `match_cost` for one image: (prediction indices (M,),
    target indices (M,)), int64, sorted by prediction index. Needs Q >= M."""
    cost = match_cost(logits.float(), boxes.float(), tgt_labels, tgt_boxes.float(), **weights)
    rows, cols = linear_sum_assignment(cost.cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


@torch.no_grad()
def match_batch(outputs: dict[str, Tensor], targets: list[dict[str, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """`hungarian_match` for every image of a batch: outputs["pred_logits"] (B, Q, K+1), ["pred_boxes"] (B, Q, 4).

    As DETR does, the costs of every prediction against every target of the batch are computed at once, then
    each image's block is solved on its own."""
    logits, boxes = outputs["pred_logits"], outputs["pred_boxes"]
    sizes = [len(t["labels"]) for t in targets]
    labels = torch.cat([t["labels"] for t in targets]).to(logits.device)
    wanted = torch.cat([t["boxes"] for t in targets]).to(boxes.device).float()
    cost = match_cost(logits.flatten(0, 1).float(), boxes.flatten(0, 1).float(), labels, wanted)
    cost = cost.view(len(targets), logits.shape[1], -1).cpu()
    found = []
    for i, block in enumerate(cost.split(sizes, dim=-1)):
        rows, cols = linear_sum_assignment(block[i].numpy())
        found.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
    return found


# ------------------------------------------------------------------------------------------------ the loss

def set_loss(logits: Tensor, boxes: Tensor, targets: list[dict[str, Tensor]], indices: list[tuple[Tensor, Tensor]],
             eos_coef: float = EOS_COEF) -> dict[str, Tensor]:
    """DETR's set criterion for one decoder output: logits (B, Q, K+1), cxcywh boxes (B, Q, 4), the targets and the
    matching `indices`. Returns {"ce", "l1", "giou"} (scalars): cross-entropy over all queries (unmatched ones aim
    at no-object, class K, weighted eos_coef); L1 and 1 - GIoU over matched pairs, summed and divided by the
    number of target boxes in the batch."""
    num_classes = logits.shape[-1] - 1
    classes = torch.full(logits.shape[:2], num_classes, dtype=torch.int64, device=logits.device)
    for i, (src, tgt) in enumerate(indices):
        classes[i, src] = targets[i]["labels"][tgt].to(logits.device)
    weight = torch.ones(num_classes + 1, dtype=logits.dtype, device=logits.device)
    weight[-1] = eos_coef
    ce = F.cross_entropy(logits.transpose(1, 2), classes, weight=weight)
    matched = torch.cat([boxes[i, src] for i, (src, _) in enumerate(indices)])
    wanted = torch.cat([targets[i]["boxes"][tgt] for i, (_, tgt) in enumerate(indices)]).to(boxes)
    num_boxes = max(len(wanted), 1)
    l1 = (matched - wanted).abs().sum() / num_boxes
    giou = torch.diag(generalized_box_iou(box_cxcywh_to_xyxy(matched), box_cxcywh_to_xyxy(wanted)))
    return {"ce": ce, "l1": l1, "giou": (1 - giou).sum() / num_boxes}


def detr_loss(outputs: dict, targets: list[dict[str, Tensor]], eos_coef: float = EOS_COEF, aux: bool = True
              ) -> tuple[Tensor, dict[str, float]]:
    """The total loss 1 ce + 5 l1 + 2 giou of the last decoder layer, plus the same for each earlier layer's
    output (auxiliary losses, each matched on its own) when `aux`. Returns (loss, the last layer's parts)."""
    layers = [outputs] + (list(outputs.get("aux_outputs", [])) if aux else [])
    total = 0.0
    for i, out in enumerate(layers):
        parts = set_loss(out["pred_logits"], out["pred_boxes"], targets, match_batch(out, targets), eos_coef)
        total = total + COST_CLASS * parts["ce"] + COST_BBOX * parts["l1"] + COST_GIOU * parts["giou"]
        if i == 0:
            last = {k: v.item() for k, v in parts.items()}
    return total, last


# ------------------------------------------------------------------------------------------------ the head

class BoxMLP(nn.Module):
    """Linear layers with ReLU between them: (..., in_dim) -> (..., out_dim)."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        dims = [in_dim] + [hidden] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x


class DecoderLayer(nn.Module):
    """DETR's post-norm decoder layer: self-attention among the queries, cross-attention from the queries to the
    image tokens, an MLP. Positions are added to queries and keys at every attention, never to the values.

    tgt (B, Q, D), query_pos (B or 1, Q, D), memory (B, N, D), memory_pos (1, N, D) -> (B, Q, D), and the
    cross-attention weights (B, Q, N) averaged over heads when `return_attention`.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 2.0) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.fc2 = nn.Linear(int(dim * mlp_ratio), dim)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim) for _ in range(3))

    def forward(self, tgt: Tensor, query_pos: Tensor, memory: Tensor, memory_pos: Tensor,
                return_attention: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])
        out, weights = self.cross_attn(tgt + query_pos, memory + memory_pos, memory, need_weights=return_attention)
        tgt = self.norm2(tgt + out)
        tgt = self.norm3(tgt + self.fc2(F.relu(self.fc1(tgt))))
        return (tgt, weights) if return_attention else tgt


class DETRHead(nn.Module):
    """A DETR decoder on a ViT's tokens: (B, prefix + N, D) -> {"pred_logits" (B, Q, K+1), "pred_boxes" (B, Q, 4)
    sigmoid cxcywh, "aux_outputs": the same for every earlier decoder layer}.

    The prefix (CLS) tokens are dropped; the N patch tokens, projected by `input_proj`, get a fixed 2-D sin-cos
    position table (`memory_pos`) at every cross-attention. `query_embed` holds the Q learned object queries,
    used as the queries' positions; the decoder's input starts at zero. One LayerNorm `norm` is applied to each
    layer's output before the shared `class_embed` (K+1) and `bbox_embed` (3-layer MLP, then sigmoid).
    """

    def __init__(self, num_classes: int, embed_dim: int, grid_size: tuple[int, int], num_queries: int = 8,
                 dim: int = 64, depth: int = 2, num_heads: int = 4, mlp_ratio: float = 2.0,
                 num_prefix_tokens: int = 1) -> None:
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.input_proj = nn.Linear(embed_dim, dim)
        self.register_buffer("memory_pos", sincos_2d(*grid_size, dim)[None], persistent=False)
        self.query_embed = nn.Parameter(torch.randn(num_queries, dim))
        self.layers = nn.ModuleList(DecoderLayer(dim, num_heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.class_embed = nn.Linear(dim, num_classes + 1)
        self.bbox_embed = BoxMLP(dim, dim, 4, 3)
        with torch.no_grad():  # start every box near the image centre, about a third of the image wide
            last = self.bbox_embed.layers[-1]
            last.weight.mul_(0.1)
            last.bias.copy_(torch.tensor([0.0, 0.0, -0.8, -0.8]))

    def forward(self, tokens: Tensor, return_attention: bool = False) -> dict:
        memory = self.input_proj(tokens[:, self.num_prefix_tokens:])
        query_pos = self.query_embed[None].expand(len(tokens), -1, -1)
        tgt = torch.zeros_like(query_pos)
        outputs, maps = [], []
        for layer in self.layers:
            if return_attention:
                tgt, weights = layer(tgt, query_pos, memory, self.memory_pos, return_attention=True)
                maps.append(weights)
            else:
                tgt = layer(tgt, query_pos, memory, self.memory_pos)
            hidden = self.norm(tgt)
            outputs.append({"pred_logits": self.class_embed(hidden), "pred_boxes": self.bbox_embed(hidden).sigmoid()})
        result = {**outputs[-1], "aux_outputs": outputs[:-1]}
        if return_attention:
            result["attention"] = maps
        return result


class Detector(nn.Module):
    """A ViT backbone (its `forward_features`) and a DETRHead: images (B, C, H, W) -> the head's outputs."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor, return_attention: bool = False) -> dict:
        return self.head(self.backbone.forward_features(images), return_attention=return_attention)


# ------------------------------------------------------------------------------------------------ training

def train_detector(model: nn.Module, images: Tensor, targets: list[dict[str, Tensor]], *, epochs: int, lr: float,
                   batch_size: int = 64, weight_decay: float = 1e-4, warmup_steps: int = 50, max_steps: int | None = None,
                   max_seconds: float | None = None, clip: float = 1.0, seed: int = 0, progress: bool = True
                   ) -> dict[str, list[float]]:
    """AdamW with warmup + cosine, gradient-norm clipping at `clip` (DETR clips at 0.1 with its lr of 1e-4),
    `detr_loss` with auxiliary losses.

    Stops early after `max_steps` steps or `max_seconds` seconds. Returns the history: "loss", "ce", "l1",
    "giou" per step and "seconds" (the training time, one number).
    """
    dev = next(model.parameters()).device
    steps_per_epoch = math.ceil(len(images) / batch_size)
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    optimizer = torch.optim.AdamW(param_groups(model, weight_decay), lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup_steps))
    generator = torch.Generator().manual_seed(seed)
    history: dict[str, list[float]] = {"loss": [], "ce": [], "l1": [], "giou": []}
    model.train()
    start = time.perf_counter()
    bar = tqdm(total=total, desc="training", disable=not progress)
    while len(history["loss"]) < total:
        for batch in torch.randperm(len(images), generator=generator).split(batch_size):
            x = images[batch].to(dev)
            t = [{k: v.to(dev) for k, v in targets[i].items()} for i in batch.tolist()]
            loss, parts = detr_loss(model(x), t)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            schedule.step()
            history["loss"].append(loss.item())
            for k, v in parts.items():
                history[k].append(v)
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            out_of_time = max_seconds is not None and time.perf_counter() - start > max_seconds
            if len(history["loss"]) >= total or out_of_time:
                break
        if max_seconds is not None and time.perf_counter() - start > max_seconds:
            break
    bar.close()
    history["seconds"] = [time.perf_counter() - start]
    model.eval()
    return history


# ------------------------------------------------------------------------------------------------ inference

@torch.no_grad()
def predict(outputs: dict, threshold: float = 0.0) -> list[dict[str, Tensor]]:
    """Per image, every query whose best real-class probability exceeds `threshold` (no NMS: the set loss already
    taught the queries not to duplicate each other): {"scores" (n,), "labels" (n,), "boxes" (n, 4) cxcywh}."""
    prob = outputs["pred_logits"].softmax(-1)[..., :-1]
    scores, labels = prob.max(-1)
    keep = scores > threshold
    return [{"scores": s[k], "labels": lab[k], "boxes": b[k]}
            for s, lab, b, k in zip(scores, labels, outputs["pred_boxes"], keep)]


@torch.no_grad()
def detect(model: nn.Module, images: Tensor, threshold: float = 0.0, batch_size: int = 256) -> list[dict[str, Tensor]]:
    """`predict` over `images` (N, C, H, W) in batches, in eval mode, results on the CPU."""
    model.eval()
    dev = next(model.parameters()).device
    found = []
    for batch in images.split(batch_size):
        found += [{k: v.cpu() for k, v in p.items()} for p in predict(model(batch.to(dev)), threshold)]
    return found


def _coco_boxes(boxes: Tensor, size: int) -> list[list[float]]:
    """Normalised cxcywh (n, 4) -> COCO [x, y, w, h] in pixels, as lists."""
    xyxy = box_cxcywh_to_xyxy(boxes.float()) * size
    return torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], dim=1).tolist()


def coco_evaluate(predictions: list[dict[str, Tensor]], targets: list[dict[str, Tensor]], size: int,
                  num_classes: int) -> dict[str, float]:
    """COCO box AP with pycocotools' COCOeval (101-point interpolation, 100 detections per image):
    {"mAP": AP@[.5:.95], "AP50", "AP75"}. Boxes are normalised cxcywh of size x size images."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, detections = [], [], []
    for i, (pred, tgt) in enumerate(zip(predictions, targets)):
        images.append({"id": i, "width": size, "height": size})
        for box, label in zip(_coco_boxes(tgt["boxes"], size), tgt["labels"].tolist()):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": label + 1, "bbox": box,
                                "area": box[2] * box[3], "iscrowd": 0})
        for box, label, score in zip(_coco_boxes(pred["boxes"], size), pred["labels"].tolist(),
                                     pred["scores"].tolist()):
            detections.append({"image_id": i, "category_id": label + 1, "bbox": box, "score": score})
    if not detections:
        return {"mAP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints as it goes
        truth = COCO()
        truth.dataset = {"images": images, "annotations": annotations,
                         "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)]}
        truth.createIndex()
        found = truth.loadRes(detections)
        evaluation = COCOeval(truth, found, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    stats = np.maximum(evaluation.stats, 0)  # -1 means "no ground truth in this area range"
    return {"mAP": float(stats[0]), "AP50": float(stats[1]), "AP75": float(stats[2])}
