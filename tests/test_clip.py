"""vitlab.clip against independent truths: open_clip itself (state_dict and features), torch's own attention and
mask helpers, brute-force losses and ranks, and the tokenizer's framing rules."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlab import clip

CONFIG = dict(embed_dim=12,
              vision_cfg=dict(image_size=16, patch_size=4, width=32, layers=2, head_width=8, mlp_ratio=2.0),
              text_cfg=dict(context_length=10, vocab_size=40, width=24, heads=3, layers=2, mlp_ratio=4.0))


def _randomised(model: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random (LayerNorm scales around 1), so that no default value hides a difference."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if "ln" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim == 0:
                p.copy_(2.0 + 0.1 * noise)
            else:
                p.copy_(noise * (0.2 if p.ndim == 1 else p.shape[-1] ** -0.5))
    return model


def _texts(n: int, context: int, vocab: int, seed: int = 0) -> torch.Tensor:
    """Framed ids: SOT = vocab - 2, words, EOT = vocab - 1 (the largest), zeros; lengths from 0 words to full."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, context, dtype=torch.long)
    for i in range(n):
        k = i % (context - 1)
        ids[i, :k + 2] = torch.cat([torch.tensor([vocab - 2]), torch.randint(1, vocab - 2, (k,), generator=gen),
                                    torch.tensor([vocab - 1])])
    return ids


@pytest.fixture(scope="module")
def pair(open_clip):
    ours = _randomised(clip.CLIP(**CONFIG)).eval()
    theirs = open_clip.CLIP(**ours.config).eval()
    return ours, theirs


def test_state_dict_keys_and_shapes_equal_open_clip(pair):
    ours, theirs = pair
    mine, other = ours.state_dict(), theirs.state_dict()
    assert list(mine) == list(other)
    assert all(mine[k].shape == other[k].shape for k in mine)


def test_our_weights_load_strictly_into_open_clip_and_give_the_same_features(pair):
    ours, theirs = pair
    theirs.load_state_dict(ours.state_dict(), strict=True)
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    text = _texts(9, 10, 40)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(images), theirs.encode_image(images), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(ours.encode_text(text), theirs.encode_text(text), atol=1e-5, rtol=1e-4)
        image_f, text_f, scale = ours(images, text)
        their_image, their_text, their_scale = theirs(images, text)
    torch.testing.assert_close(image_f, their_image, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(text_f, their_text, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(scale, their_scale)


def test_open_clip_weights_load_into_ours(open_clip):
    torch.manual_seed(3)
    theirs = open_clip.CLIP(**clip.CLIP(**CONFIG).config).eval()
    ours = clip.CLIP(**CONFIG).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    text = _texts(5, 10, 40, seed=2)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_text(text, normalize=True), theirs.encode_text(text, normalize=True),
                                   atol=1e-5, rtol=1e-4)


def test_clip_loss_equals_open_clip_loss(open_clip):
    gen = torch.Generator().manual_seed(4)
    image = F.normalize(torch.randn(8, 6, generator=gen), dim=-1)
    text = F.normalize(torch.randn(8, 6, generator=gen), dim=-1)
    scale = torch.tensor(1 / 0.07)
    torch.testing.assert_close(clip.clip_loss(image, text, scale), open_clip.loss.ClipLoss()(image, text, scale))


def test_logit_scale_starts_at_one_over_0_07_and_is_clamped_at_100():
    model = clip.CLIP(**CONFIG)
    images, text = torch.zeros(1, 3, 16, 16), _texts(1, 10, 40)
    assert model(images, text)[2].item() == pytest.approx(1 / 0.07)
    with torch.no_grad():
        model.logit_scale.fill_(7.0)
    assert model(images, text)[2].item() == pytest.approx(100.0)


def test_attention_equals_torch_multihead_attention_with_a_causal_mask():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ours = clip.Attention(16, 4)
    ours.load_state_dict(mha.state_dict())
    x = torch.randn(2, 7, 16)
    mask = clip.build_causal_mask(7)
    torch.testing.assert_close(ours(x, mask), mha(x, x, x, attn_mask=mask, need_weights=False)[0])
    torch.testing.assert_close(mask, nn.Transformer.generate_square_subsequent_mask(7))


def test_text_feature_ignores_everything_after_the_end_token():
    model = _randomised(clip.TextTransformer(context_length=8, vocab_size=20, width=16, heads=2, layers=2,
                                             output_dim=5)).eval()
    text = torch.tensor([[18, 3, 4, 19, 0, 0, 0, 0]])
    changed = text.clone()
    changed[0, 4:] = torch.tensor([7, 8, 9, 10])  # tokens after EOT (ids below EOT's, so argmax still finds it)
    with torch.no_grad():
        torch.testing.assert_close(model(text), model(changed))
        assert not torch.allclose(model(text), model(torch.tensor([[18, 3, 5, 19, 0, 0, 0, 0]])))


def test_tokenizer_frames_pads_and_puts_the_end_token_last():
    texts = ["a small red circle above a large blue square", "a green cross", "three shapes: a red circle"]
    tok = clip.train_tokenizer(texts * 3, context_length=12)
    again = clip.train_tokenizer(texts * 3, context_length=12)
    assert tok.backend.get_vocab() == again.backend.get_vocab()  # deterministic
    ids = tok(texts)
    assert ids.shape == (3, 12) and ids.dtype == torch.long
    assert tok.pad_id == 0 and tok.eot_id == tok.vocab_size - 1 and tok.sot_id == tok.vocab_size - 2
    assert (ids[:, 0] == tok.sot_id).all()
    ends = ids.argmax(dim=-1)
    assert (ids[torch.arange(3), ends] == tok.eot_id).all()
    assert all((ids[i, ends[i] + 1:] == 0).all() for i in range(3))
    assert [tok.decode(row) for row in ids] == texts
    long = tok(["a red circle " * 10], context_length=6)
    assert long[0, -1] == tok.eot_id and long[0, 0] == tok.sot_id
    assert tok.decode(tok("a purple drawing", 30)[0]) == "a purple drawing"  # unseen words fall back to bytes


def test_clip_loss_by_brute_force_and_its_limits():
    gen = torch.Generator().manual_seed(5)
    image = F.normalize(torch.randn(5, 4, generator=gen, dtype=torch.float64), dim=-1)
    text = F.normalize(torch.randn(5, 4, generator=gen, dtype=torch.float64), dim=-1)
    s = 3.0
    total = 0.0
    for i in range(5):
        row = [s * float(image[i] @ text[j]) for j in range(5)]
        col = [s * float(image[j] @ text[i]) for j in range(5)]
        total += -row[i] + math.log(sum(math.exp(v) for v in row)) - col[i] + math.log(sum(math.exp(v) for v in col))
    assert clip.clip_loss(image, text, s).item() == pytest.approx(total / 10, rel=1e-12)
    eye = torch.eye(4, dtype=torch.float64)  # orthogonal pairs at the largest scale: log(1 + 3 e^-100) = 0
    assert clip.clip_loss(eye, eye, 100.0).item() < 1e-12
    same = torch.ones(6, 4, dtype=torch.float64) / 2
    assert clip.clip_loss(same, same, 10.0).item() == pytest.approx(math.log(6))


def test_class_embeddings_are_unit_averages_of_unit_prompts():
    gen = torch.Generator().manual_seed(6)
    features = torch.randn(3, 4, 5, generator=gen)
    out = clip.class_embeddings(features)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    unit = features / features.norm(dim=-1, keepdim=True)
    mean = unit.mean(dim=1)
    torch.testing.assert_close(out, mean / mean.norm(dim=-1, keepdim=True))
    torch.testing.assert_close(clip.class_embeddings(features[:, :1] * 7), unit[:, 0])


def _brute_ranks(similarity, matches):
    """Sort every row; the rank of the first correct item, counting ties against the query."""
    ranks = []
    for sim, ok in ((similarity, matches), (similarity.T, matches.T)):
        out = []
        for row, good in zip(sim.tolist(), ok.tolist()):
            best = max(v for v, g in zip(row, good) if g)
            out.append(1 + sum(1 for v, g in zip(row, good) if not g and v >= best))
        ranks.append(torch.tensor(out))
    return ranks


def test_retrieval_ranks_and_recall_by_brute_force():
    gen = torch.Generator().manual_seed(7)
    sim = torch.randn(9, 7, generator=gen).round(decimals=1)
    matches = torch.rand(9, 7, generator=gen) < 0.2
    matches[torch.arange(7), torch.arange(7)] = True
    matches[7:, 0] = True
    i2t, t2i = clip.retrieval_ranks(sim, matches)
    want_i2t, want_t2i = _brute_ranks(sim, matches)
    assert i2t.tolist() == want_i2t.tolist() and t2i.tolist() == want_t2i.tolist()
    square = torch.randn(12, 12, generator=gen) + 2 * torch.eye(12)
    for k in (1, 3, 12):
        r_i2t, r_t2i = _brute_ranks(square, torch.eye(12, dtype=torch.bool))
        assert clip.recall_at_k(square, k) == pytest.approx(((r_i2t <= k).float().mean().item(),
                                                             (r_t2i <= k).float().mean().item()))
    assert clip.recall_at_k(torch.zeros(4, 4), 1) == (0.0, 0.0)  # a constant score ranks nothing first
    metrics = clip.retrieval_metrics(square)
    assert metrics["i2t R@10"] >= metrics["i2t R@5"] >= metrics["i2t R@1"]
    assert metrics["i2t median rank"] == r_i2t.float().median().item()


def test_zero_shot_classifier_uses_every_template():
    tok = clip.train_tokenizer(["a red circle", "a blue square"], context_length=10)
    config = dict(CONFIG, text_cfg=dict(CONFIG["text_cfg"], vocab_size=tok.vocab_size))
    model = _randomised(clip.CLIP(**config)).eval()
    templates = ["a {}", "a photo of a {}."]
    weights = clip.zero_shot_classifier(model, tok, ["circle", "square"], templates)
    assert weights.shape == (2, 12)
    direct = torch.stack([clip.class_embeddings(clip.encode_texts(model, tok, [t.format(c) for t in templates])[None])[0]
                          for c in ["circle", "square"]])
    torch.testing.assert_close(weights, direct)


def test_a_few_training_steps_lower_the_loss_and_keep_the_scale_in_range():
    tok = clip.train_tokenizer(["a red circle", "a blue square", "a green cross", "a red square"], context_length=8)
    config = dict(embed_dim=8, vision_cfg=dict(image_size=8, patch_size=4, width=16, layers=1, head_width=8),
                  text_cfg=dict(context_length=8, vocab_size=tok.vocab_size, width=16, heads=2, layers=1))
    torch.manual_seed(0)
    model = clip.CLIP(**config)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 8, 8, generator=gen)
    captions = [["a red circle"], ["a blue square"], ["a green cross"], ["a red square"]]
    history = clip.train_clip(model, images, captions, tok, steps=40, batch_size=4, lr=3e-3, warmup_steps=0,
                              device="cpu", progress=False)
    assert history["loss"][-1] < history["loss"][0] - 0.5
    assert all(0 <= s <= math.log(100) + 1e-6 for s in history["logit_scale"])
    fixed = clip.CLIP(**config)
    history = clip.train_clip(fixed, images, captions, tok, steps=3, batch_size=4, temperature=0.5, device="cpu",
                              progress=False)
    assert history["logit_scale"] == [pytest.approx(math.log(2))] * 3


def test_temperature_explorer_sharpens_as_tau_falls():
    from vitlab import widgets

    gen = torch.Generator().manual_seed(8)
    similarity = torch.randn(6, 6, generator=gen) * 0.2 + 0.5 * torch.eye(6)
    explorer = widgets.TemperatureExplorer(similarity, learned_tau=0.05, tau=0.07)
    assert explorer.png()[:4] == b"\x89PNG"
    sharp, soft = explorer.probabilities(0.01), explorer.probabilities(1.0)
    torch.testing.assert_close(sharp.sum(-1), torch.ones(6, dtype=torch.float64))
    assert (sharp.max(-1).values >= soft.max(-1).values).all()
    assert explorer.loss(100.0) == pytest.approx(math.log(6), abs=0.01)
    rows = torch.arange(6)
    expected = (F.cross_entropy(similarity.double() / 0.1, rows) + F.cross_entropy(similarity.double().T / 0.1, rows)) / 2
    assert explorer.loss(0.1) == pytest.approx(expected.item())
