"""`python -m autograder grade` on 10_beyond: the untouched release, the solution, submissions with typical mistakes.

The submissions are built by tests/grading.py: the learner copy with the instructor's code pasted in and one
line replaced per mistake. One grading run covers all four notebooks.
"""
from __future__ import annotations

from grading import ChapterGrading

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


class TestGrading(ChapterGrading):
    CHAPTER, MODULE, SUBMISSIONS = CHAPTER, MODULE, SUBMISSIONS
    EXERCISES = ["cross_attention", "tubelet_embed", "attention_pairs", "spectrogram_patches", "kmeans_step"]
    TOTAL = 10
