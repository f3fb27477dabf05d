import os, pytest, torch
from vitlab import check

@check.exercise_check
def demo(fn, *, seed=0, graded=False):
    check.check_function(fn, lambda x: 2 * x, [{"x": torch.ones(3)}], name="double")

def test_learner_run_goes_on_and_use_picks_reference(monkeypatch, capsys):
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    wrong = lambda x: 3 * x
    demo(wrong)
    assert "double" in capsys.readouterr().err
    ref = object()
    assert check.use(wrong, ref) is ref
    right = lambda x: x + x
    demo(right)
    assert check.use(right, ref) is right

def test_grading_raises(monkeypatch):
    monkeypatch.setenv("NBGRADER_EXECUTION", "validate")
    with pytest.raises(check.CheckFailed):
        demo(lambda x: 3 * x)
    monkeypatch.delenv("NBGRADER_EXECUTION")
    with pytest.raises(check.CheckFailed):
        demo(lambda x: 3 * x, graded=True)
