"""Checks for the exercises of 07_detection: each compares the learner's code with `vitlab.detection`.

Visible checks use `seed=0`; graded checks pass another seed and `graded=True`, which adds float64, other
sizes, boxes that touch, nest or are far apart, images with one target or as many targets as queries, and other
head configurations.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from vitlab import detection as det
from vitlab.check import (CheckFailed, Mistake, PASS, _diagnose, _difference, _refuse, call_learner, check_function,
                          describe, forbid, load_reference_weights, tolerance)
from vitlab.check import exercise_check

BOX_BUILTINS = {det.box_cxcywh_to_xyxy: "vitlab.detection.box_cxcywh_to_xyxy",
                det.box_xyxy_to_cxcywh: "vitlab.detection.box_xyxy_to_cxcywh"}
IOU_BUILTINS = {det.box_iou: "vitlab.detection.box_iou",
                det.generalized_box_iou: "vitlab.detection.generalized_box_iou"}
MATCH_BUILTINS = {det.hungarian_match: "vitlab.detection.hungarian_match", det.match_cost: "vitlab.detection.match_cost",
                  det.match_batch: "vitlab.detection.match_batch"}
LOSS_BUILTINS = {det.set_loss: "vitlab.detection.set_loss", det.detr_loss: "vitlab.detection.detr_loss"}
HEAD_BUILTINS = {det.DETRHead: "vitlab.detection.DETRHead"}


def random_boxes(gen: torch.Generator, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """n random normalised cxcywh boxes (n, 4) that lie inside the unit square, 0.05 to 0.5 wide."""
    wh = 0.05 + 0.45 * torch.rand(n, 2, generator=gen, dtype=torch.float64)
    c = wh / 2 + (1 - wh) * torch.rand(n, 2, generator=gen, dtype=torch.float64)
    return torch.cat([c, wh], dim=1).to(dtype)


def _xyxy(gen: torch.Generator, n: int, dtype: torch.dtype) -> torch.Tensor:
    return det.box_cxcywh_to_xyxy(random_boxes(gen, n, dtype))


# ------------------------------------------------------------------------------------------ box formats


def _to_xyxy_variant(half=True, coco=False):
    def wrong(boxes):
        cx, cy, w, h = boxes.unbind(-1)
        if coco:
            return torch.stack([cx - w / 2, cy - h / 2, w, h], dim=-1)
        k = 2 if half else 1
        return torch.stack([cx - w / k, cy - h / k, cx + w / k, cy + h / k], dim=-1)
    return wrong


TO_XYXY_MISTAKES = [
    Mistake("went a whole width from the centre instead of half of it",
            "The centre is halfway between the edges: x0 = cx - w / 2 and x1 = cx + w / 2.",
            _to_xyxy_variant(half=False)),
    Mistake("returned COCO's [x, y, w, h] instead of the two corners",
            "xyxy holds both corners: [x0, y0, x1, y1] with x1 = cx + w / 2, y1 = cy + h / 2.",
            _to_xyxy_variant(coco=True)),
]
TO_CXCYWH_MISTAKES = [
    Mistake("took the width as x0 - x1 (the wrong sign)",
            "w = x1 - x0 and h = y1 - y0: x1 is the right edge, so the width comes out positive.",
            lambda boxes: torch.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2,
                                       boxes[..., 0] - boxes[..., 2], boxes[..., 1] - boxes[..., 3]], dim=-1)),
    Mistake("returned the corner (x0, y0) instead of the centre",
            "The centre is the mean of the corners: cx = (x0 + x1) / 2, cy = (y0 + y1) / 2.",
            lambda boxes: torch.cat([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], dim=-1)),
]


@exercise_check
def box_formats(to_xyxy, to_cxcywh, *, seed: int = 0, graded: bool = False) -> None:
    """Check `box_cxcywh_to_xyxy(boxes)` and `box_xyxy_to_cxcywh(boxes)` on (..., 4) boxes, and their round trip."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    shapes = [(5,), (2, 3)] + ([(1,), (3, 2, 4)] if graded else [])
    cxcywh = [dict(boxes=random_boxes(gen, math.prod(s), dt).view(*s, 4)) for s in shapes]
    xyxy = [dict(boxes=det.box_cxcywh_to_xyxy(c["boxes"])) for c in cxcywh]
    check_function(to_xyxy, det.box_cxcywh_to_xyxy, cxcywh, name="box_cxcywh_to_xyxy", mistakes=TO_XYXY_MISTAKES,
                   forbidden=BOX_BUILTINS, **tolerance(dt))
    check_function(to_cxcywh, det.box_xyxy_to_cxcywh, xyxy, name="box_xyxy_to_cxcywh", mistakes=TO_CXCYWH_MISTAKES,
                   forbidden=BOX_BUILTINS, **tolerance(dt))


# ------------------------------------------------------------------------------------------------- IoU


def _iou_reference(a, b):
    return det.box_iou(a, b)[0]


def _iou_variant(clamp=True, subtract=True, corners=(torch.maximum, torch.minimum)):
    def wrong(a, b):
        top_left = corners[0](a[:, None, :2], b[None, :, :2])
        bottom_right = corners[1](a[:, None, 2:], b[None, :, 2:])
        wh = bottom_right - top_left
        wh = wh.clamp(min=0) if clamp else wh
        inter = wh[..., 0] * wh[..., 1]
        union = det.box_area(a)[:, None] + det.box_area(b)[None, :] - (inter if subtract else 0)
        return inter / union
    return wrong


IOU_MISTAKES = [
    Mistake("did not clamp the overlap's width and height at zero",
            "Boxes that do not overlap give a negative width or height; two negatives multiply to a positive "
            "'intersection'. Clamp: (bottom_right - top_left).clamp(min=0), then multiply.",
            _iou_variant(clamp=False)),
    Mistake("forgot to subtract the intersection from the union",
            "area(A) + area(B) counts the overlap twice: union = area(A) + area(B) - intersection.",
            _iou_variant(subtract=False)),
    Mistake("took the min of the top-left corners (or the max of the bottom-right ones) for the intersection",
            "The intersection starts at the larger x0, y0 and ends at the smaller x1, y1: "
            "torch.maximum of the top-left corners, torch.minimum of the bottom-right ones.",
            _iou_variant(corners=(torch.minimum, torch.minimum))),
    Mistake("took the max of the bottom-right corners for the intersection",
            "The intersection ends at the smaller x1, y1: torch.minimum of the bottom-right corners.",
            _iou_variant(corners=(torch.maximum, torch.maximum))),
    Mistake("built the enclosing box (min of the top-left corners, max of the bottom-right) instead of the "
            "intersection", "The intersection takes the max of the top-left corners and the min of the bottom-right "
            "ones; the enclosing box is GIoU's, later.", _iou_variant(corners=(torch.minimum, torch.maximum))),
]


def _iou_cases(seed: int, graded: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    cases = [dict(a=_xyxy(gen, 4, dt), b=_xyxy(gen, 6, dt)), dict(a=_xyxy(gen, 7, dt), b=_xyxy(gen, 3, dt))]
    if graded:
        square = torch.tensor([[0.2, 0.2, 0.6, 0.6]], dtype=dt)
        special = torch.tensor([[0.2, 0.2, 0.6, 0.6], [0.3, 0.3, 0.5, 0.5], [0.6, 0.2, 0.9, 0.6],
                                [0.7, 0.7, 0.9, 0.9], [0.0, 0.0, 1.0, 1.0]], dtype=dt)  # same, inside, touching, apart
        cases += [dict(a=square, b=special), dict(a=special, b=special), dict(a=_xyxy(gen, 1, dt), b=_xyxy(gen, 9, dt))]
    return cases


@exercise_check
def box_iou(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `box_iou(a, b)`: pairwise IoU (N, M) of xyxy boxes a (N, 4), b (M, 4)."""
    dt = torch.float64 if graded else torch.float32
    check_function(fn, _iou_reference, _iou_cases(seed, graded), name="box_iou", mistakes=IOU_MISTAKES,
                   forbidden=IOU_BUILTINS, **tolerance(dt))


def _giou_variant(hull_over_union=False, loss=False, enclosing_is_intersection=False, minus_intersection=False):
    def wrong(a, b):
        iou, union = det.box_iou(a, b)
        if enclosing_is_intersection:
            top_left, bottom_right = torch.maximum(a[:, None, :2], b[None, :, :2]), torch.minimum(a[:, None, 2:], b[None, :, 2:])
        else:
            top_left, bottom_right = torch.minimum(a[:, None, :2], b[None, :, :2]), torch.maximum(a[:, None, 2:], b[None, :, 2:])
        wh = (bottom_right - top_left).clamp(min=0)
        hull = wh[..., 0] * wh[..., 1]
        empty = hull - (iou * union if minus_intersection else union)  # iou * union: the intersection
        giou = iou - empty / (union if hull_over_union else hull)
        return 1 - giou if loss else giou
    return wrong


GIOU_MISTAKES = [
    Mistake("divided the empty part of the hull by the union instead of by the hull",
            "GIoU = IoU - (C - union) / C, with C the area of the smallest box enclosing both.",
            _giou_variant(hull_over_union=True)),
    Mistake("returned the GIoU loss 1 - GIoU instead of GIoU",
            "The function returns GIoU itself, in [-1, 1]; the set loss takes 1 - GIoU later.",
            _giou_variant(loss=True)),
    Mistake("built the enclosing box with max of the top-left corners and min of the bottom-right ones "
            "(that is the intersection)",
            "The smallest enclosing box takes the min of the x0, y0 and the max of the x1, y1.",
            _giou_variant(enclosing_is_intersection=True)),
    Mistake("took the intersection, not the union, out of the enclosing box",
            "The penalty is the part of the enclosing box C covered by neither box: (C - union) / C.",
            _giou_variant(minus_intersection=True)),
]


def _enclosure_effect(got, args) -> str | None:
    """Name the area C that a wrong GIoU used, whatever code built it: GIoU = IoU - (C - U) / C."""
    if not isinstance(got, torch.Tensor) or got.dim() != 2:
        return None
    a, b = args["a"].detach().double(), args["b"].detach().double()
    iou, union = det.box_iou(a, b)
    inner = torch.minimum(a[:, None, 2:], b[None, :, 2:]) - torch.maximum(a[:, None, :2], b[None, :, :2])
    area_a, area_b = det.box_area(a)[:, None], det.box_area(b)[None, :]
    candidates = {
        "the area of the intersection box (max of the top-left corners, min of the bottom-right ones)":
            inner.clamp(min=0).prod(-1),
        "the intersection box's width times height without the clamp at 0 (max of the top-left corners, min of "
        "the bottom-right ones)": inner.prod(-1),
        "the union": union,
        "the sum of the two boxes' areas": area_a + area_b,
        "the larger of the two boxes' areas": torch.maximum(area_a, area_b),
    }
    for what, area in candidates.items():
        for over, denominator in (("C", area), ("the union", union)):
            if torch.allclose(got.detach().double(), iou - (area - union) / denominator, atol=1e-4, rtol=1e-3):
                if over == "the union" and what == "the union":
                    continue
                return (f"Your GIoU is IoU - (C - union) / {over} with C = {what}.\n  C is the area of the "
                        "smallest box enclosing both: (max of the x1 - min of the x0) * (max of the y1 - min of the "
                        "y0), and the empty part C - union is divided by C.")
    return None


@exercise_check
def generalized_box_iou(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `generalized_box_iou(a, b)`: pairwise GIoU (N, M) of xyxy boxes."""
    dt = torch.float64 if graded else torch.float32
    check_function(fn, det.generalized_box_iou, _iou_cases(seed + 1, graded), name="generalized_box_iou",
                   mistakes=GIOU_MISTAKES, forbidden=IOU_BUILTINS, explain=_enclosure_effect, **tolerance(dt))


# --------------------------------------------------------------------------------------------- matching


def _canonical(fn):
    """Call a matcher and sort its pairs by prediction index, as int64 tensors (any order of pairs is right)."""
    def sorted_pairs(**kwargs):
        found = fn(**kwargs)
        if not isinstance(found, (tuple, list)) or len(found) != 2:
            return found
        rows, cols = (torch.as_tensor(v).long().reshape(-1) for v in found)
        order = rows.argsort()
        return rows[order], cols[order]
    return sorted_pairs


def _match_variant(**cost):
    def wrong(logits, boxes, tgt_labels, tgt_boxes):
        from scipy.optimize import linear_sum_assignment

        if cost.get("logits"):
            prob = logits[:, tgt_labels]
        else:
            prob = logits.softmax(-1)[:, tgt_labels]
        l1 = (boxes[:, None] - tgt_boxes[None]).abs().sum(-1)
        overlap = det.generalized_box_iou(det.box_cxcywh_to_xyxy(boxes), det.box_cxcywh_to_xyxy(tgt_boxes))
        sign = 1 if cost.get("plus_prob") else -1
        c = sign * prob + cost.get("l1", 5.0) * l1 - 2 * overlap
        rows, cols = linear_sum_assignment(c.detach().numpy(), maximize=bool(cost.get("maximize")))
        return torch.as_tensor(rows).long(), torch.as_tensor(cols).long()
    return _canonical(wrong)


MATCH_MISTAKES = [
    Mistake("added the class probability to the cost instead of subtracting it",
            "A likely class should make a pair cheaper: the class term is -p(target class).",
            _match_variant(plus_prob=True)),
    Mistake("used raw logits in the class cost instead of softmax probabilities",
            "DETR's class cost is -softmax(logits)[:, target labels]: probabilities, which are comparable "
            "across queries; logits are not.", _match_variant(logits=True)),
    Mistake("weighed the L1 term by 1 instead of 5",
            "DETR's cost is 1 * class + 5 * L1 + 2 * (-GIoU).", _match_variant(l1=1.0)),
    Mistake("maximised the cost instead of minimising it",
            "linear_sum_assignment minimises by default; the cost is already 'lower is better'.",
            _match_variant(maximize=True)),
]


def _match_cases(seed: int, graded: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32

    def case(q, m, k=3):
        return dict(logits=2 * torch.randn(q, k + 1, generator=gen, dtype=torch.float64).to(dt),
                    boxes=random_boxes(gen, q, dt), tgt_labels=torch.randint(0, k, (m,), generator=gen),
                    tgt_boxes=random_boxes(gen, m, dt))

    cases = [case(6, 3), case(8, 4), case(10, 2)]
    if graded:
        cases += [case(5, 5, k=4), case(7, 1), case(12, 6, k=5)]
    return cases


def brute_force_match(logits, boxes, tgt_labels, tgt_boxes) -> tuple[torch.Tensor, float]:
    """The minimum total DETR cost over every injective map of targets to predictions: (rows, the cost)."""
    cost = det.match_cost(logits.double(), boxes.double(), tgt_labels, tgt_boxes.double())
    best = min(itertools.permutations(range(len(boxes)), len(tgt_boxes)),
               key=lambda rows: sum(cost[r, c].item() for c, r in enumerate(rows)))
    return torch.tensor(best), sum(cost[r, c].item() for c, r in enumerate(best))


@exercise_check
def hungarian_match(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `hungarian_match(logits, boxes, tgt_labels, tgt_boxes)` -> (prediction indices, target indices)."""
    check_function(_canonical(fn), _canonical(det.hungarian_match), _match_cases(seed, graded), name="hungarian_match",
                   mistakes=MATCH_MISTAKES, forbidden=MATCH_BUILTINS, grad=False)


# --------------------------------------------------------------------------------------------- set loss


def _loss_tuple(fn):
    """Call a set loss and return its (ce, l1, giou) as a tuple (the check compares tuples)."""
    def parts(**kwargs):
        found = fn(**kwargs)
        if not isinstance(found, dict) or set(found) != {"ce", "l1", "giou"}:
            raise CheckFailed(f"set_loss should return a dict with keys 'ce', 'l1', 'giou', got {describe(found)}"
                              + (f" with keys {sorted(found)}" if isinstance(found, dict) else ""))
        return found["ce"], found["l1"], found["giou"]
    return parts


def _loss_variant(eos=None, l1_mean=False, plain_giou=False, per_query=False, no_object_first=False,
                  eos_on_first=False, l1_squared=False):
    def wrong(logits, boxes, targets, indices, eos_coef=det.EOS_COEF):
        if eos_on_first:  # no-object is the last class, but eos_coef went to class 0
            found = det.set_loss(logits, boxes, targets, indices, eos_coef)
            classes = torch.full(logits.shape[:2], logits.shape[-1] - 1, dtype=torch.int64)
            for i, (src, tgt) in enumerate(indices):
                classes[i, src] = targets[i]["labels"][tgt]
            weight = torch.ones(logits.shape[-1], dtype=logits.dtype)
            weight[0] = eos_coef
            return F.cross_entropy(logits.transpose(1, 2), classes, weight=weight), found["l1"], found["giou"]
        if no_object_first:
            classes = torch.zeros(logits.shape[:2], dtype=torch.int64)
            for i, (src, tgt) in enumerate(indices):
                classes[i, src] = targets[i]["labels"][tgt] + 1
            weight = torch.ones(logits.shape[-1], dtype=logits.dtype)
            weight[0] = eos_coef
            found = det.set_loss(logits, boxes, targets, indices, eos_coef)
            return F.cross_entropy(logits.transpose(1, 2), classes, weight=weight), found["l1"], found["giou"]
        found = det.set_loss(logits, boxes, targets, indices, eos_coef if eos is None else eos)
        matched = torch.cat([boxes[i, src] for i, (src, _) in enumerate(indices)])
        wanted = torch.cat([targets[i]["boxes"][tgt] for i, (_, tgt) in enumerate(indices)]).to(boxes)
        giou = torch.diag(det.generalized_box_iou(det.box_cxcywh_to_xyxy(matched), det.box_cxcywh_to_xyxy(wanted)))
        l1, g = found["l1"], found["giou"]
        if l1_squared:
            l1 = ((matched - wanted) ** 2).sum() / max(len(wanted), 1)
        if l1_mean:
            l1 = (matched - wanted).abs().mean()
        if plain_giou:
            g = -giou.sum() / len(wanted)
        if per_query:
            l1, g = l1 * len(wanted) / boxes.shape[:2].numel(), g * len(wanted) / boxes.shape[:2].numel()
        return found["ce"], l1, g
    return wrong


LOSS_MISTAKES = [
    Mistake("squared the box differences (an L2 / MSE loss) instead of taking their absolute values",
            "DETR's box loss is L1: (matched - wanted).abs().sum() / num_boxes.", _loss_variant(l1_squared=True)),
    Mistake("weighed the no-object class like the others (weight 1, not eos_coef)",
            "Most queries are unmatched, so their 'no object' terms would swamp the rest. Pass "
            "weight = [1, ..., 1, eos_coef] to F.cross_entropy (a tensor of K + 1 class weights).",
            _loss_variant(eos=1.0)),
    Mistake("averaged the L1 over every coordinate instead of summing and dividing by the number of boxes",
            "DETR sums |pred - target| over the 4 coordinates of every matched pair, then divides by the number "
            "of target boxes in the batch.", _loss_variant(l1_mean=True)),
    Mistake("summed -GIoU instead of 1 - GIoU",
            "The GIoU loss is 1 - GIoU for each matched pair (0 for a perfect box), summed and divided by the "
            "number of target boxes.", _loss_variant(plain_giou=True)),
    Mistake("divided the box losses by the number of queries instead of the number of target boxes",
            "Normalise L1 and GIoU by the number of target boxes in the batch (at least 1), not by B * Q.",
            _loss_variant(per_query=True)),
    Mistake("gave eos_coef to class 0 instead of the no-object class (the last one)",
            "The down-weighted class is 'no object', index K (the last of the K + 1 columns): weight[-1] = eos_coef.",
            _loss_variant(eos_on_first=True)),
    Mistake("put the no-object class first (index 0) instead of last",
            "DETR's no-object class is the last one, index K: logits have K + 1 columns and unmatched queries "
            "aim at class K.", _loss_variant(no_object_first=True)),
]


def _loss_cases(seed: int, graded: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32

    def case(b, q, k, counts, eos_coef=None):
        logits = 2 * torch.randn(b, q, k + 1, generator=gen, dtype=torch.float64).to(dt)
        boxes = torch.stack([random_boxes(gen, q, dt) for _ in range(b)])
        targets = [{"labels": torch.randint(0, k, (m,), generator=gen), "boxes": random_boxes(gen, m, dt)}
                   for m in counts]
        indices = [(torch.randperm(q, generator=gen)[:m], torch.randperm(m, generator=gen)) for m in counts]
        extra = {} if eos_coef is None else {"eos_coef": eos_coef}
        return dict(logits=logits, boxes=boxes, targets=targets, indices=indices, **extra)

    cases = [case(2, 6, 3, [2, 3]), case(3, 5, 2, [1, 4, 2])]
    if graded:
        cases += [case(1, 4, 5, [4]), case(4, 8, 3, [1, 1, 3, 2], eos_coef=0.3)]
    return cases


@exercise_check
def set_loss(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `set_loss(logits, boxes, targets, indices, eos_coef=0.1)` -> {"ce", "l1", "giou"}, values and gradients."""
    dt = torch.float64 if graded else torch.float32
    check_function(_loss_tuple(fn), _loss_tuple(det.set_loss), _loss_cases(seed, graded), name="set_loss",
                   mistakes=LOSS_MISTAKES, forbidden=LOSS_BUILTINS, **tolerance(dt))


# ------------------------------------------------------------------------------------------------ head


class _NoSigmoid(det.DETRHead):
    def forward(self, tokens, return_attention=False):
        out = super().forward(tokens)
        return {**out, "pred_boxes": torch.logit(out["pred_boxes"]),
                "aux_outputs": [{**a, "pred_boxes": torch.logit(a["pred_boxes"])} for a in out["aux_outputs"]]}


class _NoPositions(det.DETRHead):
    def forward(self, tokens, return_attention=False):
        self.memory_pos = torch.zeros_like(self.memory_pos)
        return super().forward(tokens)


class _NoNorm(det.DETRHead):
    def forward(self, tokens, return_attention=False):
        norm, self.norm = self.norm, nn.Identity()
        try:
            return super().forward(tokens)
        finally:
            self.norm = norm


HEAD_MISTAKES = [
    ("forgot the sigmoid on the box outputs",
     "bbox_embed gives any real numbers; DETR's boxes are normalised cxcywh in [0, 1]: apply .sigmoid().", _NoSigmoid),
    ("left out the 2-D position table of the image tokens",
     "Add self.memory_pos to the memory as the keys' positions in every cross-attention: the layer's "
     "memory_pos argument. Without it the queries cannot tell where a token is (the ViT's own positions fade).",
     _NoPositions),
    ("skipped the shared LayerNorm before the class and box heads",
     "Each decoder layer's output goes through self.norm, then class_embed and bbox_embed.", _NoNorm),
]


def _head_configs(graded: bool) -> list[dict]:
    configs = [dict(num_classes=3, embed_dim=24, grid_size=(4, 4), num_queries=5, dim=16, depth=2, num_heads=2)]
    if graded:
        configs += [dict(num_classes=2, embed_dim=16, grid_size=(3, 5), num_queries=7, dim=8, depth=3, num_heads=2,
                         mlp_ratio=3.0, num_prefix_tokens=2),
                    dict(num_classes=4, embed_dim=12, grid_size=(2, 2), num_queries=3, dim=12, depth=1, num_heads=3)]
    return configs


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Generic random values for every parameter (LayerNorm's 1 and 0 would hide a skipped norm)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
            p.copy_(1 + 0.2 * noise if "norm" in name and name.endswith("weight") else
                    0.2 * noise if p.ndim <= 1 else noise / math.sqrt(p[0].numel()))
    return module


def _outputs(found) -> tuple:
    """A head's output dict as a flat tuple: (logits, boxes, then each auxiliary layer's logits and boxes)."""
    if not isinstance(found, dict) or not {"pred_logits", "pred_boxes", "aux_outputs"} <= set(found):
        raise CheckFailed("DETRHead.forward should return a dict with 'pred_logits', 'pred_boxes' and "
                          f"'aux_outputs', got {describe(found) if not isinstance(found, dict) else sorted(found)}")
    aux = [t for layer in found["aux_outputs"] for t in (layer["pred_logits"], layer["pred_boxes"])]
    return (found["pred_logits"], found["pred_boxes"], *aux)


@exercise_check
def detr_head(cls, *, seed: int = 0, graded: bool = False) -> None:
    """Check `DETRHead(num_classes, embed_dim, grid_size, num_queries, dim, depth, num_heads, mlp_ratio=2.0,
    num_prefix_tokens=1)`: load the reference's weights, compare every layer's class logits and boxes, and the
    gradients of the parameters."""
    gen = torch.Generator().manual_seed(seed)
    name = "DETRHead"
    count = 0
    for c, config in enumerate(_head_configs(graded)):
        reference = _randomise(det.DETRHead(**config), seed + c).eval()
        module = call_learner(name, lambda: cls(**config), {}, f"construction with {config}")
        if not isinstance(module, nn.Module):
            raise CheckFailed(f"{name} should build an nn.Module, got {describe(module)}")
        load_reference_weights(module, reference, name)
        module.eval()
        mistakes = []
        for label, hint, kind in HEAD_MISTAKES:
            wrong = kind(**config).eval()
            wrong.load_state_dict(reference.state_dict())
            mistakes.append(Mistake(label, hint, lambda tokens, wrong=wrong: _outputs(wrong(tokens))))
        prefix = config.get("num_prefix_tokens", 1)
        n = config["grid_size"][0] * config["grid_size"][1]
        for batch in (2, 1) if graded else (2,):
            tokens = torch.randn(batch, prefix + n, config["embed_dim"], generator=gen)
            where = f"config {config}, tokens {describe(tokens)}"
            module.zero_grad(set_to_none=True)
            with forbid(HEAD_BUILTINS) as called:
                got = call_learner(name, module, {"tokens": tokens}, where)
            _refuse(name, called)
            got, expected = _outputs(got), _outputs(reference(tokens))
            problem = _difference(got, expected, 2e-5, 1e-4, "your output")
            if problem:
                with torch.no_grad():
                    message = _diagnose(name, got, mistakes, lambda m: m.impl(tokens), 2e-5, 1e-4)
                raise CheckFailed(message or f"{name}: {problem}\n  (outputs: logits, boxes, then each earlier "
                                  f"layer's logits and boxes)\n  on {where}")
            weights = torch.randn(len(got), generator=gen)
            sum(w * t.sum() for w, t in zip(weights, got)).backward()
            reference.zero_grad(set_to_none=True)
            sum(w * t.sum() for w, t in zip(weights, expected)).backward()
            mine = dict(module.named_parameters())
            for key, p in reference.named_parameters():
                if mine[key].grad is None:
                    raise CheckFailed(f"{name}: no gradient reaches parameter `{key}`; is it used in forward?\n  on {where}")
                problem = _difference(mine[key].grad, p.grad, 2e-4, 1e-3, f"the gradient of `{key}`")
                if problem:
                    raise CheckFailed(f"{name}: the outputs match but {problem}\n  on {where}")
            count += 1
    print(f"{PASS} {name}: matches the reference on {count} input{'s' * (count != 1)} "
          "(every layer's logits and boxes, and the parameters' gradients, with the reference's weights).")
