"""vitlab.attention against torch's own ops, brute-force loops, closed forms and a case worked by hand."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vitlab import attention as A

LEADING = [(), (3,), (2, 3), (2, 1, 3)]
DTYPES = [torch.float32, torch.float64]


def tol(dtype: torch.dtype) -> dict:
    return {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-12}


def qkv(lead=(2,), lq=5, lk=7, dk=4, dv=6, dtype=torch.float32, seed=0, grad=False):
    g = torch.Generator().manual_seed(seed)
    shapes = [(*lead, lq, dk), (*lead, lk, dk), (*lead, lk, dv)]
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_(grad) for s in shapes]


def random_bool_mask(shape, seed=0):
    """A random keep-mask with key 0 always kept, so that no row is fully blocked."""
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) > 0.4
    mask[..., 0] = True
    return mask


# ---------------------------------------------------------------- scaled dot-product attention


@pytest.mark.parametrize("lead", LEADING)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["none", "bool", "float", "causal", "bool+causal"])
def test_sdpa_matches_torch(lead, dtype, kind):
    q, k, v = qkv(lead, lq=5, lk=7, dk=4, dv=6, dtype=dtype, seed=len(lead))
    lq, lk = q.shape[-2], k.shape[-2]
    mask, causal, torch_kwargs = None, False, {}
    if kind == "bool":
        mask = random_bool_mask((*lead, lq, lk), seed=1)
        torch_kwargs = {"attn_mask": mask}
    elif kind == "float":
        mask = torch.randn(lq, lk, dtype=dtype)  # broadcast over the leading dims
        torch_kwargs = {"attn_mask": mask}
    elif kind == "causal":
        causal = True
        torch_kwargs = {"is_causal": True}
    elif kind == "bool+causal":
        mask, causal = random_bool_mask((lq, lk), seed=2), True
        torch_kwargs = {"attn_mask": mask & torch.ones(lq, lk, dtype=torch.bool).tril()}
    ours = A.scaled_dot_product_attention(q, k, v, mask=mask, causal=causal)
    theirs = F.scaled_dot_product_attention(q, k, v, **torch_kwargs)
    assert ours.shape == (*lead, lq, 6) and ours.dtype == dtype
    torch.testing.assert_close(ours, theirs, **tol(dtype))


def test_sdpa_custom_scale_and_gradients_match_torch():
    ours_in = qkv((2, 3), lq=4, lk=6, dk=8, dv=3, dtype=torch.float64, seed=5, grad=True)
    theirs_in = [t.detach().clone().requires_grad_() for t in ours_in]
    mask = torch.randn(4, 6, dtype=torch.float64)
    ours = A.scaled_dot_product_attention(*ours_in, mask=mask, scale=0.3)
    theirs = F.scaled_dot_product_attention(*theirs_in, attn_mask=mask, scale=0.3)
    torch.testing.assert_close(ours, theirs)
    upstream = torch.randn_like(ours)
    ours.backward(upstream)
    theirs.backward(upstream)
    for a, b in zip(ours_in, theirs_in):
        torch.testing.assert_close(a.grad, b.grad)


def test_attention_weights_are_torch_attention_applied_to_identity_values():
    q, k, _ = qkv((2, 3), lq=5, lk=7, dtype=torch.float64, seed=3)
    mask = random_bool_mask((5, 7), seed=4)
    weights = A.attention_weights(q, k, mask=mask)
    # with v = I, attention returns its own weights
    identity = torch.eye(7, dtype=torch.float64).expand(2, 3, 7, 7)
    expected = F.scaled_dot_product_attention(q, k, identity, attn_mask=mask)
    torch.testing.assert_close(weights, expected)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 5, dtype=torch.float64))
    assert (weights[..., ~mask] == 0).all()


def test_hand_worked_two_by_two():
    # d_k = 4, so the scale is 1/sqrt(4) = 1/2.
    #   q1 = (2, 0, 0, 0):      scores (q1.k1, q1.k2)/2 = (2/2, 0) = (1, 0)
    #                           weights (e/(e+1), 1/(e+1)) = (0.7310586, 0.2689414)
    #   q2 = (2 ln 3, 0, 0, 0): scores (ln 3, 0), weights (3/4, 1/4)
    # v1 = (1, 2), v2 = (3, 4):
    #   out1 = 0.7310586 (1, 2) + 0.2689414 (3, 4) = (1 + 2*0.2689414, 2 + 2*0.2689414) = (1.5378828, 2.5378828)
    #   out2 = 3/4 (1, 2) + 1/4 (3, 4) = (1.5, 2.5)
    # Blocking key 1 for query 2 leaves it only v2: out2 = (3, 4).
    q = torch.tensor([[2.0, 0, 0, 0], [2 * math.log(3), 0, 0, 0]], dtype=torch.float64)
    k = torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]], dtype=torch.float64)
    v = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    weights = A.attention_weights(q, k)
    torch.testing.assert_close(weights, torch.tensor([[0.7310586, 0.2689414], [0.75, 0.25]], dtype=torch.float64),
                               atol=1e-7, rtol=0)
    out = A.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, torch.tensor([[1.5378828, 2.5378828], [1.5, 2.5]], dtype=torch.float64),
                               atol=1e-7, rtol=0)
    mask = torch.tensor([[True, True], [False, True]])
    out = A.scaled_dot_product_attention(q, k, v, mask=mask)
    torch.testing.assert_close(out, torch.tensor([[1.5378828, 2.5378828], [3.0, 4.0]], dtype=torch.float64),
                               atol=1e-7, rtol=0)


@pytest.mark.parametrize("kind", ["bool", "float"])
def test_fully_masked_row_gives_zeros_and_finite_gradients(kind):
    q, k, v = qkv((2,), lq=4, lk=5, dtype=torch.float64, seed=7, grad=True)
    keep = random_bool_mask((2, 4, 5), seed=8)
    keep[0, 1] = False  # query 1 of batch 0 sees nothing
    keep[1, 3] = False
    mask = keep if kind == "bool" else torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, -math.inf)
    weights = A.attention_weights(q, k, mask=mask)
    out = A.scaled_dot_product_attention(q, k, v, mask=mask)
    assert torch.isfinite(out).all()
    assert (out[0, 1] == 0).all() and (out[1, 3] == 0).all()
    assert (weights[0, 1] == 0).all() and (weights[1, 3] == 0).all()
    live = keep.any(-1)
    torch.testing.assert_close(weights.sum(-1)[live], torch.ones(int(live.sum()), dtype=torch.float64))
    # the other rows are untouched: compare with the same call on a mask that revives the dead rows
    revived = keep.clone()
    revived[~live] = True
    torch.testing.assert_close(out[live], A.scaled_dot_product_attention(q, k, v, mask=revived)[live])
    (out.sum() + weights.sum()).backward()
    for t in (q, k, v):
        assert torch.isfinite(t.grad).all()
    assert (q.grad[0, 1] == 0).all()  # a dead query receives no gradient


def test_causal_with_lq_not_lk_is_top_left_aligned():
    q, k, _ = qkv((), lq=3, lk=5, seed=9)
    weights = A.attention_weights(q, k, causal=True)
    expected_zero = ~torch.ones(3, 5, dtype=torch.bool).tril()
    assert (weights[expected_zero] == 0).all() and (weights[~expected_zero] > 0).all()


# ---------------------------------------------------------------- multi-head attention


def torch_and_ours(dim=16, heads=4, bias=True, seed=0):
    torch.manual_seed(seed)
    mha = nn.MultiheadAttention(dim, heads, bias=bias, batch_first=True)
    with torch.no_grad():  # non-zero biases, so that copying them is tested
        for p in mha.parameters():
            p.normal_(0, 0.3)
    return mha, A.MultiHeadAttention.from_torch(mha)


def test_state_dict_keys_are_timms():
    assert list(A.MultiHeadAttention(32, 4).state_dict()) == ["qkv.weight", "qkv.bias", "proj.weight", "proj.bias"]
    assert list(A.MultiHeadAttention(32, 4, qkv_bias=False).state_dict()) == ["qkv.weight", "proj.weight", "proj.bias"]
    shapes = {k: tuple(v.shape) for k, v in A.MultiHeadAttention(32, 4).state_dict().items()}
    assert shapes == {"qkv.weight": (96, 32), "qkv.bias": (96,), "proj.weight": (32, 32), "proj.bias": (32,)}


@pytest.mark.parametrize("bias", [True, False])
def test_from_torch_matches_nn_multiheadattention(bias):
    mha, ours = torch_and_ours(bias=bias)
    x = torch.randn(3, 6, 16)
    expected, expected_weights = mha(x, x, x, average_attn_weights=False)
    torch.testing.assert_close(ours(x), expected, atol=1e-5, rtol=1e-5)
    out, weights = ours(x, return_attention=True)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weights, expected_weights, atol=1e-5, rtol=1e-5)


def test_from_torch_matches_with_key_padding_mask():
    mha, ours = torch_and_ours(seed=1)
    x = torch.randn(3, 6, 16)
    ignore = torch.zeros(3, 6, dtype=torch.bool)  # torch: True = ignore this key
    ignore[0, 4:] = True
    ignore[2, 1] = True
    expected = mha(x, x, x, key_padding_mask=ignore, need_weights=False)[0]
    keep = ~ignore[:, None, None, :]  # ours: True = attend
    torch.testing.assert_close(ours(x, mask=keep), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x, mask=keep, return_attention=True)[0], expected, atol=1e-5, rtol=1e-5)


def test_from_torch_matches_with_causal_and_float_masks():
    mha, ours = torch_and_ours(seed=2)
    x = torch.randn(2, 5, 16)
    blocked = ~torch.ones(5, 5, dtype=torch.bool).tril()  # nn.MultiheadAttention: bool True = blocked
    expected = mha(x, x, x, attn_mask=blocked, need_weights=False)[0]
    torch.testing.assert_close(ours(x, causal=True), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x, causal=True, return_attention=True)[0], expected, atol=1e-5, rtol=1e-5)
    bias = torch.randn(5, 5)
    expected = mha(x, x, x, attn_mask=bias, need_weights=False)[0]
    torch.testing.assert_close(ours(x, mask=bias), expected, atol=1e-5, rtol=1e-5)


def test_fast_path_calls_torch_sdpa_and_explicit_path_does_not(monkeypatch):
    calls = []

    def counting(*args, **kwargs):
        calls.append(1)
        return torch_sdpa(*args, **kwargs)

    torch_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", counting)
    mha = A.MultiHeadAttention(16, 4)
    x = torch.randn(2, 5, 16)
    mha(x)
    mha(x, mask=torch.ones(5, 5, dtype=torch.bool), causal=True)
    assert len(calls) == 2
    mha(x, return_attention=True)
    assert len(calls) == 2


def test_multi_head_dead_rows_and_causal_padding_agree_across_paths():
    # left padding plus causal: query 0 of sequence 0 sees no key at all
    torch.manual_seed(3)
    mha = A.MultiHeadAttention(16, 4).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    keep = torch.ones(2, 1, 1, 5, dtype=torch.bool)
    keep[0, ..., 0] = False
    fast = mha(x, mask=keep, causal=True)
    slow, weights = mha(x, mask=keep, causal=True, return_attention=True)
    torch.testing.assert_close(fast, slow)
    assert (weights[0, :, 0] == 0).all()
    torch.testing.assert_close(fast[0, 0], mha.proj.bias)  # zero attention output, then the projection's bias
    fast.sum().backward()
    assert torch.isfinite(x.grad).all() and all(torch.isfinite(p.grad).all() for p in mha.parameters())


def test_multi_head_float_mask_under_low_precision():
    torch.manual_seed(4)
    mha = A.MultiHeadAttention(16, 4)
    x = torch.randn(2, 5, 16)
    bias = torch.randn(5, 5)
    expected = mha(x, mask=bias)
    expected_causal = mha(x, mask=bias, causal=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mha(x, mask=bias)
    torch.testing.assert_close(out.float(), expected, atol=0.05, rtol=0.05)
    mha = mha.to(torch.bfloat16)
    for return_attention in (False, True):
        out = mha(x.bfloat16(), mask=bias, causal=True, return_attention=return_attention)
        out = out[0] if return_attention else out
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), expected_causal, atol=0.05, rtol=0.05)


def test_multi_head_is_permutation_equivariant():
    torch.manual_seed(5)
    mha = A.MultiHeadAttention(24, 3).double()
    x = torch.randn(2, 9, 24, dtype=torch.float64)
    perm = torch.randperm(9)
    assert not torch.equal(perm, torch.arange(9))
    torch.testing.assert_close(mha(x[:, perm]), mha(x)[:, perm])
    # and not invariant: the output rows follow the tokens
    assert not torch.allclose(mha(x[:, perm]), mha(x))


# ---------------------------------------------------------------- additive attention


def test_additive_attention_matches_a_loop_over_pairs():
    torch.manual_seed(6)
    att = A.AdditiveAttention(query_dim=3, key_dim=5, hidden_dim=7).double()
    q = torch.randn(2, 4, 3, dtype=torch.float64)
    k = torch.randn(2, 6, 5, dtype=torch.float64)
    v = torch.randn(2, 6, 2, dtype=torch.float64)
    keep = random_bool_mask((2, 4, 6), seed=10)
    out, weights = att(q, k, v, mask=keep)
    w_q, w_k, b_k, vec = att.w_q.weight, att.w_k.weight, att.w_k.bias, att.v.weight[0]
    scores = torch.full((2, 4, 6), -math.inf, dtype=torch.float64)
    for b in range(2):
        for i in range(4):
            for j in range(6):
                if keep[b, i, j]:
                    scores[b, i, j] = vec @ torch.tanh(w_q @ q[b, i] + w_k @ k[b, j] + b_k)
    expected_weights = scores.exp() / scores.exp().sum(-1, keepdim=True)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(out, expected_weights @ v)
    assert list(att.state_dict()) == ["w_q.weight", "w_k.weight", "w_k.bias", "v.weight"]


# ---------------------------------------------------------------- linear attention


def elu_plus_one(x):
    """elu(x) + 1 written out: x + 1 for x > 0, exp(x) otherwise."""
    return torch.where(x > 0, x + 1, torch.exp(x))


def explicit_linear_attention(q, k, v, causal, eps=1e-6):
    """The O(L^2) form: (phi(q) phi(k)^T, lower-triangular if causal) v, each row divided by its sum + eps."""
    scores = elu_plus_one(q) @ elu_plus_one(k).transpose(-2, -1)
    if causal:
        scores = scores.tril()
    return scores @ v / (scores.sum(-1, keepdim=True) + eps)


def test_elu_feature_map():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    phi = A.elu_feature_map(x)
    torch.testing.assert_close(phi, elu_plus_one(x))
    assert (phi > 0).all()


@pytest.mark.parametrize("lead", [(), (2,), (2, 3)])
@pytest.mark.parametrize("causal", [False, True])
def test_linear_attention_matches_quadratic_formula(lead, causal):
    lk = 8 if causal else 11
    q, k, v = qkv(lead, lq=8, lk=lk, dk=4, dv=5, dtype=torch.float64, seed=11)
    out = A.linear_attention(q, k, v, causal=causal)
    assert out.shape == (*lead, 8, 5)
    torch.testing.assert_close(out, explicit_linear_attention(q, k, v, causal))


def test_causal_linear_attention_ignores_the_future():
    q, k, v = qkv((2,), lq=6, lk=6, seed=12)
    out = A.linear_attention(q, k, v, causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[:, 4:] += 3.0
    v2[:, 4:] -= 3.0
    out2 = A.linear_attention(q, k2, v2, causal=True)
    torch.testing.assert_close(out[:, :4], out2[:, :4])
    assert not torch.allclose(out[:, 4:], out2[:, 4:])


# ---------------------------------------------------------------- local attention


def test_band_mask_matches_a_loop():
    n, window = 7, 2
    expected = torch.tensor([[abs(i - j) <= window for j in range(n)] for i in range(n)])
    assert torch.equal(A.band_mask(n, window), expected)


@pytest.mark.parametrize("n,window", [(1, 0), (10, 0), (10, 1), (10, 3), (13, 4), (10, 9), (6, 50)])
@pytest.mark.parametrize("lead", [(), (2, 3)])
def test_local_attention_equals_band_masked_sdpa(n, window, lead):
    q, k, v = qkv(lead, lq=n, lk=n, dk=4, dv=3, dtype=torch.float64, seed=n + window)
    expected = A.scaled_dot_product_attention(q, k, v, mask=A.band_mask(n, window))
    torch.testing.assert_close(A.local_attention(q, k, v, window), expected)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=A.band_mask(n, window))
    torch.testing.assert_close(A.local_attention(q, k, v, window), expected)


def test_local_attention_work_grows_with_window_not_length():
    n, window, d = 4096, 2, 8
    q, k, v = qkv((), lq=n, lk=n, dk=d, dv=d, seed=13)
    with FlopCounterMode(display=False) as counter:
        A.local_attention(q, k, v, window)
    dense = 2 * (2 * n * n * d)  # q k^T plus weights v
    assert counter.get_total_flops() <= 2 * (2 * n * 3 * max(window, 1) * d)
    assert counter.get_total_flops() < dense / 100


# ---------------------------------------------------------------- cost


def test_attention_memory_bytes():
    # a 300x300x3 image with one token per pixel value: 270,000 tokens, 270,000^2 = 72.9e9 scores
    assert 300 * 300 * 3 == 270_000
    assert A.attention_memory_bytes(270_000, bytes_per_value=1) == 72_900_000_000
    assert A.attention_memory_bytes(270_000) == 4 * 72_900_000_000  # float32: 291.6 GB
    # the size of the score tensor torch would actually allocate
    scores = torch.empty(3, 2, 10, 10, dtype=torch.float16)
    expected = scores.numel() * scores.element_size()
    assert A.attention_memory_bytes(10, num_heads=2, batch=3, bytes_per_value=2) == expected
