"""vitlab.check: the toolkit passes right code, names known mistakes, and refuses forbidden calls."""
import pytest
import torch
from torch import nn

from vitlab.check import CheckFailed, Mistake, check_function, check_module, check_value, forbid


def reference_softmax(x, dim=-1):
    return torch.softmax(x, dim=dim)


def my_softmax(x, dim=-1):
    e = (x - x.amax(dim, keepdim=True)).exp()
    return e / e.sum(dim, keepdim=True)


def cases(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [dict(x=torch.randn(3, 5, generator=gen)), dict(x=torch.randn(2, 4, 6, generator=gen) * 10)]


WRONG_AXIS = Mistake("normalised over the wrong axis", "use dim=-1", lambda x, dim=-1: torch.softmax(x, dim=0))


def test_correct_function_passes_with_a_pass_line(capsys):
    check_function(my_softmax, reference_softmax, cases(), name="softmax", mistakes=[WRONG_AXIS])
    assert "softmax: matches the reference on 2 cases (values and gradients)" in capsys.readouterr().out


def test_known_mistake_is_named():
    with pytest.raises(CheckFailed, match="looks like you normalised over the wrong axis") as info:
        check_function(lambda x, dim=-1: my_softmax(x, dim=0), reference_softmax, cases(), name="softmax",
                       mistakes=[WRONG_AXIS])
    assert "use dim=-1" in str(info.value)


def test_unknown_mistake_reports_the_error_and_the_case():
    with pytest.raises(CheckFailed, match=r"largest error .*\n\s+on case 1: x=float32\(3, 5\)"):
        check_function(lambda x, dim=-1: my_softmax(x + x.cos()), reference_softmax, cases(), name="softmax",
                       mistakes=[WRONG_AXIS])


def test_shape_and_dtype_are_reported():
    with pytest.raises(CheckFailed, match=r"shape \(3,\), expected \(3, 5\)"):
        check_function(lambda x, dim=-1: my_softmax(x).sum(-1), reference_softmax, cases(), name="softmax")
    with pytest.raises(CheckFailed, match="dtype torch.float64, expected torch.float32"):
        check_function(lambda x, dim=-1: my_softmax(x.double()), reference_softmax, cases(), name="softmax")


def test_not_implemented_says_not_written_yet():
    def todo(x, dim=-1):
        raise NotImplementedError()

    with pytest.raises(CheckFailed, match="not written yet"):
        check_function(todo, reference_softmax, cases(), name="softmax")


def test_learner_exception_is_reported_with_its_line():
    def broken(x, dim=-1):
        return x @ torch.ones(2, 2)

    with pytest.raises(CheckFailed, match=r"raised RuntimeError.*\n.*case 1.*\n.*x @ torch.ones\(2, 2\)"):
        check_function(broken, reference_softmax, cases(), name="softmax")


def test_cut_graph_is_caught_even_when_values_match():
    def detached(x, dim=-1):
        return my_softmax(x.detach(), dim)

    with pytest.raises(CheckFailed, match="no gradient reaches `x`"):
        check_function(detached, reference_softmax, cases(), name="softmax")


def test_wrong_gradient_is_caught():
    class WrongBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return torch.softmax(x, -1)

        @staticmethod
        def backward(ctx, g):
            return g

    with pytest.raises(CheckFailed, match="values match but the gradient with respect to `x`"):
        check_function(lambda x, dim=-1: WrongBackward.apply(x), reference_softmax, cases(), name="softmax")


def test_forbidden_builtin_is_caught_through_an_alias():
    alias = torch.softmax

    with pytest.raises(CheckFailed, match="calls torch.softmax, the very thing"):
        check_function(lambda x, dim=-1: alias(x, dim), reference_softmax, cases(), name="softmax",
                       forbidden={torch.softmax: "torch.softmax"})


def test_forbidden_tensor_method_is_caught_when_called_on_a_tensor():
    with forbid({torch.Tensor.softmax: "Tensor.softmax"}) as called:
        torch.zeros(3).exp()
        assert called == []
        torch.zeros(3).softmax(-1)
    assert called == ["Tensor.softmax"]


def test_forbidden_python_function_and_module_class_are_caught():
    helper = reference_softmax
    with forbid({reference_softmax: "the reference", nn.Linear: "nn.Linear"}) as called:
        helper(torch.zeros(2))
        my_softmax(torch.zeros(2))
    assert called == ["the reference"]
    layer = nn.Linear(2, 2)
    with forbid({nn.Linear: "nn.Linear"}) as called:
        layer(torch.zeros(2))
    assert called == ["nn.Linear"]


def test_forbid_restores_the_previous_profiler():
    import sys

    before = sys.getprofile()
    with forbid({torch.softmax: "x"}):
        pass
    assert sys.getprofile() is before


def test_check_failed_renders_without_code():
    lines = CheckFailed("softmax: looks like you did X.\n  Do Y.")._render_traceback_()
    assert lines == ["\u2718 softmax: looks like you did X.", "    Do Y."]


class Affine(nn.Module):
    def __init__(self, bug=False):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.bug = bug

    def forward(self, x):
        return self.lin(x.flip(-1) if self.bug else x)


def module_inputs():
    gen = torch.Generator().manual_seed(1)
    return [dict(x=torch.randn(2, 4, generator=gen)), dict(x=torch.randn(5, 4, generator=gen))]


def test_module_check_loads_reference_weights_and_passes(capsys):
    check_module(Affine, Affine(), module_inputs(), name="Affine")
    assert "matches the reference on 2 cases (outputs and gradients" in capsys.readouterr().out


def test_module_mistake_is_named_with_the_reference_weights_loaded():
    flipped = Mistake("reversed the features", "do not flip", Affine(bug=True))
    with pytest.raises(CheckFailed, match="looks like you reversed the features"):
        check_module(lambda: Affine(bug=True), Affine(), module_inputs(), name="Affine", mistakes=[flipped])


def test_module_with_other_parameter_names_lists_them():
    class Renamed(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 3)

    with pytest.raises(CheckFailed, match=r"missing: lin.weight \(3, 4\), lin.bias \(3,\)\n.*unexpected: linear.weight"):
        check_module(Renamed, Affine(), module_inputs(), name="Affine")


def test_check_value():
    check_value(2.0, 2.0, name="two")
    with pytest.raises(CheckFailed, match="expected about 3"):
        check_value(2.0, 3.0, name="three", hint="count again")


def test_verify_integrity_passes_untouched_and_names_what_was_replaced(monkeypatch):
    import builtins

    import vitlab.check_attention as check_attention
    from vitlab import check

    check.verify_integrity()
    for owner, name, fake in [(check_attention, "sdpa", lambda *a, **k: None),
                              (torch, "allclose", lambda *a, **k: True),
                              (torch.Tensor, "sub", lambda *a, **k: 0),
                              (builtins, "divmod", lambda *a: (0, 0))]:
        with monkeypatch.context() as m:
            m.setattr(owner, name, fake)
            with pytest.raises(check.CheckFailed, match=rf"changed the course's checking code: .*{name} was replaced"):
                check.verify_integrity()
        check.verify_integrity()  # put back: passes again


def test_switching_off_the_watch_inside_a_check_fails_it():
    import sys

    from vitlab import check

    def sneaky(x):
        sys.setprofile(None)
        return torch.softmax(x, -1)

    with pytest.raises(check.CheckFailed, match="calls sys.setprofile"):
        check.check_function(sneaky, lambda x: torch.softmax(x, -1), [{"x": torch.randn(3)}], name="softmax",
                             forbidden={torch.softmax: "torch.softmax"}, grad=False)


def test_verify_integrity_accepts_torchs_own_wrappers():
    """torch._dynamo wraps torch.manual_seed when an optimizer first imports it: not tampering."""
    import importlib

    from vitlab import check

    torch.optim.AdamW([nn.Parameter(torch.ones(2))])
    importlib.import_module("torch._dynamo")

    check.verify_integrity()


def test_mistake_in_one_item_of_a_tuple_is_named():
    both = Mistake("normalised over the wrong axis", "use dim=-1",
                   lambda x, dim=-1: (torch.softmax(x, dim=0), torch.softmax(2 * x, dim=0)))
    with pytest.raises(CheckFailed, match="looks like you normalised over the wrong axis"):
        check_function(lambda x, dim=-1: (my_softmax(x, dim=0), my_softmax(2 * x)),
                       lambda x, dim=-1: (torch.softmax(x, dim=-1), torch.softmax(2 * x, dim=-1)),
                       cases(), name="pair", mistakes=[both])
