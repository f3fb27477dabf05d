"""vitlab.distill: the soft loss against its closed form and torch's KL, the T^2 gradient scale, hard
distillation, the combined loss, and DeiT's distilled ViT against timm's VisionTransformerDistilled."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlab import distill, vit


def logits(seed, b=6, k=5, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=g, dtype=torch.float64) * scale


@pytest.mark.parametrize("temperature", [1.0, 2.0, 5.0])
def test_soft_loss_is_t_squared_kl_teacher_to_student(temperature):
    s, t = logits(0), logits(1)
    p = F.softmax(t / temperature, -1)
    q = F.softmax(s / temperature, -1)
    expected = temperature ** 2 * (p * (p.log() - q.log())).sum(-1).mean()
    assert distill.soft_distillation_loss(s, t, temperature).item() == pytest.approx(expected.item(), rel=1e-10)
    assert distill.soft_distillation_loss(t, t, temperature).item() == pytest.approx(0.0, abs=1e-12)


def test_t_squared_keeps_the_gradient_size_at_high_temperature():
    """For large T the gradient of T^2 KL w.r.t. the student logits tends to (s - t) / K (centred logits):
    independent of T. Without T^2 it would shrink like 1 / T^2."""
    s, t = logits(2, k=4, scale=1.0), logits(3, k=4, scale=1.0)
    s, t = s - s.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)
    limit = (s - t) / 4 / s.shape[0]
    for temperature in (50.0, 200.0):
        x = s.clone().requires_grad_(True)
        distill.soft_distillation_loss(x, t, temperature).backward()
        assert torch.allclose(x.grad, limit, atol=0.05 / temperature)  # the gap to the limit is O(1 / T)


def test_hard_loss_is_cross_entropy_on_the_teachers_argmax():
    s, t = logits(4), logits(5)
    assert distill.hard_distillation_loss(s, t).item() == pytest.approx(
        F.cross_entropy(s, t.argmax(-1)).item(), rel=1e-12)


class Fixed(nn.Module):
    """A 'teacher' that returns fixed logits whatever the inputs."""

    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x):
        return self.out


def test_distillation_loss_mixes_label_and_teacher_terms():
    s, d, t = logits(6), logits(7), logits(8)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    hard = distill.DistillationLoss(Fixed(t), "hard", alpha=0.5)
    expected = 0.5 * F.cross_entropy(s, labels) + 0.5 * F.cross_entropy(d, t.argmax(-1))
    assert hard((s, d), None, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    soft = distill.DistillationLoss(Fixed(t), "soft", alpha=0.3, temperature=3.0)
    expected = 0.7 * F.cross_entropy(s, labels) + 0.3 * distill.soft_distillation_loss(s, t, 3.0)
    assert soft(s, None, labels).item() == pytest.approx(expected.item(), rel=1e-6)
    soft_targets = F.softmax(logits(9), -1)
    none = distill.DistillationLoss(Fixed(t), "none")
    assert none(s, None, soft_targets).item() == pytest.approx(
        -(soft_targets * F.log_softmax(s, -1)).sum(-1).mean().item(), rel=1e-6)
    with pytest.raises(ValueError):
        distill.DistillationLoss(Fixed(t), "medium")


CONFIG = dict(img_size=16, patch_size=4, in_chans=3, num_classes=7, embed_dim=24, depth=2, num_heads=3)


def test_distilled_vit_loads_timms_weights_and_gives_its_outputs(timm):
    from timm.models.deit import VisionTransformerDistilled

    torch.manual_seed(0)
    theirs = VisionTransformerDistilled(**CONFIG).eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = distill.DistilledVisionTransformer(**CONFIG).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
        theirs.set_distilled_training(True)
        theirs.train()
        ours.train()
        got, want = ours(x), theirs(x)
    assert isinstance(got, tuple) and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, want))


def test_distilled_vit_has_two_prefix_tokens_and_averages_its_heads_at_eval():
    model = distill.DistilledVisionTransformer(**CONFIG)
    assert model.num_prefix_tokens == 2 and model.pos_embed.shape == (1, 16 + 2, 24)
    assert model.forward_features(torch.randn(2, 3, 16, 16)).shape == (2, 18, 24)
    x = torch.randn(2, 3, 16, 16)
    model.train()
    torch.manual_seed(0)
    cls_logits, dist_logits = model(x)
    model.eval()
    assert torch.allclose(model(x), (cls_logits + dist_logits) / 2, atol=1e-6)
    assert isinstance(model, vit.VisionTransformer)
