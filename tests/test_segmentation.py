"""vitlab.segmentation against independent truths: scikit-learn's confusion matrix and Jaccard score, einops and
patchify round trips, a 1x1 convolution, F.interpolate, hand-worked Dice cases; and vitlab.check_segmentation:
right learner code passes, each known mistake is named, calling the reference scores zero."""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from einops import rearrange
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import jaccard_score
from torch import nn

from vitlab import check_segmentation, patches, segmentation, vit
from vitlab.check import CheckFailed


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("prefix", [0, 1, 2])
def test_tokens_to_grid_is_einops_rearrange_after_dropping_the_prefix(prefix):
    tokens = torch.randn(3, prefix + 4 * 6, 5, generator=gen())
    expected = rearrange(tokens[:, prefix:], "b (h w) d -> b d h w", h=4, w=6)
    assert torch.equal(segmentation.tokens_to_grid(tokens, (4, 6), prefix), expected)


def test_tokens_to_grid_undoes_patchify_of_a_one_pixel_patch_grid():
    """patchify with patch 1 lists the pixels row-major: the grid of those tokens is the image again."""
    image = torch.randn(2, 3, 5, 7, generator=gen(1))
    tokens = patches.patchify(image, 1)                                   # (B, 35, 3)
    assert torch.equal(segmentation.tokens_to_grid(tokens, (5, 7), 0), image)


def test_tokens_to_grid_puts_the_patch_embedding_of_each_patch_in_its_place():
    embed = patches.PatchEmbed(img_size=(12, 20), patch_size=4, in_chans=3, embed_dim=6)
    image = torch.randn(2, 3, 12, 20, generator=gen(2))
    with torch.no_grad():
        grid = segmentation.tokens_to_grid(embed(image), embed.grid_size, 0)
        assert torch.allclose(grid, embed.proj(image), atol=1e-6)      # the conv's own (B, D, h, w) output


def test_tokens_to_grid_refuses_a_wrong_grid():
    with pytest.raises(ValueError, match="do not fill"):
        segmentation.tokens_to_grid(torch.zeros(1, 17, 4), (4, 4), 0)


@pytest.mark.parametrize("size", [(16, 24), (8, 8)])
@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_upsampling_on_exact_multiples_is_f_interpolate(size, mode):
    maps = torch.randn(2, 3, size[0] // 4, size[1] // 4, generator=gen(3))
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    expected = F.interpolate(maps, size=size, mode=mode, **kwargs)
    assert torch.allclose(segmentation.upsample_to(maps, size, 4, mode), expected)


def test_pad_then_crop_keeps_every_pixel_in_place():
    images = torch.randn(2, 3, 13, 10, generator=gen(4))
    padded = segmentation.pad_to_multiple(images, 4)
    assert padded.shape[-2:] == (16, 12)
    assert torch.equal(padded[..., :13, :10], images) and padded[..., 13:, :].abs().sum() == 0
    assert padded[..., 10:].abs().sum() == 0
    maps = torch.randn(2, 5, 4, 3, generator=gen(5))
    full = F.interpolate(maps, size=(16, 12), mode="bilinear", align_corners=False)
    assert torch.equal(segmentation.upsample_to(maps, (13, 10), 4), full[..., :13, :10])


def test_pad_to_multiple_leaves_multiples_alone():
    images = torch.randn(1, 3, 8, 16)
    assert torch.equal(segmentation.pad_to_multiple(images, 8), images)


# -------------------------------------------------------------------------------------------- decoders


def test_linear_decoder_is_a_1x1_convolution_on_the_feature_grid():
    decoder = segmentation.LinearDecoder(12, 5)
    conv = nn.Conv2d(12, 5, kernel_size=1)
    with torch.no_grad():
        conv.weight.copy_(decoder.head.weight[:, :, None, None])
        conv.bias.copy_(decoder.head.bias)
        tokens = torch.randn(2, 1 + 3 * 4, 12, generator=gen(6))
        grid = segmentation.tokens_to_grid(tokens, (3, 4), 1)
        assert torch.allclose(decoder(tokens[:, 1:], (3, 4)), conv(grid), atol=1e-6)


def reference_mask_transformer(m, x, grid):
    """The mask transformer written out from the Segmenter paper, einops for the reshape."""
    k = m.num_classes
    z = torch.cat([m.proj_dec(x), m.cls_emb.expand(x.shape[0], -1, -1)], 1)
    for block in m.blocks:
        z = block(z)
    z = m.decoder_norm(z)
    p, c = z[:, :-k] @ m.proj_patch, z[:, -k:] @ m.proj_classes
    p, c = p / p.norm(dim=-1, keepdim=True), c / c.norm(dim=-1, keepdim=True)
    masks = m.mask_norm(torch.einsum("bnd,bkd->bnk", p, c))
    return rearrange(masks, "b (h w) k -> b k h w", h=grid[0], w=grid[1])


def test_mask_transformer_scores_are_cosines_of_patch_and_class_features():
    torch.manual_seed(0)
    m = segmentation.MaskTransformer(embed_dim=20, num_classes=3, d_model=16, depth=2, num_heads=2).eval()
    assert all(type(b) is vit.Block for b in m.blocks)
    x = torch.randn(2, 6, 20, generator=gen(7))
    with torch.no_grad():
        assert torch.allclose(m(x, (2, 3)), reference_mask_transformer(m, x, (2, 3)), atol=1e-5)
        p, c = m.features(x)
        assert torch.allclose(p.norm(dim=-1), torch.ones(2, 6)) and torch.allclose(c.norm(dim=-1), torch.ones(2, 3))
        cosines = torch.einsum("bnd,bkd->bnk", p, c)
        assert cosines.abs().max() <= 1 + 1e-6


def test_mask_transformer_is_equivariant_to_shuffling_the_patches():
    """No positions inside the decoder: shuffled patch tokens give shuffled masks."""
    torch.manual_seed(1)
    m = segmentation.MaskTransformer(8, 4, d_model=8, depth=1, num_heads=2).eval()
    x = torch.randn(1, 6, 8, generator=gen(8))
    perm = torch.randperm(6, generator=gen(9))
    with torch.no_grad():
        a = m(x, (1, 6))[0, :, 0]
        b = m(x[:, perm], (1, 6))[0, :, 0]
    assert torch.allclose(a[:, perm], b, atol=1e-5)


@pytest.mark.parametrize("decoder", ["linear", "mask"])
def test_segmenter_pads_upsamples_and_crops(decoder):
    torch.manual_seed(2)
    backbone = vit.VisionTransformer(img_size=16, patch_size=4, num_classes=0, embed_dim=16, depth=1, num_heads=2)
    head = segmentation.LinearDecoder(16, 3) if decoder == "linear" else segmentation.MaskTransformer(16, 3, 16, 1, 2)
    model = segmentation.Segmenter(backbone, head).eval()
    images = torch.randn(2, 3, 14, 13, generator=gen(10))
    with torch.no_grad():
        out = model(images)
        padded = F.pad(images, (0, 3, 0, 2))
        grid = head(backbone.forward_features(padded)[:, 1:], (4, 4))
        expected = F.interpolate(grid, size=(16, 16), mode="bilinear", align_corners=False)[..., :14, :13]
    assert out.shape == (2, 3, 14, 13)
    assert torch.allclose(out, expected, atol=1e-6)
    with pytest.raises(ValueError, match="grid"):
        model(torch.zeros(1, 3, 24, 24))


def test_pixel_refiner_adds_a_local_correction_to_the_upsampled_scores():
    torch.manual_seed(3)
    backbone = vit.VisionTransformer(img_size=16, patch_size=4, num_classes=0, embed_dim=16, depth=1, num_heads=2)
    head, refiner = segmentation.LinearDecoder(16, 3), segmentation.PixelRefiner(3, width=4)
    plain, refined = segmentation.Segmenter(backbone, head).eval(), segmentation.Segmenter(backbone, head, refiner).eval()
    images = torch.randn(2, 3, 16, 16, generator=gen(11))
    with torch.no_grad():
        scores = plain(images)
        h = F.relu(F.conv2d(torch.cat([scores, images], 1), refiner.conv1.weight, refiner.conv1.bias, padding=1))
        h = F.relu(F.conv2d(h, refiner.conv2.weight, refiner.conv2.bias, padding=1))
        expected = scores + F.conv2d(h, refiner.out.weight, refiner.out.bias)
        assert torch.allclose(refined(images), expected, atol=1e-6)
        refiner.out.weight.zero_()
        refiner.out.bias.zero_()
        assert torch.equal(refined(images), scores)


# ---------------------------------------------------------------------------------------------- losses


def test_dice_loss_on_a_hand_worked_case():
    """Two classes, four pixels, probabilities given directly (logits = log p)."""
    p1 = torch.tensor([0.9, 0.6, 0.2, 0.1])                         # P(class 1) per pixel
    probs = torch.stack([1 - p1, p1]).reshape(1, 2, 2, 2)
    target = torch.tensor([1, 1, 0, 0]).reshape(1, 2, 2)
    # class 1: overlap 0.9 + 0.6 = 1.5, sum p = 1.8, sum g = 2; class 0: overlap 0.8 + 0.9 = 1.7, sum p = 2.2
    expected = 1 - ((2 * 1.5 + 1) / (1.8 + 2 + 1) + (2 * 1.7 + 1) / (2.2 + 2 + 1)) / 2
    assert math.isclose(segmentation.dice_loss(probs.log(), target).item(), expected, rel_tol=1e-6)
    without_smoothing = 1 - (3.0 / 3.8 + 3.4 / 4.2) / 2
    assert math.isclose(segmentation.dice_loss(probs.log(), target, smooth=0).item(), without_smoothing, rel_tol=1e-6)


def test_dice_loss_is_zero_for_a_perfect_prediction_and_near_one_for_the_opposite():
    target = torch.randint(0, 3, (2, 5, 5), generator=gen(11))
    perfect = F.one_hot(target, 3).movedim(-1, 1).float() * 100
    assert segmentation.dice_loss(perfect, target).item() < 1e-6
    wrong = F.one_hot((target + 1) % 3, 3).movedim(-1, 1).float() * 100
    assert segmentation.dice_loss(wrong, target, smooth=0).item() > 1 - 1e-6


def test_segmentation_loss_is_cross_entropy_plus_dice():
    logits = torch.randn(2, 4, 6, 6, generator=gen(12))
    target = torch.randint(0, 4, (2, 6, 6), generator=gen(13))
    expected = F.cross_entropy(logits, target) + 0.5 * segmentation.dice_loss(logits, target)
    assert torch.allclose(segmentation.segmentation_loss(logits, target, 0.5), expected)


# --------------------------------------------------------------------------------------------- metrics


def random_labels(seed, shape=(3, 9, 11), k=5):
    g = gen(seed)
    return torch.randint(0, k, shape, generator=g), torch.randint(0, k, shape, generator=g)


@pytest.mark.parametrize("seed", [0, 1])
def test_confusion_matrix_is_sklearns(seed):
    pred, target = random_labels(seed)
    expected = sk_confusion_matrix(target.flatten().numpy(), pred.flatten().numpy(), labels=list(range(6)))
    cm = segmentation.confusion_matrix(pred, target, 6)                 # class 5 never occurs: a zero row and column
    assert cm.dtype == torch.int64 and cm.numpy().tolist() == expected.tolist()


@pytest.mark.parametrize("seed", [2, 3])
def test_iou_and_miou_are_sklearns_jaccard_scores(seed):
    pred, target = random_labels(seed, k=4)
    pred[pred == 3] = 2                                                 # class 3 is never predicted: IoU 0
    cm = segmentation.confusion_matrix(pred, target, 4)
    per_class = jaccard_score(target.flatten().numpy(), pred.flatten().numpy(), average=None, labels=[0, 1, 2, 3])
    assert torch.allclose(segmentation.iou_per_class(cm), torch.from_numpy(per_class))
    assert math.isclose(segmentation.mean_iou(cm), float(per_class.mean()))
    assert math.isclose(segmentation.pixel_accuracy(cm), float((pred == target).double().mean()))


def test_classes_absent_from_truth_and_prediction_do_not_count_in_the_mean():
    pred, target = random_labels(4, k=3)
    cm = segmentation.confusion_matrix(pred, target, 5)
    assert torch.isnan(segmentation.iou_per_class(cm)[3:]).all()
    score = jaccard_score(target.flatten().numpy(), pred.flatten().numpy(), average="macro")
    assert math.isclose(segmentation.mean_iou(cm), score)


def test_dice_per_class_on_a_hand_worked_case_and_its_relation_to_iou():
    # truth:      0 0 1 1 1      prediction: 0 1 1 1 0
    target, pred = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([0, 1, 1, 1, 0])
    cm = segmentation.confusion_matrix(pred, target, 2)
    assert cm.tolist() == [[1, 1], [1, 2]]
    # class 0: TP 1, FP 1, FN 1 -> Dice 2/4, IoU 1/3; class 1: TP 2, FP 1, FN 1 -> Dice 4/6, IoU 2/4
    assert torch.allclose(segmentation.dice_per_class(cm), torch.tensor([0.5, 2 / 3], dtype=torch.float64))
    assert torch.allclose(segmentation.iou_per_class(cm), torch.tensor([1 / 3, 0.5], dtype=torch.float64))
    iou = segmentation.iou_per_class(cm)
    assert torch.allclose(segmentation.dice_per_class(cm), 2 * iou / (1 + iou))


def test_an_all_background_predictor_has_high_pixel_accuracy_and_low_miou():
    target = torch.zeros(10, 10, dtype=torch.long)
    target[:3, :3] = 1                                                 # 9% foreground
    cm = segmentation.confusion_matrix(torch.zeros_like(target), target, 2)
    assert segmentation.pixel_accuracy(cm) == 0.91
    assert math.isclose(segmentation.mean_iou(cm), 0.91 / 2)


# -------------------------------------------------------------------------------------------- training


def test_fit_lowers_the_loss_and_evaluate_counts_every_pixel():
    torch.manual_seed(0)
    images = torch.rand(16, 3, 16, 16, generator=gen(14))
    masks = (images[:, 0] > 0.5).long()                                 # the red channel decides the class
    backbone = vit.VisionTransformer(img_size=16, patch_size=4, num_classes=0, embed_dim=16, depth=1, num_heads=2)
    model = segmentation.Segmenter(backbone, segmentation.LinearDecoder(16, 2))
    history = segmentation.fit(model, images, masks, epochs=15, lr=3e-3, batch_size=8, progress=False)
    assert history["steps"] == 30 and history["train_loss"][-1] < history["train_loss"][0]
    cm = segmentation.evaluate(model, images, masks, 2)
    assert cm.sum() == 16 * 16 * 16


# ------------------------------------------------------------------------------------------- the checks
# Right answers written independently of the reference (which the checks forbid), and the known mistakes.


def my_tokens_to_grid(tokens, grid, num_prefix_tokens=1):
    return rearrange(tokens[:, num_prefix_tokens:], "b (h w) d -> b d h w", h=grid[0], w=grid[1])


class MyLinearDecoder(nn.Module):
    def __init__(self, embed_dim, num_classes):
        super().__init__()
        self.head = nn.Linear(embed_dim, num_classes)

    def forward(self, x, grid):
        return my_tokens_to_grid(self.head(x), grid, 0)


class MyMaskTransformer(nn.Module):
    def __init__(self, embed_dim, num_classes, d_model, depth, num_heads, mlp_ratio=4.0):
        super().__init__()
        self.num_classes = num_classes
        self.proj_dec = nn.Linear(embed_dim, d_model)
        self.cls_emb = nn.Parameter(torch.zeros(1, num_classes, d_model))
        self.blocks = nn.ModuleList(vit.Block(d_model, num_heads, mlp_ratio) for _ in range(depth))
        self.decoder_norm = nn.LayerNorm(d_model)
        self.proj_patch = nn.Parameter(torch.zeros(d_model, d_model))
        self.proj_classes = nn.Parameter(torch.zeros(d_model, d_model))
        self.mask_norm = nn.LayerNorm(num_classes)

    def forward(self, x, grid):
        return reference_mask_transformer(self, x, grid)


def my_dice_loss(logits, target, smooth=1.0):
    p = logits.softmax(1)
    g = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).to(p.dtype)
    inter, total = torch.einsum("bkhw,bkhw->k", p, g), p.sum((0, 2, 3)) + g.sum((0, 2, 3))
    return 1 - ((2 * inter + smooth) / (total + smooth)).mean()


def my_confusion_matrix(pred, target, num_classes):
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    cm.index_put_((target.flatten().long(), pred.flatten().long()), torch.ones(pred.numel(), dtype=torch.int64),
                  accumulate=True)
    return cm


def my_mean_iou(confusion):
    cm = confusion.double()
    ious = [cm[k, k] / (cm[k].sum() + cm[:, k].sum() - cm[k, k]) for k in range(len(cm))
            if cm[k].sum() + cm[:, k].sum() > 0]
    return sum(ious) / len(ious)                     # a 0-dim tensor: the check takes it as a number


RIGHT = [(check_segmentation.tokens_to_grid, my_tokens_to_grid),
         (check_segmentation.linear_decoder, MyLinearDecoder),
         (check_segmentation.mask_transformer, MyMaskTransformer),
         (check_segmentation.dice_loss, my_dice_loss),
         (check_segmentation.confusion_matrix, my_confusion_matrix),
         (check_segmentation.mean_iou, my_mean_iou)]


@pytest.mark.parametrize("check, answer", RIGHT, ids=[c.__name__ for c, _ in RIGHT])
@pytest.mark.parametrize("graded", [False, True])
def test_right_answers_pass_visible_and_graded_checks(check, answer, graded, capsys):
    check(answer, seed=5 if graded else 0, graded=graded)
    assert "\u2714" in capsys.readouterr().out


def wrong_mask_transformer(mistake):
    class Wrong(MyMaskTransformer):
        def forward(self, x, grid):
            return check_segmentation._WrongMaskTransformer.forward(self, x, grid)

    def build(*args, **kwargs):
        module = Wrong(*args, **kwargs)
        module.mistake = mistake
        return module

    return build


def wrong_linear_decoder(mistake):
    class Wrong(MyLinearDecoder):
        def forward(self, x, grid):
            return check_segmentation._grid_variant(mistake)(self.head(x), grid, 0)

    return Wrong


MISTAKES = (
    [(check_segmentation.tokens_to_grid, m.impl, m.label) for m in check_segmentation.GRID_MISTAKES]
    + [(check_segmentation.linear_decoder, wrong_linear_decoder(key), label)
       for label, key, _ in check_segmentation.DECODER_MISTAKES]
    + [(check_segmentation.mask_transformer, wrong_mask_transformer(key), label)
       for label, key, _ in check_segmentation.MASK_MISTAKES]
    + [(check_segmentation.dice_loss, m.impl, m.label) for m in check_segmentation.DICE_MISTAKES]
    + [(check_segmentation.confusion_matrix, m.impl, m.label) for m in check_segmentation.CONFUSION_MISTAKES]
    + [(check_segmentation.mean_iou, m.impl, m.label) for m in check_segmentation.IOU_MISTAKES])


@pytest.mark.parametrize("check, wrong, label", MISTAKES, ids=[label[:40] for _, _, label in MISTAKES])
def test_each_known_mistake_is_named_by_the_visible_check(check, wrong, label):
    with pytest.raises(CheckFailed, match="looks like you " + re.escape(label)):
        check(wrong)


SHORTCUTS = [(check_segmentation.tokens_to_grid, segmentation.tokens_to_grid),
             (check_segmentation.linear_decoder, segmentation.LinearDecoder),
             (check_segmentation.mask_transformer,
              lambda e, k, d, depth, h, mlp_ratio=4.0: segmentation.MaskTransformer(e, k, d, depth, h, mlp_ratio)),
             (check_segmentation.dice_loss, lambda logits, target, smooth=1.0: segmentation.segmentation_loss(
                 logits, target, 1.0) - F.cross_entropy(logits, target)),
             (check_segmentation.confusion_matrix, lambda pred, target, num_classes: torch.from_numpy(
                 sk_confusion_matrix(target.flatten(), pred.flatten(), labels=list(range(num_classes))))),
             (check_segmentation.mean_iou, lambda confusion: segmentation.mean_iou(confusion))]


@pytest.mark.parametrize("check, shortcut", SHORTCUTS, ids=[c.__name__ for c, _ in SHORTCUTS])
def test_calling_the_reference_or_sklearn_scores_zero(check, shortcut):
    with pytest.raises(CheckFailed, match="the very thing this exercise asks you to write"):
        check(shortcut, graded=True, seed=3)


def test_a_mask_transformer_with_its_own_blocks_is_told_to_use_vitlab_blocks():
    class OwnBlocks(MyMaskTransformer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.blocks = nn.ModuleList(nn.Linear(4, 4) for _ in self.blocks)

    with pytest.raises(CheckFailed, match="vitlab.vit.Block"):
        check_segmentation.mask_transformer(OwnBlocks)


def test_a_learner_error_is_reported_with_the_case():
    def broken(tokens, grid, num_prefix_tokens=1):
        return tokens.reshape(tokens.shape[0], -1, *grid)          # forgets to drop the prefix

    with pytest.raises(CheckFailed, match="tokens_to_grid raised RuntimeError"):
        check_segmentation.tokens_to_grid(broken)


# ------------------------------------------------------------------------------------ pictures, explorer


def test_explorer_probability_is_the_upsampled_softmax_and_every_control_redraws():
    from vitlab import viz, widgets

    torch.manual_seed(3)
    backbone = vit.VisionTransformer(img_size=16, patch_size=4, num_classes=0, embed_dim=16, depth=1, num_heads=2)
    model = segmentation.Segmenter(backbone, segmentation.MaskTransformer(16, 3, 16, 1, 2)).eval()
    images, masks = torch.rand(2, 3, 16, 16, generator=gen(15)), torch.randint(0, 3, (2, 16, 16), generator=gen(16))
    explorer = widgets.SegmentationExplorer(model, images, masks, ["background", "a", "b"], image=1, klass=2)
    explorer.mode.value = "nearest"
    with torch.no_grad():
        expected = model(images[1:], mode="nearest").softmax(1)[0, 2]
    assert torch.allclose(explorer.probability(), expected, atol=1e-6)
    for control, value in [(explorer.threshold, 0.3), (explorer.klass, 0), (explorer.image, 0)]:
        before = explorer._png
        control.value = value
        assert explorer._png != before
    assert viz.colour_mask(masks[0]).shape == (16, 16, 3)
    fig = viz.show_segmentation(images, {"truth": masks}, ["background", "a", "b"])
    assert len(fig.axes) == 4


def test_fit_stops_when_its_time_budget_is_spent():
    backbone = vit.VisionTransformer(img_size=8, patch_size=4, num_classes=0, embed_dim=8, depth=1, num_heads=2)
    model = segmentation.Segmenter(backbone, segmentation.LinearDecoder(8, 2))
    images, masks = torch.rand(4, 3, 8, 8), torch.zeros(4, 8, 8, dtype=torch.long)
    history = segmentation.fit(model, images, masks, epochs=100, lr=1e-3, batch_size=2, max_seconds=1e-9,
                               progress=False)
    assert history["steps"] == 0
    history = segmentation.fit(model, images, masks, epochs=100, lr=1e-3, batch_size=2, max_steps=3, progress=False)
    assert history["steps"] == 3
