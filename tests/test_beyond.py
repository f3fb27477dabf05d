"""vitlab.beyond against independent truths: nn.MultiheadAttention, Conv3d vs cutting tubelets by hand, torch.stft
vs a hand DFT, F.unfold, scikit-learn's KMeans, pair counts from explicit masks; the 10_beyond data generators;
and vitlab.check_beyond: right learner code passes, each known mistake is named, shortcuts are refused."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitlab import beyond, check_beyond
from vitlab import data as D
from vitlab.check import CheckFailed


@pytest.fixture(autouse=True)
def cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path_factory.getbasetemp() / "vitlab-data"))


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# ---------------------------------------------------------------------------------- cross-attention


@pytest.mark.parametrize("dim,heads,context_dim", [(32, 4, None), (24, 3, 40), (16, 1, 8)])
def test_cross_attention_equals_torch_multihead_attention(dim, heads, context_dim):
    torch.manual_seed(0)
    ours = check_beyond._randomise(beyond.CrossAttention(dim, heads, context_dim), 1).double()
    kv_dim = context_dim or dim
    theirs = nn.MultiheadAttention(dim, heads, kdim=kv_dim, vdim=kv_dim, batch_first=True).double()
    with torch.no_grad():
        wk, wv = ours.kv.weight.chunk(2)
        if context_dim is None:
            theirs.in_proj_weight.copy_(torch.cat([ours.q.weight, wk, wv]))
        else:
            theirs.q_proj_weight.copy_(ours.q.weight)
            theirs.k_proj_weight.copy_(wk)
            theirs.v_proj_weight.copy_(wv)
        theirs.in_proj_bias.copy_(torch.cat([ours.q.bias, ours.kv.bias]))
        theirs.out_proj.weight.copy_(ours.proj.weight)
        theirs.out_proj.bias.copy_(ours.proj.bias)
    x, context = randn(2, 5, dim, seed=2, dtype=torch.float64), randn(2, 7, kv_dim, seed=3, dtype=torch.float64)
    expected, expected_weights = theirs(x, context, context, need_weights=True, average_attn_weights=False)
    out, weights = ours(x, context, return_attention=True)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(ours(x, context), expected)  # the fused-kernel path too


def test_each_query_reads_only_the_context():
    """Changing one query token changes only its own output row; changing the context changes every row."""
    attn = beyond.CrossAttention(16, 2).eval()
    x, context = randn(1, 4, 16, seed=4), randn(1, 6, 16, seed=5)
    base = attn(x, context)
    moved = x.clone()
    moved[0, 2] += 1.0
    diff = (attn(moved, context) - base).abs().sum(-1)[0]
    assert diff[2] > 1e-3 and torch.all(diff[[0, 1, 3]] < 1e-6)
    assert torch.all((attn(x, context + 1.0) - base).abs().sum(-1) > 1e-3)


def test_fusion_vqa_shapes_and_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    train = D.vqa(256, seed=5)
    model = beyond.FusionVQA(len(D.VQA_WORDS), len(D.VQA_ANSWERS), patch_size=16, dim=32)
    assert model(train[0][:3], train[1][:3]).shape == (3, len(D.VQA_ANSWERS))
    _, weights = model.fuse(train[0][:3], train[1][:3], return_attention=True)
    assert weights.shape == (3, 4, 5, 4)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 4, 5))
    history = beyond.fit_vqa(model, train, train, steps=40, batch_size=64, lr=3e-3)
    assert np.mean(history["train_loss"][-5:]) < np.mean(history["train_loss"][:5]) - 0.3
    assert 0 <= history["test_acc"] <= 1


# -------------------------------------------------------------------------------------------- video


@pytest.mark.parametrize("shape,tubelet", [((2, 3, 4, 8, 8), (2, 4, 4)), ((1, 2, 5, 9, 7), (2, 3, 2))])
def test_conv3d_equals_cutting_tubelets_and_a_linear_layer(shape, tubelet):
    embed = beyond.TubeletEmbed(tubelet, shape[1], 12).double()
    video = randn(*shape, seed=6, dtype=torch.float64)
    expected = beyond.tubelets(video, tubelet) @ embed.proj.weight.reshape(12, -1).T + embed.proj.bias
    torch.testing.assert_close(embed(video), expected)
    torch.testing.assert_close(beyond.tubelet_embed(video, embed.proj.weight, embed.proj.bias), expected)


def test_tubelet_tokens_by_brute_force():
    """Token (t', h', w') is the dot product of the weight with the block of the video it covers."""
    video, weight = randn(1, 2, 4, 6, 6, seed=7), randn(5, 2, 2, 3, 3, seed=8)
    tokens = beyond.tubelet_embed(video, weight)
    assert tokens.shape == (1, 2 * 2 * 2, 5)
    for index, (t, h, w) in enumerate(np.ndindex(2, 2, 2)):
        block = video[0, :, 2 * t:2 * t + 2, 3 * h:3 * h + 3, 3 * w:3 * w + 3]
        torch.testing.assert_close(tokens[0, index], (weight * block).sum(dim=(1, 2, 3, 4)))


def test_attention_pair_counts_equal_the_entries_of_explicit_masks():
    for frames, patches in [(1, 1), (3, 4), (5, 2), (8, 9)]:
        frame = torch.arange(frames).repeat_interleave(patches)  # token i sits in frame[i], at place[i]
        place = torch.arange(patches).repeat(frames)
        joint = torch.ones(frames * patches, frames * patches, dtype=torch.bool)
        same_frame = frame[:, None] == frame[None]
        same_place = place[:, None] == place[None]
        assert beyond.attention_pairs(frames, patches, "joint") == joint.sum()
        assert beyond.attention_pairs(frames, patches, "frames") == same_frame.sum()
        assert beyond.attention_pairs(frames, patches, "divided") == same_frame.sum() + same_place.sum()
    with pytest.raises(ValueError, match="joint"):
        beyond.attention_pairs(2, 2, "cubic")


def test_joint_attention_is_quadratic_not_cubic_in_tokens():
    counts = [beyond.attention_pairs(t, 16, "joint") for t in (1, 2, 4, 8)]
    assert [b / a for a, b in zip(counts, counts[1:])] == [4, 4, 4]  # doubling T N multiplies by 2^2, not 2^3


# -------------------------------------------------------------------------------------------- audio


def test_stft_equals_a_hand_dft_and_a_pure_tone_peaks_at_its_bin():
    n_fft, hop, rate, k = 64, 16, 8000, 9
    t = np.arange(1024) / rate
    wave = np.sin(2 * np.pi * (k * rate / n_fft) * t)  # exactly on bin k
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    padded = np.pad(wave, n_fft // 2, mode="reflect")
    frames = np.stack([padded[i * hop:i * hop + n_fft] * window for i in range(len(wave) // hop + 1)])
    dft = np.exp(-2j * np.pi * np.outer(np.arange(n_fft // 2 + 1), np.arange(n_fft)) / n_fft)
    hand = dft @ frames.T  # (F, frames)
    spec = torch.stft(torch.from_numpy(wave), n_fft, hop_length=hop, window=torch.hann_window(n_fft, dtype=torch.float64),
                      return_complex=True)
    np.testing.assert_allclose(spec.numpy(), hand, atol=1e-9)
    db = beyond.spectrogram(torch.from_numpy(wave), n_fft, hop)
    np.testing.assert_allclose(db.numpy(), 10 * np.log10(np.abs(hand) ** 2 + 1e-10), atol=1e-9)
    assert torch.all(db[:, 2:-2].argmax(dim=0) == k)
    assert db.shape == (n_fft // 2 + 1, 1024 // hop + 1)


def test_spectrogram_patches_equal_unfold_of_the_cropped_spectrogram():
    wave = randn(2, 1000, seed=9, dtype=torch.float64)
    spec = beyond.spectrogram(wave, 64, 16)  # (2, 33, 63)
    patches = beyond.spectrogram_patches(wave, 64, 16, 8)
    expected = F.unfold(spec[:, None, :32, :56], kernel_size=8, stride=8).transpose(1, 2)
    assert patches.shape == (2, 4 * 7, 64)
    torch.testing.assert_close(patches, expected)


# ------------------------------------------------------------------------------------------ palette


def test_kmeans_equals_scikit_learn_from_the_same_start():
    from sklearn.cluster import KMeans

    images, _, _ = D.vqa(4, seed=2)
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3).double()
    start = beyond.init_palette(pixels, 8, seed=1)
    palette, labels, inertia = beyond.kmeans(pixels, start, max_iter=300)
    theirs = KMeans(8, init=start.numpy(), n_init=1, max_iter=300, tol=0.0, algorithm="lloyd").fit(pixels.numpy())
    np.testing.assert_allclose(palette.numpy(), theirs.cluster_centers_, atol=1e-9)
    np.testing.assert_array_equal(labels.numpy(), theirs.labels_)
    assert inertia == pytest.approx(theirs.inertia_, rel=1e-9)


def test_nearest_colour_and_one_step_by_brute_force():
    pixels, palette = torch.rand(300, 3, generator=torch.Generator().manual_seed(3)), torch.rand(6, 3)
    palette[4] = 10.0  # no pixel is near it
    nearest = torch.tensor([min(range(6), key=lambda j: ((p - palette[j]) ** 2).sum().item()) for p in pixels])
    assert torch.equal(beyond.nearest_colour(pixels, palette), nearest)
    labels, new = beyond.kmeans_step(pixels, palette)
    assert torch.equal(labels, nearest)
    for j in range(6):
        expected = pixels[nearest == j].mean(0) if (nearest == j).any() else palette[j]
        torch.testing.assert_close(new[j], expected)


def test_quantise_round_trip_on_palette_colours():
    palette = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]])
    indices = torch.randint(4, (2, 5, 7), generator=torch.Generator().manual_seed(0))
    images = beyond.dequantise(indices, palette)
    assert images.shape == (2, 3, 5, 7)
    assert torch.equal(beyond.quantise(images, palette), indices)


# --------------------------------------------------------------------------------------------- data


def test_vqa_answers_agree_with_the_pictures():
    images, questions, answers = D.vqa(60, seed=4)
    colours = torch.tensor(list(D.VQA_COLOURS.values()))
    assert images.shape == (60, 3, 32, 32) and questions.shape == (60, 5) and answers.shape == (60,)
    for img, q, a in zip(images, questions, answers):
        words, answer = D.vqa_text(q)[:-1].split(), D.VQA_ANSWERS[a]
        near = ((img.permute(1, 2, 0)[..., None, :] - colours) ** 2).sum(-1).lt(0.03).sum((0, 1))  # pixels per colour
        shown = {name for name, count in zip(D.VQA_COLOURS, near) if count >= 12}
        if words[0] == "what":
            assert answer in shown
        elif words[0] == "which":
            assert answer in D.VQA_SHAPES and words[-1] in shown
        else:
            assert answer in ("yes", "no")
            if answer == "yes":
                assert words[3] in shown


def test_vqa_is_deterministic_and_splits_differ(tmp_path, monkeypatch):
    first = D.vqa(32, seed=3)
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "elsewhere"))
    again = D.vqa(32, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], D.vqa(32, seed=3, split="test")[0])


def test_moving_shapes_move_in_their_labelled_direction():
    videos, labels = D.moving_shapes(24, frames=6, size=32, seed=1)
    assert videos.shape == (24, 3, 6, 32, 32)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    for video, label in zip(videos, labels):
        bright = video.max(0).values  # (T, H, W): the shape is much brighter than the background
        mask = (bright > 0.5 * (bright.amax((1, 2), keepdim=True) + bright.amin((1, 2), keepdim=True))).float()
        cx = (mask * xx).sum((1, 2)) / mask.sum((1, 2))
        cy = (mask * yy).sum((1, 2)) / mask.sum((1, 2))
        dx, dy = cx[-1] - cx[0], cy[-1] - cy[0]
        expected = {"right": dx > 2, "left": dx < -2, "down": dy > 2, "up": dy < -2}[D.CLIP_DIRECTIONS[label]]
        assert expected, (D.CLIP_DIRECTIONS[label], dx, dy)


def test_a_steady_tone_peaks_at_its_frequency_and_a_rising_one_climbs():
    waves, labels = D.tones(8, seconds=1.0, sample_rate=8000, seed=2)
    assert waves.shape == (8, 8000) and set(labels.tolist()) == set(range(4))
    spec = beyond.spectrogram(waves, 256, 64)
    peak = spec.argmax(dim=1).float()  # (8, frames): loudest bin per frame
    for kind, p in zip(labels, peak):
        if D.TONE_KINDS[kind] == "steady":
            assert p[2:-2].std() < 1.0
        if D.TONE_KINDS[kind] == "rising":
            assert p[-3] > 1.8 * p[2]
        if D.TONE_KINDS[kind] == "falling":
            assert p[2] > 1.8 * p[-3]


# ------------------------------------------------------------------------------------------- checks


def test_the_references_pass_their_own_checks(capsys):
    class Right(check_beyond._WrongCrossAttention):  # the mistakes' forward with no mistake: not the reference
        def __init__(self, dim, num_heads, context_dim=None):
            super().__init__(dim, num_heads, context_dim, "none")

    check_beyond.cross_attention(Right, seed=3, graded=True)
    check_beyond.tubelet_embed(_unfold_tubelets, seed=3, graded=True)
    check_beyond.spectrogram_patches(_unfold_patches, seed=3, graded=True)
    check_beyond.kmeans_step(_one_hot_step, seed=3, graded=True)
    check_beyond.attention_pairs(lambda frames, patches, kind: {"joint": (frames * patches) ** 2,
                                                                "divided": frames * patches * (frames + patches),
                                                                "frames": frames * patches ** 2}[kind], graded=True)
    assert capsys.readouterr().out.count("\u2714") == 3 + 1 + 1 + 1 + 1


def _unfold_tubelets(video, weight, bias):
    d, c, t, p, q = weight.shape
    blocks = video.unfold(2, t, t).unfold(3, p, p).unfold(4, q, q)  # (B, C, T', H', W', t, p, q)
    blocks = blocks.permute(0, 2, 3, 4, 1, 5, 6, 7).flatten(4).flatten(1, 3)
    return blocks @ weight.reshape(d, -1).T + bias


def _unfold_patches(wave, n_fft, hop, patch):
    window = torch.hann_window(n_fft, dtype=wave.dtype)
    power = torch.stft(wave, n_fft, hop_length=hop, window=window, return_complex=True).abs() ** 2
    db = (10 * torch.log10(power + 1e-10))[:, None]
    return F.unfold(db, kernel_size=patch, stride=patch).transpose(1, 2)


def _one_hot_step(pixels, palette):
    labels = torch.cdist(pixels, palette).argmin(-1)
    onehot = F.one_hot(labels, len(palette)).to(pixels.dtype)
    counts = onehot.sum(0)[:, None]
    return labels, torch.where(counts > 0, onehot.T @ pixels / counts.clamp(min=1), palette)


def test_calling_the_reference_or_the_builtin_is_refused():
    with pytest.raises(CheckFailed, match="vitlab.beyond.CrossAttention"):
        check_beyond.cross_attention(lambda dim, heads, context_dim=None: beyond.CrossAttention(dim, heads, context_dim))
    with pytest.raises(CheckFailed, match="F.conv3d"):
        check_beyond.tubelet_embed(lambda video, weight, bias: F.conv3d(video, weight, bias, stride=weight.shape[2:])
                                   .flatten(2).transpose(1, 2))
    with pytest.raises(CheckFailed, match="vitlab.beyond.spectrogram"):
        check_beyond.spectrogram_patches(lambda wave, n_fft, hop, patch: beyond.spectrogram_patches(wave, n_fft, hop,
                                                                                                    patch))
    with pytest.raises(CheckFailed, match="vitlab.beyond.kmeans_step"):
        check_beyond.kmeans_step(beyond.kmeans_step)


@pytest.mark.parametrize("mistake", check_beyond.TUBELET_MISTAKES, ids=lambda m: m.label)
def test_tubelet_mistakes_are_named(mistake):
    with pytest.raises(CheckFailed, match=mistake.label.split(" (")[0].replace("(", r"\(")):
        check_beyond.tubelet_embed(mistake.impl, graded=True, seed=5)


@pytest.mark.filterwarnings("ignore:A window was not provided")
@pytest.mark.parametrize("mistake", check_beyond.SPECTROGRAM_MISTAKES, ids=lambda m: m.label)
def test_spectrogram_mistakes_are_named(mistake):
    with pytest.raises(CheckFailed) as caught:
        check_beyond.spectrogram_patches(mistake.impl, graded=True, seed=2)
    assert mistake.label in str(caught.value)


@pytest.mark.parametrize("mistake", check_beyond.KMEANS_MISTAKES, ids=lambda m: m.label)
def test_kmeans_mistakes_are_named(mistake):
    with pytest.raises(CheckFailed) as caught:
        check_beyond.kmeans_step(mistake.impl)
    assert mistake.label in str(caught.value)


@pytest.mark.parametrize("mistake", check_beyond.PAIRS_MISTAKES, ids=lambda m: m.label)
def test_pair_count_mistakes_are_named(mistake):
    with pytest.raises(CheckFailed) as caught:
        check_beyond.attention_pairs(mistake.impl, graded=True, seed=1)
    assert mistake.label in str(caught.value)


@pytest.mark.parametrize("label,key,hint", check_beyond.CROSS_MISTAKES, ids=[m[1] for m in check_beyond.CROSS_MISTAKES])
def test_cross_attention_mistakes_are_named(label, key, hint):
    class Wrong(check_beyond._WrongCrossAttention):
        def __init__(self, dim, num_heads, context_dim=None):
            super().__init__(dim, num_heads, context_dim, key)

    with pytest.raises(CheckFailed) as caught:
        check_beyond.cross_attention(Wrong)
    assert label in str(caught.value)
