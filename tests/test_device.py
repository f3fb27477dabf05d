"""vitlab.device: profile selection, device order, seeding."""
import random

import numpy as np
import pytest
import torch

import vitlab.device as dev


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv("VITLAB_PROFILE", raising=False)
    monkeypatch.delenv("NBGRADER_EXECUTION", raising=False)
    return monkeypatch


def test_profile_defaults_to_cpu_without_cuda(clean_env):
    clean_env.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.profile() == "cpu"


def test_profile_is_gpu_with_cuda(clean_env):
    clean_env.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.profile() == "gpu"


def test_profile_is_grade_under_nbgrader_even_with_cuda(clean_env):
    clean_env.setattr(torch.cuda, "is_available", lambda: True)
    clean_env.setenv("NBGRADER_EXECUTION", "autograde")
    assert dev.profile() == "grade"


def test_environment_variable_overrides(clean_env):
    clean_env.setenv("NBGRADER_EXECUTION", "autograde")
    clean_env.setenv("VITLAB_PROFILE", " GPU ")
    assert dev.profile() == "gpu"


def test_unknown_profile_is_a_clear_error(clean_env):
    clean_env.setenv("VITLAB_PROFILE", "fast")
    with pytest.raises(ValueError, match="grade, cpu, gpu"):
        dev.profile()


def test_by_profile_picks_the_current_value(clean_env):
    for name, expected in [("grade", 1), ("cpu", 2), ("gpu", 3)]:
        clean_env.setenv("VITLAB_PROFILE", name)
        assert dev.by_profile(grade=1, cpu=2, gpu=3) == expected


def test_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert dev.device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert dev.device().type == "cpu"


def test_autocast_dtype_per_device(monkeypatch):
    assert dev.autocast_dtype("cpu") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert dev.autocast_dtype("cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert dev.autocast_dtype("cuda") == torch.float16


def test_seed_everything_repeats_every_generator():
    def draw():
        return random.random(), np.random.rand(), torch.rand(3)

    dev.seed_everything(7)
    first = draw()
    dev.seed_everything(7)
    second = draw()
    assert first[:2] == second[:2] and torch.equal(first[2], second[2])
    dev.seed_everything(8)
    assert draw()[0] != first[0]
