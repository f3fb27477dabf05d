"""exercise_check: a learner's own notebook run prints a failed check and goes on; nbgrader, graded=True and plain
Python raise. use: the learner's code once its check passed, else the reference."""
import builtins

import pytest
import torch

from vitlab import check


@check.exercise_check
def demo(fn, *, seed=0, graded=False):
    check.check_function(fn, lambda x: 2 * x, [{"x": torch.ones(3)}], name="double")


@pytest.fixture
def notebook(monkeypatch):
    """As in a learner's Jupyter kernel: IPython's builtins flag set, nbgrader not running."""
    monkeypatch.setattr(builtins, "__IPYTHON__", True, raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)


def test_learner_run_goes_on_and_use_picks_reference(notebook, capsys):
    wrong = lambda x: 3 * x  # noqa: E731
    demo(wrong)
    out = capsys.readouterr()
    assert "double" in out.err and check.FAIL in out.err
    ref = object()
    assert check.use(wrong, ref) is ref
    assert "has not passed its check yet" in capsys.readouterr().out
    right = lambda x: x + x  # noqa: E731
    demo(right)
    assert check.use(right, ref) is right


@pytest.mark.parametrize("execution", ["validate", "autograde"])
def test_nbgrader_raises(notebook, monkeypatch, execution):
    monkeypatch.setenv("NBGRADER_EXECUTION", execution)
    with pytest.raises(check.CheckFailed):
        demo(lambda x: 3 * x)


def test_graded_and_plain_python_raise(notebook, monkeypatch):
    with pytest.raises(check.CheckFailed):
        demo(lambda x: 3 * x, graded=True)
    monkeypatch.delattr(builtins, "__IPYTHON__")
    with pytest.raises(check.CheckFailed):
        demo(lambda x: 3 * x)
