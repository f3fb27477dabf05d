"""vitlab.detection against independent truths: hand-worked and pixel-counted IoU/GIoU, brute-force matching,
the set loss written out term by term, the head's structure (query permutation), and pycocotools on hand-made
cases whose AP is known."""
import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitlab import data, vit, widgets
from vitlab import detection as det


def pixel_iou_giou(a, b, scale=4):
    """IoU and GIoU of two xyxy boxes with integer corners, by counting cells of a fine grid."""
    side = int(max(a[2], a[3], b[2], b[3])) * scale + 1
    ys, xs = np.mgrid[0:side, 0:side] / scale + 0.5 / scale

    def inside(box):
        return (xs >= box[0]) & (xs < box[2]) & (ys >= box[1]) & (ys < box[3])

    in_a, in_b = inside(a), inside(b)
    hull = inside([min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3])])
    inter, union = (in_a & in_b).sum(), (in_a | in_b).sum()
    return inter / union, inter / union - (hull.sum() - union) / hull.sum()


# ------------------------------------------------------------------------------------------------ boxes

def test_box_conversions_hand_worked_and_round_trip():
    cxcywh = torch.tensor([[0.375, 0.375, 0.5, 0.25]])
    assert torch.allclose(det.box_cxcywh_to_xyxy(cxcywh) * 64, torch.tensor([[8.0, 16.0, 40.0, 32.0]]))
    boxes = torch.rand(3, 5, 4, dtype=torch.float64)
    assert torch.allclose(det.box_xyxy_to_cxcywh(det.box_cxcywh_to_xyxy(boxes)), boxes)
    assert torch.allclose(det.box_area(det.box_cxcywh_to_xyxy(boxes)), boxes[..., 2] * boxes[..., 3])


def test_coco_annotations_and_detr_boxes_agree():
    coco = torch.tensor([[8.0, 16.0, 32.0, 16.0], [3.0, 5.0, 7.0, 11.0]])
    xyxy = det.box_cxcywh_to_xyxy(data.coco_to_cxcywh(coco, 64)) * 64
    assert torch.allclose(xyxy, torch.cat([coco[:, :2], coco[:, :2] + coco[:, 2:]], dim=1))
    assert np.allclose(det._coco_boxes(data.coco_to_cxcywh(coco, 64), 64), coco.numpy())


@pytest.mark.parametrize("a, b, iou, giou", [
    ([0, 0, 2, 2], [1, 1, 3, 3], 1 / 7, 1 / 7 - 2 / 9),     # partial overlap
    ([0, 0, 2, 2], [2, 0, 4, 2], 0.0, 0.0),                 # touching: the hull is the union
    ([0, 0, 2, 2], [3, 0, 5, 2], 0.0, -0.2),                # a gap of 1: hull 10, union 8
    ([0, 0, 4, 4], [1, 1, 3, 3], 0.25, 0.25),               # nested
    ([0, 0, 2, 2], [0, 0, 2, 2], 1.0, 1.0),                 # the same box
])
def test_iou_and_giou_hand_worked(a, b, iou, giou):
    ta, tb = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    assert det.box_iou(ta, tb)[0].item() == pytest.approx(iou)
    assert det.generalized_box_iou(ta, tb).item() == pytest.approx(giou)


def test_pairwise_iou_and_giou_match_pixel_counts():
    gen = torch.Generator().manual_seed(0)
    corners = torch.randint(0, 12, (7, 2, 2), generator=gen)
    boxes = torch.cat([corners.min(1).values, corners.min(1).values + 1 + corners.max(1).values % 5], dim=1).double()
    iou, giou = det.box_iou(boxes, boxes[:5])[0], det.generalized_box_iou(boxes, boxes[:5])
    assert iou.shape == giou.shape == (7, 5)
    for i, j in itertools.product(range(7), range(5)):
        want_iou, want_giou = pixel_iou_giou(boxes[i].tolist(), boxes[j].tolist())
        assert iou[i, j].item() == pytest.approx(want_iou) and giou[i, j].item() == pytest.approx(want_giou)


def test_giou_has_a_gradient_where_iou_has_none():
    moving = torch.tensor([[3.0, 0.0, 5.0, 2.0]], requires_grad=True)
    fixed = torch.tensor([[0.0, 0.0, 2.0, 2.0]])
    (g_iou,) = torch.autograd.grad(det.box_iou(moving, fixed)[0].sum(), moving)
    (g_giou,) = torch.autograd.grad(det.generalized_box_iou(moving, fixed).sum(), moving)
    assert torch.all(g_iou == 0) and g_giou[0, 0] < 0  # moving left (towards the other box) raises GIoU


# --------------------------------------------------------------------------------------------- matching

@pytest.mark.parametrize("seed, q, m", [(0, 5, 2), (1, 6, 3), (2, 7, 4), (3, 4, 4), (4, 6, 1)])
def test_hungarian_match_is_the_brute_force_optimum(seed, q, m):
    gen = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(q, 4, generator=gen)
    boxes = det.box_xyxy_to_cxcywh(torch.sort(torch.rand(q, 2, 2, generator=gen), dim=1).values.reshape(q, 4))
    labels = torch.randint(0, 3, (m,), generator=gen)
    wanted = det.box_xyxy_to_cxcywh(torch.sort(torch.rand(m, 2, 2, generator=gen), dim=1).values.reshape(m, 4))
    # the cost written out, entry by entry, from its definition
    prob = logits.softmax(-1)
    cost = torch.zeros(q, m, dtype=torch.float64)
    for i, j in itertools.product(range(q), range(m)):
        g = det.generalized_box_iou(det.box_cxcywh_to_xyxy(boxes[i:i + 1]), det.box_cxcywh_to_xyxy(wanted[j:j + 1]))
        cost[i, j] = -prob[i, labels[j]] + 5 * (boxes[i] - wanted[j]).abs().sum() - 2 * g.item()
    assert torch.allclose(det.match_cost(logits, boxes, labels, wanted).double(), cost, atol=1e-5)
    best = min(itertools.permutations(range(q), m), key=lambda rows: sum(cost[r, c] for c, r in enumerate(rows)))
    rows, cols = det.hungarian_match(logits, boxes, labels, wanted)
    assert rows.dtype == cols.dtype == torch.int64 and torch.equal(rows, rows.sort().values)
    assert sorted(zip(rows.tolist(), cols.tolist())) == sorted((r, c) for c, r in enumerate(best))


def test_match_batch_equals_matching_each_image():
    gen = torch.Generator().manual_seed(5)
    outputs = {"pred_logits": torch.randn(3, 6, 4, generator=gen), "pred_boxes": torch.rand(3, 6, 4, generator=gen) * 0.5 + 0.25}
    targets = [{"labels": torch.randint(0, 3, (m,), generator=gen), "boxes": torch.rand(m, 4, generator=gen) * 0.4 + 0.3}
               for m in (1, 3, 2)]
    for (r, c), logits, boxes, t in zip(det.match_batch(outputs, targets), outputs["pred_logits"], outputs["pred_boxes"], targets):
        r2, c2 = det.hungarian_match(logits, boxes, t["labels"], t["boxes"])
        assert torch.equal(r, r2) and torch.equal(c, c2)


# ------------------------------------------------------------------------------------------------- loss

def test_set_loss_term_by_term():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 3, generator=gen, dtype=torch.float64)      # K = 2 classes + no-object
    boxes = torch.rand(2, 4, 4, generator=gen, dtype=torch.float64) * 0.4 + 0.3
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.4]], dtype=torch.float64)},
               {"labels": torch.tensor([0, 1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.7, 0.3, 0.2]],
                                                                         dtype=torch.float64)}]
    indices = [(torch.tensor([2]), torch.tensor([0])), (torch.tensor([3, 0]), torch.tensor([1, 0]))]
    got = det.set_loss(logits, boxes, targets, indices, eos_coef=0.1)
    wanted_class = {(0, 2): 1, (1, 3): 1, (1, 0): 0}                         # (image, query) -> class; rest: 2
    num, den = 0.0, 0.0
    for b, q in itertools.product(range(2), range(4)):
        c = wanted_class.get((b, q), 2)
        w = 0.1 if c == 2 else 1.0
        num += -w * math.log(logits[b, q].softmax(-1)[c].item())
        den += w
    assert got["ce"].item() == pytest.approx(num / den)
    pairs = [(boxes[0, 2], targets[0]["boxes"][0]), (boxes[1, 3], targets[1]["boxes"][1]), (boxes[1, 0], targets[1]["boxes"][0])]
    assert got["l1"].item() == pytest.approx(sum((p - t).abs().sum().item() for p, t in pairs) / 3)
    gious = [pixel_free_giou(p, t) for p, t in pairs]
    assert got["giou"].item() == pytest.approx(sum(1 - g for g in gious) / 3)


def pixel_free_giou(p, t):
    """GIoU of two cxcywh boxes from the closed form, scalar by scalar."""
    (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = (det.box_cxcywh_to_xyxy(v).tolist() for v in (p, t))
    inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def test_set_loss_of_perfect_boxes_and_eos_coef_one():
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.1]]])
    targets = [{"labels": torch.tensor([0]), "boxes": boxes[0, :1]}]
    logits = torch.randn(1, 2, 3)
    found = det.set_loss(logits, boxes, targets, [(torch.tensor([0]), torch.tensor([0]))], eos_coef=1.0)
    assert found["l1"].item() == 0 and found["giou"].item() == pytest.approx(0, abs=1e-6)
    assert found["ce"].item() == pytest.approx(F.cross_entropy(logits[0], torch.tensor([0, 2])).item())


# ------------------------------------------------------------------------------------------------- head

def small_detector(seed=0, depth=2):
    torch.manual_seed(seed)
    backbone = vit.VisionTransformer(img_size=32, patch_size=8, num_classes=0, embed_dim=32, depth=1, num_heads=2)
    head = det.DETRHead(3, 32, backbone.grid_size, num_queries=5, dim=16, depth=depth, num_heads=2)
    return det.Detector(backbone, head)


def test_head_outputs_and_initial_boxes():
    model = small_detector(depth=3).eval()
    out = model(torch.rand(2, 3, 32, 32))
    assert out["pred_logits"].shape == (2, 5, 4) and out["pred_boxes"].shape == (2, 5, 4)
    assert len(out["aux_outputs"]) == 2 and ((out["pred_boxes"] > 0) & (out["pred_boxes"] < 1)).all()
    # the box MLP's last bias starts every box near the centre, about sigmoid(-0.8) = 0.31 wide
    assert torch.allclose(out["pred_boxes"], torch.tensor([0.5, 0.5, 0.31, 0.31]).expand(2, 5, 4), atol=0.1)
    assert "head.memory_pos" not in model.state_dict()
    maps = model(torch.rand(2, 3, 32, 32), return_attention=True)["attention"]
    assert len(maps) == 3 and maps[0].shape == (2, 5, 16) and torch.allclose(maps[0].sum(-1), torch.ones(2, 5))


def test_permuting_the_queries_permutes_the_predictions():
    model = small_detector().eval()
    images = torch.rand(2, 3, 32, 32)
    before = model(images)
    order = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        model.head.query_embed.copy_(model.head.query_embed[order])
    after = model(images)
    assert torch.allclose(after["pred_logits"], before["pred_logits"][:, order], atol=1e-5)
    assert torch.allclose(after["pred_boxes"], before["pred_boxes"][:, order], atol=1e-6)


def test_training_lowers_the_loss_and_reaches_the_backbone():
    model = small_detector(seed=1)
    images = torch.rand(8, 3, 32, 32)
    targets = [{"labels": torch.tensor([i % 3]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])} for i in range(8)]
    first = model.backbone.patch_embed.proj.weight.detach().clone()
    history = det.train_detector(model, images, targets, epochs=100, lr=3e-3, batch_size=8, max_steps=25,
                                 warmup_steps=2, progress=False)
    assert len(history["loss"]) == 25 and history["seconds"][0] > 0
    assert np.mean(history["loss"][-5:]) < 0.7 * np.mean(history["loss"][:5])
    assert not torch.equal(first, model.backbone.patch_embed.proj.weight)


def test_predict_keeps_every_query_above_the_threshold_without_nms():
    logits = torch.log(torch.tensor([[[0.7, 0.2, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]]]))
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2]] * 3])  # two identical boxes: both kept (no NMS)
    found = det.predict({"pred_logits": logits, "pred_boxes": boxes}, threshold=0.5)[0]
    assert found["labels"].tolist() == [0, 0] and found["scores"].tolist() == pytest.approx([0.7, 0.6])
    assert len(det.predict({"pred_logits": logits, "pred_boxes": boxes})[0]["scores"]) == 3


# ------------------------------------------------------------------------------------------------ COCO AP

def box(x, y, w, h, size=100):
    """A normalised cxcywh box from COCO pixels."""
    return [(x + w / 2) / size, (y + h / 2) / size, w / size, h / size]


def evaluate(found, truth, num_classes=2):
    """det.coco_evaluate on plain lists: found = [{"labels", "scores", "boxes"}], truth = [{"labels", "boxes"}]."""
    def tensors(item):
        return {k: torch.tensor(v, dtype=torch.int64 if k == "labels" else torch.float32) for k, v in item.items()}
    return det.coco_evaluate([tensors(f) for f in found], [tensors(t) for t in truth], 100, num_classes)


def test_coco_ap_hand_made_cases():
    truth = [{"labels": [0], "boxes": [box(10, 10, 50, 50)]}]
    perfect = evaluate([{"labels": [0], "scores": [0.9], "boxes": [box(10, 10, 50, 50)]}], truth, 1)
    assert perfect["AP50"] == pytest.approx(1) and perfect["mAP"] == pytest.approx(1)
    # IoU 0.62: a hit at the thresholds 0.50, 0.55 and 0.60, a miss at the seven above, so mAP = 3/10
    loose = evaluate([{"labels": [0], "scores": [0.9], "boxes": [box(10, 10, 50, 31)]}], truth, 1)
    assert loose["AP50"] == pytest.approx(1) and loose["mAP"] == pytest.approx(0.3) and loose["AP75"] == 0
    # a false positive ranked above the hit: precision 1/2 at recall 1, so AP = 0.5
    ranked = evaluate([{"labels": [0, 0], "scores": [0.9, 0.8], "boxes": [box(70, 70, 20, 20), box(10, 10, 50, 50)]}],
                      truth, 1)
    assert ranked["AP50"] == pytest.approx(0.5)
    # two classes, one found perfectly, the other only with the wrong class: mean AP = (1 + 0) / 2
    truth2 = [{"labels": [0, 1], "boxes": [box(10, 10, 30, 30), box(50, 50, 40, 40)]}]
    half = evaluate([{"labels": [0, 0], "scores": [0.9, 0.9], "boxes": [box(10, 10, 30, 30), box(50, 50, 40, 40)]}],
                    truth2, 2)
    assert half["AP50"] == pytest.approx(0.5)


def test_detection_explorer_counts_hits_false_alarms_and_misses():
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.tensor([box(10, 10, 30, 30), box(50, 50, 40, 40)])}]
    found = [{"labels": torch.tensor([0, 0, 1]), "scores": torch.tensor([0.9, 0.6, 0.3]),
              "boxes": torch.tensor([box(10, 10, 30, 30), box(11, 10, 30, 30), box(50, 50, 40, 40)])}]
    explorer = widgets.DetectionExplorer(torch.rand(1, 3, 100, 100), found, targets, ["a", "b"], threshold=0.5,
                                         per_page=1)
    assert explorer.counts(0) == (1, 1, 1)   # the duplicate is a false alarm, the class-1 box is below threshold
    explorer.threshold.value = 0.2
    assert explorer.counts(0) == (2, 1, 0)
    assert explorer.png().startswith(b"\x89PNG")
