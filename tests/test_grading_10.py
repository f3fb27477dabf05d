"""`python -m autograder grade` on 10_beyond: the untouched release, the solution, submissions with typical mistakes.

The submissions are built by tests/grading.py: the learner copy with the instructor's code pasted in and one
line replaced per mistake. One grading run covers all four notebooks.
"""
from __future__ import annotations

import pytest
from grading import (assert_mistakes_scored_and_named, assert_no_hidden_code,
                     assert_untouched_zero_solution_full, chapter_notebooks, checks_of, grade, points)

CHAPTER = "10_beyond"

# (the object the solution cell defines, a line of the solution, its wrong version)
SWAPPED_KV = ("CrossAttention",
              "        k, v = self.kv(context).reshape(b, lk, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)",
              "        v, k = self.kv(context).reshape(b, lk, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)")
NO_SCALE = ("CrossAttention",
            "        weights = (q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)).softmax(dim=-1)",
            "        weights = (q @ k.transpose(-2, -1)).softmax(dim=-1)")
CHANNELS_LAST = ("tubelet_embed",
                 "    x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(b, nt * nh * nw, c * t * p * q)",
                 "    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1).reshape(b, nt * nh * nw, c * t * p * q)")
CUBIC = ("attention_pairs", "        return tokens * tokens", "        return tokens * tokens * tokens")
NO_WINDOW = ("spectrogram_patches",
             "    spec = torch.stft(wave, n_fft, hop_length=hop, window=window, return_complex=True)",
             "    spec = torch.stft(wave, n_fft, hop_length=hop, return_complex=True)")
EMPTY_TO_ZERO = ("kmeans_step", "    return labels, torch.where(counts > 0, means, palette)", "    return labels, means")

# student -> (mistakes, {check_beyond function whose graded cell scores zero: what its feedback says},
#             check_beyond functions that score zero as a knock-on)
SUBMISSIONS = {
    "solution": ([], {}, set()),
    "mistakes_a": ([SWAPPED_KV, CHANNELS_LAST, CUBIC], {
        "cross_attention": "swapped keys and values",
        "tubelet_embed": "flattened each tubelet with the channels last",
        "attention_pairs": "cubed the token count for joint attention, as the book claims",
    }, set()),
    "mistakes_b": ([NO_SCALE, NO_WINDOW, EMPTY_TO_ZERO], {
        "cross_attention": "forgot to divide the scores by sqrt(head_dim)",
        "spectrogram_patches": "left out the Hann window",
        "kmeans_step": "set an empty cluster's colour to zero",
    }, set()),
}

MODULE = "check_beyond"


@pytest.fixture(scope="module")
def notebooks(repo):
    return chapter_notebooks(repo, CHAPTER)


@pytest.fixture(scope="module")
def graded(tmp_path_factory, notebooks, autograder):
    done, out, grades = grade(autograder, tmp_path_factory, CHAPTER, *notebooks, SUBMISSIONS)
    assert done.returncode == 0, done.stdout + done.stderr
    return out, grades


def test_every_exercise_has_one_graded_cell(notebooks):
    checks = checks_of(notebooks[1], MODULE)
    assert sorted(checks) == sorted(["cross_attention", "tubelet_embed", "attention_pairs", "spectrogram_patches",
                                     "kmeans_step"])
    assert all(len(cells) == 1 for cells in checks.values())


def test_untouched_release_scores_zero_and_solution_full_points(graded, notebooks):
    assert sum(points(notebooks[1]).values()) == 10
    assert_untouched_zero_solution_full(graded[1], notebooks[1])


@pytest.mark.parametrize("student", [s for s in SUBMISSIONS if s != "solution"])
def test_a_mistake_scores_zero_on_its_exercise_only_and_is_named(graded, notebooks, student):
    assert_mistakes_scored_and_named(*graded, notebooks[1], MODULE, CHAPTER, student, SUBMISSIONS[student])


def test_feedback_shows_no_hidden_test_code(graded, notebooks):
    assert_no_hidden_code(graded[0], CHAPTER, notebooks[1], 1 + len(SUBMISSIONS))
