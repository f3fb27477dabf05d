"""vitlab.diagnose: a wrong output that is a known transformation of the reference's is described in words."""
import pytest
import torch

from vitlab import diagnose
from vitlab.check import CheckFailed, check_function

GEN = torch.Generator().manual_seed(0)
REF = torch.randn(2, 6, 8, generator=GEN, dtype=torch.float64)
TOL = dict(atol=1e-10, rtol=1e-8)


@pytest.mark.parametrize("got, words", [
    (-REF, "opposite sign"),
    (REF * 8, "times 8"),
    (REF / 8 ** 0.5, "1/sqrt(8)"),
    (REF + 0.5, "plus 0.5"),
    (REF.transpose(1, 2), "axes 1 and 2 swapped"),
    (REF.transpose(1, 2).reshape(2, 6, 8), "read back into shape"),
    (REF.flip(1), "reversed along axis 1"),
    (REF.roll(4, -1), "two halves of the last axis swapped"),
    (REF.unflatten(-1, (2, 4)).transpose(-1, -2).flatten(-2), "interleaves along the last axis"),
    (REF[:, [1, 0, 2, 3, 5, 4]], "yours 0, 1, 2, ... are the reference's 1, 0, 2, 3, 5, 4"),
    (torch.cat([torch.zeros(2, 1, 8, dtype=torch.float64), REF[:, :-1]], 1), "shifted by one along axis 1"),
    (torch.cat([REF[:, :1] * 2, REF[:, 1:]], 1), "only at index 0"),
    (torch.cat([REF[:, :1], REF], 1), "1 extra entry at the start of axis 1"),
    (REF[:, 1:], "lacks the first 1 entry of axis 1"),
    (REF[:, :, None], "only axes of size 1 differ"),
    (REF.float().double(), "only as accurate as float32"),
    (torch.zeros(2, 16, 8, dtype=torch.float64), "16 = 4x4 entries along axis 1 where 6 are expected"),
    (REF.reshape(2, 8, 6), "the sizes of axes 1 and 2 are swapped"),
])
def test_relation_names_the_transformation(got, words):
    assert words in diagnose.relation(got, REF, **TOL)


def test_power_and_unrelated_output():
    probs = REF.softmax(-1)
    assert "power 2" in diagnose.relation(probs ** 2, probs, **TOL)
    assert diagnose.relation(REF.cos(), REF, **TOL) is None
    assert diagnose.relation(REF + 1e-7 * REF.cos(), REF, **TOL) is None  # small, but not float32 rounding


def test_masked_rows_and_border():
    mask = torch.ones(6, 6, dtype=torch.bool)
    mask[2] = False
    got = REF.clone()
    got[:, 2] = 0.5
    assert "rows where `mask` allows nothing" in diagnose.relation(got, REF, **TOL, case={"mask": mask})
    grid = torch.randn(3, 7, 7, generator=GEN, dtype=torch.float64)
    edged = grid.clone()
    edged[:, 0] += 1
    edged[:, :, -1] += 1
    assert "border" in diagnose.relation(edged, grid, **TOL)


def scaled_table(n, dim, temperature=10000.0):
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    omega = temperature ** (-torch.arange(dim // 2, dtype=torch.float64) * 2 / dim)
    return torch.cat([(pos * omega).sin(), (pos * omega).cos()], 1)


def test_argument_slips_and_failing_cases():
    cases = [dict(n=5, dim=8, temperature=10000.0), dict(n=5, dim=8, temperature=100.0)]
    with pytest.raises(CheckFailed) as info:
        check_function(lambda n, dim, temperature=10000.0: scaled_table(n, dim), scaled_table, cases, name="t",
                       grad=False, atol=1e-10, rtol=1e-8)
    assert "`temperature` left at its default" in str(info.value)
    assert "only case 2 of 2 fails, the one with temperature=100.0" in str(info.value)
    slip = diagnose.argument_slip(scaled_table(6, 8), scaled_table, dict(n=5, dim=8), **TOL)
    assert "for n=5 is the reference's for n=6" in slip
    swapped = diagnose.argument_slip(REF[0] - REF[1], lambda a, b: a - b, dict(a=REF[1], b=REF[0]), **TOL)
    assert "`a` and `b` swapped" in swapped


def test_an_error_from_sizes_one_token_apart_hints_at_the_prefix_token():
    def keeps_cls(tokens):
        return tokens + torch.zeros(tokens.shape[1] - 1, 1)  # a table without the CLS row

    with pytest.raises(CheckFailed, match="prefix \\(class\\) tokens"):
        check_function(keeps_cls, lambda tokens: tokens, [dict(tokens=torch.zeros(2, 17, 1))], name="t", grad=False)


def test_rows_a_mask_partly_blocks_and_one_half_of_an_axis():
    mask = torch.ones(2, 1, 8, dtype=torch.bool)
    mask[1, 0, 3] = False  # item 1 blocks one key: its rows are wrong, item 0's are right
    got = REF.clone()
    got[1] += 1
    assert "rows where `mask` blocks some keys" in diagnose.relation(got, REF, **TOL, case={"mask": mask})
    per_item = diagnose.relation(got, REF, **TOL, case={"mask": mask[:, None]})  # (B, 1, 1, Lk) for (B, N, D)
    assert "items whose `mask` blocks some keys" in per_item
    half = REF.clone()
    half[..., :4] *= 1 + torch.rand(4, generator=GEN, dtype=torch.float64)
    assert "wrong only in the first half" in diagnose.relation(half, REF, **TOL)


def test_a_number_off_by_a_ratio_of_arguments_and_an_input_scaled_by_a_size():
    case = dict(frames=8, patches=196)
    assert "times frames/patches" in diagnose.relation(8 * 8 * 196, 8 * 196 * 196, **TOL, case=case)
    assert diagnose.relation(8 * 196 * 3, 8 * 196 * 196, **TOL, case=case) is None  # 3 is no ratio of them
    assert diagnose.relation(10, 5, **TOL, case=dict(dim=8, heads=4)) is None  # a factor 2 is not blamed on 8/4

    def attend(q, k):
        return (q @ k.transpose(-2, -1) / 8 ** 0.5).softmax(-1)

    q, k = REF, REF.flip(1)
    inverted = (q @ k.transpose(-2, -1) * 8 ** 0.5).softmax(-1)  # * sqrt(d) where / sqrt(d) belongs
    assert "`q` multiplied by 8" in diagnose.argument_slip(inverted, attend, dict(q=q, k=k), **TOL)


@pytest.mark.parametrize("fail, words", [
    (lambda: torch.zeros(110).reshape(2, 5, 3, 4), "holds 11 where the reshape expects 12 (one too few)"),
    (lambda: torch.bincount(torch.tensor([0, 3, 12])).reshape(5, 5), "minlength="),
    (lambda: torch.zeros(4, 8) @ torch.zeros(16, 4), "split (chunk) along the wrong axis"),
    (lambda: torch.zeros(9, 4) * torch.zeros(9, 8), "One size is twice the other"),
])
def test_error_hints(fail, words):
    with pytest.raises(RuntimeError) as info:
        fail()
    assert words in diagnose.error_hint(info.value)


def test_parameter_shape_hint_says_which_width_is_wrong():
    assert "in_features=40" in diagnose.parameter_shape_hint((48, 24), (48, 40))
    assert "3 times as many" in diagnose.parameter_shape_hint((24, 24), (72, 24))
    assert diagnose.parameter_shape_hint((3, 4, 5), (3, 4, 6)) is None
