"""vitlab.parallel on two real processes (torchrun, gloo): averaged shard gradients equal the full-batch gradient
and DDP gives the same gradients and weights; a learner file that sums without dividing is caught there too.
The tensor-parallel MLP against the unsplit one, ZeRO's memory against the paper's numbers, and the learner
checks (the simulated world of threads must catch what the real processes catch)."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from vitlab import check_transfer, parallel
from vitlab.check import CheckFailed


def torchrun(out, *extra):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "vitlab.parallel", "--out", str(out), *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    return torch.load(out, weights_only=False), done.stdout


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    return torchrun(tmp_path_factory.mktemp("ddp") / "result.pt")


def test_two_gloo_processes_average_to_the_full_batch_gradient_and_match_ddp(two_ranks):
    result, stdout = two_ranks
    assert result["world"] == 2 and result["backend"] == "gloo" and "2 ranks (gloo)" in stdout
    assert result["grad_gap_full"] < 1e-6
    assert result["grad_gap_ddp"] < 1e-6 and result["weight_gap_ddp"] < 1e-6
    torch.testing.assert_close(result["shards"].mean(0), result["full"], atol=1e-6, rtol=1e-5)
    assert (result["shards"][0] - result["shards"][1]).abs().max() > 1e-3   # the shards really differ


LEARNER_FILES = {
    "right": """
        import torch.distributed as dist

        def average_gradients(model):
            for p in model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= dist.get_world_size()
        """,
    "forgot_to_divide": """
        import torch.distributed as dist

        def average_gradients(model):
            for p in model.parameters():
                dist.all_reduce(p.grad)
        """,
}


def load(source):
    namespace = {}
    exec(textwrap.dedent(source), namespace)
    return namespace["average_gradients"]


def test_a_learner_file_runs_under_torchrun_and_summing_is_caught(tmp_path):
    (tmp_path / "wrong.py").write_text(textwrap.dedent(LEARNER_FILES["forgot_to_divide"]))
    wrong, _ = torchrun(tmp_path / "wrong.pt", "--average-from", str(tmp_path / "wrong.py"))
    torch.testing.assert_close(wrong["averaged"], 2 * wrong["full"], atol=1e-6, rtol=1e-5)
    assert wrong["weight_gap_ddp"] > 1e-3


def test_the_simulated_world_agrees_with_the_real_one():
    check_transfer.average_gradients(load(LEARNER_FILES["right"]), graded=True)
    with pytest.raises(CheckFailed, match="summed the gradients without dividing"):
        check_transfer.average_gradients(load(LEARNER_FILES["forgot_to_divide"]))


@pytest.mark.parametrize("source, says", [
    ("for p in model.parameters():\n    dist.all_reduce(p.grad)\n    p.grad /= dist.get_world_size()",
     "a frozen parameter's .grad is None"),  # graded cases have a frozen parameter
    ("for p in model.parameters():\n    if p.grad is not None:\n        p.grad /= dist.get_world_size()",
     "divided each rank's gradient by the world size but never"),
    ("for p in model.parameters():\n    if p.grad is not None:\n        dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)\n"
     "        p.grad /= dist.get_world_size()", "divided by the world size twice"),
    ("for i, p in enumerate(model.parameters()):\n    if p.grad is not None and i > 0:\n        dist.all_reduce(p.grad)\n"
     "        p.grad /= dist.get_world_size()", "did not all-reduce `0.weight`"),
    ("if dist.get_rank() == 0:\n    for p in model.parameters():\n        dist.all_reduce(p.grad)", "same number of times"),
    ("for p in model.parameters():\n    if p.grad is not None:\n        dist.all_reduce(p.data)\n"
     "        p.data /= dist.get_world_size()", "did not all-reduce"),
])
def test_the_averaging_check_names_the_mistake(source, says):
    fn = load("import torch.distributed as dist\n\ndef average_gradients(model):\n" + textwrap.indent(source, "    "))
    with pytest.raises(CheckFailed, match=says):
        check_transfer.average_gradients(fn, graded=True)


def test_the_averaging_check_refuses_the_reference_and_accepts_reduce_op_avg():
    with pytest.raises(CheckFailed, match="the very thing"):
        check_transfer.average_gradients(parallel.average_gradients)
    check_transfer.average_gradients(load("""
        import torch.distributed as dist

        def average_gradients(model):
            for p in model.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)
        """), graded=True)
    assert not dist.is_initialized()   # the simulation leaves torch.distributed as it was


@pytest.mark.parametrize("parts", [1, 2, 4, 8])
def test_tensor_parallel_mlp_equals_the_unsplit_mlp(parts):
    gen = torch.Generator().manual_seed(parts)
    x, w1, b1 = torch.randn(3, 5, 16, generator=gen), torch.randn(64, 16, generator=gen), torch.randn(64, generator=gen)
    w2, b2 = torch.randn(16, 64, generator=gen), torch.randn(16, generator=gen)
    out, partials = parallel.tensor_parallel_mlp(x, w1, b1, w2, b2, parts)
    torch.testing.assert_close(out, F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2), atol=1e-4, rtol=1e-5)
    assert partials.shape == (parts, 3, 5, 16)
    hidden = F.gelu(F.linear(x, w1, b1))
    size = 64 // parts
    torch.testing.assert_close(partials[-1], hidden[..., -size:] @ w2[:, -size:].T, atol=1e-4, rtol=1e-5)


def test_zero_memory_matches_the_papers_example():
    """ZeRO (Rajbhandari et al. 2020), Figure 1: 7.5B parameters on 64 GPUs: 120 GB, 31.4 GB, 16.6 GB, 1.9 GB."""
    gb = [sum(parallel.zero_bytes_per_device(7.5e9, 64, stage).values()) / 1e9 for stage in range(4)]
    assert [round(g, 1) for g in gb] == [120.0, 31.4, 16.6, 1.9]


def test_the_tensor_parallel_check():
    def right(x, w1, b1, w2, b2, parts):
        partials = torch.stack([F.gelu(x @ a.T + b) @ c.T for a, b, c in zip(w1.chunk(parts), b1.chunk(parts),
                                                                               w2.chunk(parts, 1))])
        return partials.sum(0) + b2, partials

    check_transfer.tensor_parallel_mlp(right, graded=True)
    with pytest.raises(CheckFailed, match="the very thing"):
        check_transfer.tensor_parallel_mlp(parallel.tensor_parallel_mlp)
    for mistake in check_transfer.TP_MISTAKES:
        with pytest.raises(CheckFailed) as failed:
            check_transfer.tensor_parallel_mlp(mistake.impl, graded=True)
        assert mistake.label in str(failed.value)
