"""Say in words how a wrong output relates to the reference's, when no known mistake of a check matches.

`relation(got, expected, ...)` looks at one case: the same entries in another order (axes swapped or
permuted, halves swapped, interleaved instead of concatenated, a reshape where a permute was needed), a
constant factor, offset or power, a sign flip, a shift by one, extra or missing prefix rows, a grid of another
size, float32 accuracy in a float64 case, a number off by a ratio of two arguments, or equality everywhere
except a few rows, one half of an axis, the masked (or partly masked) positions or the border.
`argument_slip(...)` tries the reference with one argument changed (off by one, left at its default, an input
scaled by a size, two arguments swapped), and `failing_cases(...)` says what the failing cases of a set have in
common. `explain(...)` puts them together into a check's failure message; `error_hint(exc)` reads an
exception's message for a known slip (sizes one prefix token apart or one twice the other, a reshape one row
off, a bincount too short, a product's inner sizes), and `parameter_shape_hint` reads a parameter of the wrong
shape (a Linear built for the wrong width).

Each returns one plain sentence plus the hint it implies ("...\n  hint"), or None when nothing fits.
"""
from __future__ import annotations

import inspect
import itertools
import math
import re
import traceback
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

MAX_PERMUTED_AXES = 5  # try every axis order only up to 5 axes (120 orders)


def _close(a: Tensor, b: Tensor, atol: float, rtol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), atol=atol, rtol=rtol, equal_nan=True))


def _axis(a: int, ndim: int) -> str:
    """'the last axis' / 'axis 1' for a readable sentence."""
    return "the last axis" if a == ndim - 1 and ndim > 1 else f"axis {a}"


def _said(sentence: str, hint: str) -> str:
    return f"{sentence}\n  {hint}"


# ------------------------------------------------------------------------------------------- numbers


def _nice(c: float) -> str:
    """`c` with a simple closed form when it has one: 8 (= sqrt(64)), 0.125 (= 1/8), ..."""
    for form, value in (("{}", c), ("1/{}", 1 / c if c else 0.0)):
        for n in range(2, 1025):
            if abs(value - n) < 1e-3 * n:
                return f"{c:.4g}" if form == "{}" else f"{c:.4g} (= 1/{n})"
            if abs(value - math.sqrt(n)) < 1e-3 * math.sqrt(n) and int(math.isqrt(n)) ** 2 != n:
                return f"{c:.4g} (= {form.format(f'sqrt({n})')})"
    if abs(c - math.e) < 1e-3 * math.e or abs(c - 1 / math.e) < 1e-3:
        return f"{c:.4g} (= e{'^-1' if c < 1 else ''})"
    return f"{c:.4g}"


def _scalar_relation(got: Tensor, expected: Tensor, atol: float, rtol: float) -> str | None:
    """A sign flip, a constant factor, offset or power between two tensors of equal shape."""
    g, e = got.double().flatten(), expected.double().flatten()
    if not (torch.isfinite(g).all() and torch.isfinite(e).all()) or not e.abs().max() > atol:
        return None
    if _close(g, -e, atol, rtol):
        return _said("Your output is the reference's with the opposite sign everywhere.",
                     "A minus sign is missing or one too many (a loss is minus the log-probability; "
                     "a difference taken the wrong way round: a - b instead of b - a).")
    if g.numel() == 1:
        if float(g) == round(float(g)) and float(e) == round(float(e)) and abs(float(g - e)) == 1:
            return _said(f"Your count is {'one more' if g > e else 'one less'} than the reference's "
                         f"({int(g)} for {int(e)}).", "Off by one: something extra counted (a CLS token, an end "
                         "point) or one left out, or a range that starts or stops one too early.")
        return None  # any two numbers differ by some factor and offset: that says nothing
    factor = float((g @ e) / (e @ e))
    loose = dict(atol=atol * 10, rtol=rtol * 10)
    if abs(factor - 1) > 1e-6 and factor != 0 and _close(g, factor * e, **loose):
        return _said(f"Your output is the reference's times {_nice(factor)}, in every entry.",
                     "A constant factor is missing, doubled or inverted: a scale (1/sqrt(d) vs sqrt(d) vs 1/d), "
                     "a mean where a sum belongs (or the reverse), a temperature or logit scale used without "
                     "its .exp(), or a weight such as 0.5 or (1 - eps).")
    if g.numel() > 1:
        offset = float((g - e).mean())
        if abs(offset) > atol and _close(g, e + offset, **loose):
            return _said(f"Your output is the reference's plus {offset:.4g}, in every entry.",
                         "A constant is added or left out: a bias, a +1/-1, an eps, or a term that does not "
                         "depend on the input.")
    if g.numel() > 2 and (e > atol).all() and (g > 0).all():
        le, lg = e.log(), g.log()
        if le.std() > 1e-3:
            power = float((lg @ le) / (le @ le))
            if abs(power - 1) > 1e-3 and _close(g, e ** power, **loose):
                return _said(f"Your output is the reference's raised to the power {_nice(power)}.",
                             "A temperature or exponent is applied to the wrong thing: divide the logits by "
                             "the temperature before the softmax (not the probabilities after it), or a square "
                             "or square root is one too many.")
    return None


# -------------------------------------------------------------------------------------- rearranging


def _same_entries(got: Tensor, expected: Tensor, atol: float, rtol: float) -> bool:
    if got.numel() != expected.numel():
        return False
    return _close(got.double().flatten().sort().values, expected.double().flatten().sort().values, atol, rtol)


def _axis_order(got: Tensor, expected: Tensor, atol: float, rtol: float) -> str | None:
    """Axes in another order (a transpose or permute missing or extra), or a reshape where a permute belongs."""
    nd = expected.dim()
    if nd < 2 or nd > MAX_PERMUTED_AXES or got.numel() != expected.numel():
        return None
    for perm in itertools.permutations(range(nd)):
        if perm == tuple(range(nd)):
            continue
        moved = expected.permute(perm)
        if moved.shape == got.shape and _close(got, moved, atol, rtol):
            swapped = [a for a in range(nd) if perm[a] != a]
            what = (f"axes {swapped[0]} and {swapped[1]} swapped" if len(swapped) == 2
                    else f"its axes in the order {perm}")
            return _said(f"Your output holds the reference's values with {what}.",
                         "A transpose/permute is missing or one too many: check the order of the axes against "
                         "the shapes the exercise gives.")
        if moved.shape != got.shape and _close(got.reshape(-1), moved.reshape(-1), atol, rtol) and \
                got.shape != expected.shape:
            return _said(f"Your output of shape {tuple(got.shape)} is the reference's, shape "
                         f"{tuple(expected.shape)}, with its axes in the order {perm} and then reshaped.",
                         "A reshape/view where a permute (or transpose) is needed: reshape only splits or merges "
                         "neighbouring axes; moving an axis needs .permute or .transpose first.")
    for perm in itertools.permutations(range(nd)):
        if perm == tuple(range(nd)):
            continue
        moved = expected.permute(perm).reshape(expected.shape)
        if _close(got.reshape(expected.shape), moved, atol, rtol):
            return _said(f"Your output holds the reference's values in another order: the reference with its "
                         f"axes in the order {perm}, read back into shape {tuple(expected.shape)}.",
                         "A reshape/view where a permute (or transpose) is needed: reshape only splits or merges "
                         "neighbouring axes; moving an axis (heads, channels, the patch grid) needs .permute.")
    return None


def _interleave(x: Tensor, axis: int, parts: int) -> Tensor:
    """[a0 a1 .. | b0 b1 ..] -> [a0 b0 a1 b1 ..] along `axis` for `parts` equal parts."""
    n = x.shape[axis]
    return x.unflatten(axis, (parts, n // parts)).transpose(axis, axis + 1).flatten(axis, axis + 1)


def _one_axis_order(got: Tensor, expected: Tensor, atol: float, rtol: float) -> str | None:
    """The entries along one axis in another order: reversed, halves swapped, interleaved, or any permutation."""
    for a in range(expected.dim()):
        n = expected.shape[a]
        if n < 2:
            continue
        where = _axis(a, expected.dim())
        if _close(got, expected.flip(a), atol, rtol):
            return _said(f"Your output is the reference's reversed along {where}.",
                         "An index runs the wrong way (arange(n) vs arange(n - 1, -1, -1), or a subtraction "
                         "taken the other way round).")
        if n % 2 == 0 and _close(got, expected.roll(n // 2, a), atol, rtol):
            return _said(f"Your output is the reference's with the two halves of {where} swapped.",
                         "The two halves are concatenated in the wrong order, e.g. [cos | sin] for [sin | cos], "
                         "[rows | columns] for [columns | rows], or (-x2, x1) for (x1, x2).")
        for parts in (2, 3, 4):
            if n % parts or n == parts:
                continue
            if _close(got, _interleave(expected, a, parts), atol, rtol):
                return _said(f"Your output interleaves along {where} what the reference concatenates in "
                             f"{parts} blocks ([a0 b0 a1 b1 ...] instead of [a0 a1 ... | b0 b1 ...]).",
                             "Concatenate the parts (torch.cat) instead of stacking them on a new last axis and "
                             "flattening; or split fused channels as (parts, n/parts), not (n/parts, parts).")
            if _close(expected, _interleave(got, a, parts), atol, rtol):
                return _said(f"Your output concatenates along {where} in {parts} blocks what the reference "
                             "interleaves ([a0 a1 ... | b0 b1 ...] instead of [a0 b0 a1 b1 ...]).",
                             "Pair neighbouring entries (x[..., 0::2], x[..., 1::2]) instead of the two halves, "
                             "or split fused channels as (n/parts, parts), not (parts, n/parts).")
        order = _slice_order(got, expected, a, atol, rtol)
        if order is not None:
            shown = ", ".join(map(str, order[:8])) + (", ..." if len(order) > 8 else "")
            return _said(f"Your output has the reference's slices along {where} in another order: yours "
                         f"0, 1, 2, ... are the reference's {shown}.",
                         "The right values in the wrong places: an index computed in another order (row-major "
                         "is row * width + column), or a reshape where a permute is needed.")
    return None


def _slice_order(got: Tensor, expected: Tensor, axis: int, atol: float, rtol: float) -> list[int] | None:
    """The permutation p with got[i] == expected[p[i]] along `axis`, when there is one (and it is not identity)."""
    if got.shape != expected.shape or expected.shape[axis] > 256:
        return None
    g, e = got.movedim(axis, 0).double(), expected.movedim(axis, 0).double()
    order = []
    for i in range(g.shape[0]):
        hits = [j for j in range(e.shape[0]) if j not in order and _close(g[i], e[j], atol, rtol)]
        if not hits:
            return None
        order.append(i if i in hits else hits[0])
    return None if order == list(range(len(order))) else order


# -------------------------------------------------------------------------------------------- shifts


def _shift(got: Tensor, expected: Tensor, atol: float, rtol: float) -> str | None:
    """Entry i of yours is the reference's entry i - 1 (or i + 1) along one axis."""
    for a in range(expected.dim()):
        n = expected.shape[a]
        if n < 3:
            continue
        where = _axis(a, expected.dim())
        if _close(got.narrow(a, 1, n - 1), expected.narrow(a, 0, n - 1), atol, rtol):
            return _said(f"Your output is the reference's shifted by one along {where}: your entry i is the "
                         "reference's entry i - 1.",
                         "Off by one: an index that should be i where you used i - 1 (or step where you used "
                         "step - 1), or a range that starts one too early.")
        if _close(got.narrow(a, 0, n - 1), expected.narrow(a, 1, n - 1), atol, rtol):
            return _said(f"Your output is the reference's shifted by one along {where}: your entry i is the "
                         "reference's entry i + 1.",
                         "Off by one: positions or steps counted from 1 instead of 0 (arange(1, n + 1) for "
                         "arange(n)), or i + 1 where i belongs.")
    return None


# ------------------------------------------------------------------------------------------- shapes


def _square(n: int) -> str:
    r = math.isqrt(n)
    return f"{n} = {r}x{r}" if r * r == n and n > 1 else str(n)


def _shape_relation(got: Tensor, expected: Tensor, atol: float, rtol: float) -> str | None:
    """A shape that is a known rearrangement or trimming of the expected one."""
    gs, es = tuple(got.shape), tuple(expected.shape)
    if got.numel() == expected.numel():
        if tuple(s for s in gs if s != 1) == tuple(s for s in es if s != 1):
            if _close(got.reshape(es), expected, atol, rtol):
                return _said(f"Your output has shape {gs} where {es} is expected, with the right values in the "
                             "right order: only axes of size 1 differ.",
                             "An axis of size 1 is missing or extra: keepdim=True, x[:, :1] instead of x[:, 0], "
                             "or a .squeeze()/.unsqueeze() too many.")
        found = _axis_order(got, expected, atol, rtol)
        if found:
            return found
        differ = [a for a in range(got.dim()) if got.dim() == expected.dim() and gs[a] != es[a]]
        if len(differ) == 2 and (gs[differ[0]], gs[differ[1]]) == (es[differ[1]], es[differ[0]]):
            return _said(f"Your output has shape {gs}, expected {es}: the sizes of axes {differ[0]} and "
                         f"{differ[1]} are swapped.", "Two sizes are taken in the wrong order: (h, w) unpacked as "
                         "(w, h), or height and width (rows and columns) exchanged in a reshape.")
        if _close(got.reshape(es), expected, atol, rtol):
            return _said(f"Your output has shape {gs} where {es} is expected, but its values are the right ones "
                         "in the right order.", f"Reshape it to {es} (the exercise's docstring gives the shape).")
    if got.dim() == expected.dim():
        differ = [a for a in range(got.dim()) if gs[a] != es[a]]
        if len(differ) == 1:
            a = differ[0]
            g, e = gs[a], es[a]
            where = _axis(a, got.dim())
            if g > e and _close(got.narrow(a, g - e, e), expected, atol, rtol):
                return _said(f"Your output has {g - e} extra entr{'y' if g - e == 1 else 'ies'} at the start of "
                             f"{where} ({g} where {e} are expected); the rest is right.",
                             "The prefix (class or distillation) token(s) are kept where they should be dropped "
                             "(or an extra row is prepended): x[:, num_prefix_tokens:].")
            if g > e and _close(got.narrow(a, 0, e), expected, atol, rtol):
                return _said(f"Your output has {g - e} extra entr{'y' if g - e == 1 else 'ies'} at the end of "
                             f"{where} ({g} where {e} are expected); the rest is right.",
                             "A range runs too far (arange(n + 1), a <= where < belongs), or padding is kept.")
            if e > g and _close(got, expected.narrow(a, e - g, g), atol, rtol):
                return _said(f"Your output lacks the first {e - g} entr{'y' if e - g == 1 else 'ies'} of {where} "
                             f"({g} where {e} are expected); the rest is right.",
                             "The prefix (class) token(s) are dropped where they should be kept (and passed "
                             "through unchanged): concatenate them back in front.")
            if e > g and _close(got, expected.narrow(a, 0, g), atol, rtol):
                return _said(f"Your output lacks the last {e - g} entr{'y' if e - g == 1 else 'ies'} of {where} "
                             f"({g} where {e} are expected); the rest is right.",
                             "A range stops one (or more) short: arange(n - 1), < where <= belongs, or the "
                             "last partial block dropped.")
            return _said(f"Your output has shape {gs}, expected {es}: {_square(g)} entries along {where} where "
                         f"{_square(e)} are expected.",
                         "A grid or sequence of the wrong size: check the stride, the patch (or tubelet) size, "
                         "the number of prefix tokens and which of height/width you divide by what.")
    if got.dim() == expected.dim() + 1 or got.dim() + 1 == expected.dim():
        return _said(f"Your output has shape {gs}, expected {es}: one axis too "
                     f"{'many' if got.dim() > expected.dim() else 'few'}.",
                     "An axis is kept that should be reduced or flattened (or the reverse): check the sum/mean's "
                     "dim and keepdim, and the flatten/reshape at the end.")
    return None


# ------------------------------------------------------------------------------------------ places


def _describe_indices(idx: list[int], n: int) -> str:
    if idx == [0]:
        return "only at index 0 (the first entry: a prefix/CLS token row?)"
    if idx == [n - 1]:
        return f"only at the last index ({n - 1})"
    shown = ", ".join(map(str, idx[:6])) + (", ..." if len(idx) > 6 else "")
    return f"only at indices {shown} of {n}"


def _places(got: Tensor, expected: Tensor, atol: float, rtol: float, case: Mapping[str, Any]) -> str | None:
    """Right everywhere except at some places: masked positions, fully masked rows, a few rows, the border."""
    wrong = ~torch.isclose(got.double(), expected.double(), atol=atol, rtol=rtol, equal_nan=True)
    if not wrong.any() or wrong.all():
        return None
    for key, value in case.items():
        if not (isinstance(value, Tensor) and value.dtype == torch.bool and value.dim() >= 1):
            continue
        dead = ~value.any(-1)  # rows of a mask that allow nothing (a query that may see no key)
        blocking = (~value).any(-1)  # rows of a mask that block at least one key
        per_item = (~value).flatten(1).any(1).reshape(-1, *[1] * (wrong.dim() - 1)) if \
            value.dim() > wrong.dim() and value.shape[0] == wrong.shape[0] else None
        for region, what in ((dead.unsqueeze(-1), f"the rows where `{key}` allows nothing (all False)"),
                             (~value, f"the positions where `{key}` is False"),
                             (value, f"the positions where `{key}` is True"),
                             (blocking.unsqueeze(-1), f"the rows where `{key}` blocks some keys (holds a False)"),
                             (per_item, f"the items whose `{key}` blocks some keys (holds a False)")):
            if region is None:
                continue
            try:
                region = torch.broadcast_to(region, wrong.shape)
            except RuntimeError:
                continue
            if region.any() and not (wrong & ~region).any():
                hint = ("Check how masked entries are handled: -inf goes into the scores before the softmax, "
                        "a row that may see nothing gives zeros (not NaN, not a uniform average), and the "
                        "mask's True means 'may attend' / 'keep'.")
                if "blocks some keys" in what:
                    hint = ("The mask has no effect or the wrong one: pass it on (attn_mask=mask) and fill the "
                            "blocked scores with -inf (float('-inf'), not 0: exp(0) = 1 still gives them weight) "
                            "before the softmax.")
                return _said(f"Your output is right everywhere except at {what}.", hint)
    if expected.dim() >= 2:
        h, w = expected.shape[-2:]
        plane = wrong.reshape(-1, h, w).any(0)
        if h > 2 and w > 2 and plane.any(1).sum() >= 2 and plane.any(0).sum() >= 2:
            border = torch.ones(h, w, dtype=torch.bool)
            border[1:-1, 1:-1] = False
            if not (wrong & ~border).any():
                return _said("Your output is right inside the grid but wrong on its border (first/last row "
                             "and column).",
                             "Edges are handled differently: padding (zeros vs replicate), align_corners, or a "
                             "range that drops or wraps the last row/column.")
    for a in range(expected.dim()):
        n = expected.shape[a]
        rows = wrong.movedim(a, 0).reshape(n, -1).any(1)
        if n >= 4 and n % 2 == 0 and int(rows.sum()) > n // 4 and not (rows[: n // 2].any() and rows[n // 2:].any()):
            half = "first" if rows[: n // 2].any() else "second"
            return _said(f"Your output is right in one half of {_axis(a, expected.dim())} and wrong only in the "
                         f"{half} half.", f"The two halves are built differently: check what feeds the {half} "
                         "half (an argument such as the temperature or a size not passed on, or the other half's "
                         "table used twice).")
    for a in range(expected.dim()):
        n = expected.shape[a]
        if n < 2:
            continue
        rows = wrong.movedim(a, 0).reshape(n, -1).any(1)
        idx = rows.nonzero().flatten().tolist()
        if len(idx) <= max(1, n // 4):
            where = _axis(a, expected.dim())
            hint = ("The prefix (class/distillation) token(s) are treated like the patch tokens, or the other way "
                    "round: they are passed through unchanged (not resampled, not rotated, not pooled)."
                    if idx == [0] else "Look at what is special about those entries: the first or last, an "
                    "edge case such as a zero, a tie, an empty set or a division by zero.")
            return _said(f"Your output is right everywhere except along {where}, {_describe_indices(idx, n)}.",
                         hint)
    return None


# ------------------------------------------------------------------------------------------- entry points


def error_hint(exc: BaseException) -> str | None:
    """A hint for an error raised by the learner's code, when its message shows a known slip."""
    sizes = re.search(r"size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\)", str(exc))
    if sizes and abs(int(sizes[1]) - int(sizes[2])) in (1, 2):
        return ("Two sizes differ by the number of prefix (class) tokens: a CLS token kept where it should be "
                "dropped (tokens[:, num_prefix_tokens:]), or dropped where it should be kept.")
    if sizes and sorted((int(sizes[1]), int(sizes[2]))) in ([n, 2 * n] for n in (int(sizes[1]), int(sizes[2]))):
        return ("One size is twice the other: a width split in two (per position axis, or the cos/sin halves) "
                "where the whole is used, or the whole where half belongs.")
    if sizes and math.isqrt(int(sizes[1])) ** 2 == int(sizes[1]) != int(sizes[2]):
        return "A grid of the wrong size: check the stride, the patch size and which side is height or width."
    lines = " ".join(f.line or "" for f in traceback.extract_tb(exc.__traceback__))
    reshape = re.search(r"shape '\[([\d, -]+)\]' is invalid for input of size (\d+)", str(exc))
    target = [int(n) for n in reshape[1].split(",")] if reshape else []
    short_table = len(target) == 2 and target[0] == target[1] > 0 and target[0] ** 2 > int(reshape[2])
    if reshape and ("bincount" in lines or short_table):
        return ("Too few entries for a K x K table: torch.bincount returns max(input) + 1 bins, fewer when the "
                "largest values never occur; pass minlength= the number of bins you reshape to (K * K).")
    if reshape and -1 not in target:
        found = _one_row_off(target, int(reshape[2]))
        if found:
            return found
    matmul = re.search(r"shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)", str(exc))
    if matmul:
        return (f"A product needs the inner sizes to agree ({matmul[2]} columns vs {matmul[3]} rows): a weight "
                "used without .T (x @ W.T for W of shape (out, in)) or split (chunk) along the wrong axis.")
    return None


def parameter_shape_hint(mine: tuple[int, ...], theirs: tuple[int, ...]) -> str | None:
    """What a parameter of the wrong shape says about how its layer was built (a Linear's (out, in) weight)."""
    if len(mine) == len(theirs) == 2 and mine[0] == theirs[0] and mine[1] != theirs[1]:
        return (f"This layer takes inputs of width {mine[1]} where {theirs[1]} arrive: build it with "
                f"in_features={theirs[1]} (the width of what it is applied to: context_dim rather than dim, say).")
    if len(mine) == len(theirs) == 2 and mine[1] == theirs[1] and mine[0] != theirs[0]:
        ratio = theirs[0] / mine[0]
        return (f"This layer gives {mine[0]} outputs where {theirs[0]} are expected"
                + (f" ({ratio:g} times as many: a fused projection such as qkv or kv needs {ratio:g} * dim)"
                   if ratio == int(ratio) and ratio > 1 else "") + ": check out_features.")
    return None


def _one_row_off(shape: list[int], size: int) -> str | None:
    """For a reshape that fails: neighbouring axes whose product is one off from what the tensor holds."""
    total = math.prod(shape)
    for i in range(len(shape)):
        for j in range(i + 1, len(shape) + 1):
            part = math.prod(shape[i:j])
            rest = total // part
            if part > 1 and size % rest == 0 and abs(size // rest - part) == 1:
                have, delta = size // rest, size // rest - part
                return (f"The tensor holds {have} where the reshape expects {_square(part)} "
                        f"(one {'too many' if delta > 0 else 'too few'}): a prefix (class) token kept "
                        "that should be dropped, or dropped that should be kept (check num_prefix_tokens, "
                        "also where a default of 1 applies), or a size off by one.")
    return None


def relation(got: Any, expected: Any, atol: float, rtol: float, case: Mapping[str, Any] | None = None,
             ) -> str | None:
    """How `got` relates to `expected` (tensors, numbers, or tuples of them) in one case, or None."""
    case = case or {}
    if isinstance(expected, (tuple, list)) and isinstance(got, (tuple, list)) and len(got) == len(expected):
        for i, (g, e) in enumerate(zip(got, expected)):
            found = None if _equal(g, e, atol, rtol) else relation(g, e, atol, rtol, case)
            if found:
                first, _, rest = found.partition("\n")
                return f"Item {i} of your output: {first[0].lower()}{first[1:]}\n{rest}"
            if not _equal(g, e, atol, rtol):
                return None
        return None
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)) and not isinstance(got, bool):
        got, expected = torch.tensor(float(got)), torch.tensor(float(expected))
    if not (isinstance(got, Tensor) and isinstance(expected, Tensor)):
        return None
    if not (got.is_floating_point() or expected.is_floating_point()):
        got, expected = got.double(), expected.double()
    got, expected = got.detach(), expected.detach()
    if got.numel() == expected.numel() == 1 and torch.isfinite(got).all():
        found = _argument_ratio(got, expected, case)
        if found:
            return found
    if got.shape != expected.shape:
        return _shape_relation(got, expected, atol, rtol)
    if torch.isnan(got).any() and not torch.isnan(expected).any():
        return _said("Your output is NaN where the reference's is a number.",
                     "A 0/0 or a log(0) somewhere: an empty class, row or set (a union, count or sum of 0), or a "
                     "softmax over a row of only -inf. Leave such entries out (torch.nanmean) or guard the division.")
    if _close(got, expected, atol, rtol):
        return None  # equal values: the problem is elsewhere (the dtype, say), and its own message says so
    in_float32 = got.dtype == torch.float64 and torch.equal(got, got.float().double())  # every value a float32
    if expected.dtype == torch.float64 and in_float32 and _close(got.double(), expected, 2e-5, 1e-4):
        err = (got.double() - expected).abs().max().item()
        return _said(f"Your float64 output is only as accurate as float32 (largest error {err:.2g}).",
                     "Somewhere your code computes in float32: a tensor made without dtype= (torch.tensor, "
                     "torch.arange, torch.ones, torch.zeros default to float32), or a .float(). Create new "
                     "tensors with dtype=x.dtype.")
    for test in (_scalar_relation, _shift, _one_axis_order):
        found = test(got, expected, atol, rtol)
        if found:
            return found
    if _same_entries(got, expected, atol, rtol):
        return _axis_order(got, expected, atol, rtol) or _said("Your output holds exactly the reference's values, but in other places.",
                     "An index computed in another order, or a reshape where a permute is needed.")
    return _places(got, expected, atol, rtol, case)


def _argument_ratio(got: Tensor, expected: Tensor, case: Mapping[str, Any]) -> str | None:
    """A single number that is the reference's times a ratio of two integer arguments (one used for another)."""
    ints = {k: v for k, v in case.items() if isinstance(v, int) and not isinstance(v, bool) and v > 1}
    g, e = float(got), float(expected)
    if not e or not g:
        return None
    for (a, x), (b, y) in itertools.permutations(ints.items(), 2):
        if max(x, y) % min(x, y) == 0 and max(x, y) // min(x, y) <= 4:
            continue  # a factor of 2, 3 or 4 has likelier causes (a 0.5, a sum for a mean) than this pair
        if abs(g / e - x / y) < 1e-9 * max(1.0, x / y):
            return _said(f"Your result is the reference's times {a}/{b} (= {x}/{y}): `{a}` is used where `{b}` "
                         "belongs.", f"Check which of `{a}` and `{b}` each factor of the formula needs.")
    return None


def _equal(got: Any, expected: Any, atol: float, rtol: float) -> bool:
    if isinstance(expected, (tuple, list)):
        return isinstance(got, (tuple, list)) and len(got) == len(expected) and \
            all(_equal(g, e, atol, rtol) for g, e in zip(got, expected))
    if isinstance(expected, Tensor):
        return isinstance(got, Tensor) and _close(got.detach().to(expected.dtype), expected.detach(), atol, rtol)
    if isinstance(expected, float):
        return isinstance(got, (int, float)) and abs(got - expected) <= atol + rtol * abs(expected)
    return got == expected


def argument_slip(got: Any, reference: Callable, case: Mapping[str, Any], atol: float, rtol: float,
                  expected: Any = None) -> str | None:
    """The reference called with one argument changed gives `got`: off by one, left at default, or swapped.

    For a tuple output, the items that differ from `expected` must match (the others may be right).
    """
    def matches(**changed: Any) -> bool:
        try:
            with torch.no_grad():
                args = {k: v.detach().clone() if isinstance(v, Tensor) else v for k, v in {**case, **changed}.items()}
                out = reference(**args)
        except Exception:  # noqa: BLE001 - a changed call that cannot run simply does not match
            return False
        if isinstance(out, (tuple, list)) and isinstance(got, (tuple, list)) and isinstance(expected, (tuple, list)) \
                and len(out) == len(got) == len(expected):
            wrong = [i for i in range(len(got)) if not _equal(got[i], expected[i], atol, rtol)]
            return bool(wrong) and all(_equal(got[i], out[i], atol, rtol) for i in wrong)
        return _equal(got, out, atol, rtol)

    for key, value in case.items():
        if isinstance(value, int) and not isinstance(value, bool):
            for delta in (1, -1):
                if matches(**{key: value + delta}):
                    return _said(f"Your output for {key}={value} is the reference's for {key}={value + delta}.",
                                 f"`{key}` is off by one: count from 0, and check whether the formula needs "
                                 f"{key} or {key} + 1 (a step counted after the update, a warm-up that ends one "
                                 "step early or late).")
    try:
        defaults = {k: p.default for k, p in inspect.signature(getattr(reference, "forward", reference)).parameters.items()
                    if p.default is not inspect.Parameter.empty}
    except (TypeError, ValueError):
        defaults = {}
    for key, value in case.items():
        if key in defaults and not _equal(value, defaults[key], 0, 0) and matches(**{key: defaults[key]}):
            return _said(f"Your output is what the reference gives with `{key}` left at its default "
                         f"({defaults[key]!r}), not {value!r}.",
                         f"Your code ignores the `{key}` argument (a hard-coded value where `{key}` belongs).")
    tensors = [k for k, v in case.items() if isinstance(v, Tensor)]
    sizes = sorted({case[k].shape[-1] for k in tensors if case[k].dim() and case[k].shape[-1] > 1})
    factors = [(2.0, "2"), (0.5, "1/2")] + [(f, text) for d in sizes for f, text in (
        (float(d), str(d)), (1 / d, f"1/{d}"), (d ** 0.5, f"sqrt({d})"), (d ** -0.5, f"1/sqrt({d})"))]
    for key in tensors:
        if case[key].is_floating_point():
            for factor, text in factors:
                if matches(**{key: case[key] * factor}):
                    return _said(f"Your output is the reference's with `{key}` multiplied by {text}.",
                                 "A scale is applied the wrong way round, twice or not at all: * where / belongs "
                                 "(q k^T / sqrt(d), not * sqrt(d)), or a size used in place of its square root.")
    for a, b in itertools.combinations(tensors, 2):
        if case[a].shape == case[b].shape and matches(**{a: case[b], b: case[a]}):
            return _said(f"Your output is the reference's with `{a}` and `{b}` swapped.",
                         f"Check which of `{a}` and `{b}` goes where in the formula.")
    return None


def _features(case: Mapping[str, Any]) -> dict[str, bool]:
    """Readable yes/no properties of a case, to tell the failing cases from the passing ones."""
    found: dict[str, bool] = {}
    tensors = {k: v for k, v in case.items() if isinstance(v, Tensor)}
    found["in float64"] = any(v.dtype == torch.float64 for v in tensors.values())
    found["in float32"] = not found["in float64"] and any(v.dtype == torch.float32 for v in tensors.values())
    for key, value in case.items():
        if value is None:
            found[f"`{key}` = None"] = True
        elif isinstance(value, Tensor):
            found[f"`{key}` given"] = True
            if value.dtype == torch.bool:
                found[f"a bool `{key}`"] = True
            elif value.is_floating_point() and key.endswith("mask"):
                found[f"a float (additive) `{key}`"] = True
            if value.dim() and 1 in value.shape:
                found[f"an axis of size 1 in `{key}`"] = True
            found[f"`{key}` with {value.dim()} axes"] = True
        elif isinstance(value, (bool, int, float, str)):
            found[f"{key}={value!r}"] = True
    q, k = tensors.get("q"), tensors.get("k")
    if q is not None and k is not None and q.dim() >= 2 and k.dim() >= 2:
        found["queries and keys of different lengths (Lq != Lk)"] = q.shape[-2] != k.shape[-2]
    return found


def failing_cases(cases: Sequence[Mapping[str, Any]], failed: Sequence[bool]) -> str | None:
    """One sentence naming what the failing cases have in common and the passing ones lack, or None."""
    if all(failed) or not any(failed) or len(cases) < 2:
        return None
    features = [_features(c) for c in cases]
    names = list(dict.fromkeys(k for f in features for k in f))
    numbers = [i + 1 for i, bad in enumerate(failed) if bad]
    which = (f"only case {numbers[0]} of {len(cases)} fails" if len(numbers) == 1
             else f"cases {', '.join(map(str, numbers))} of {len(cases)} fail")
    for name in names:
        has = [f.get(name, False) for f in features]
        if has == list(failed):
            return f"All other cases pass: {which}, {'the one' if len(numbers) == 1 else 'those'} with {name}."
    return f"All other cases pass: {which}."


def explain(name: str, problem: str, where: str, got: Any, expected: Any, case: Mapping[str, Any], *,
            atol: float, rtol: float, reference: Callable | None = None,
            outcomes: Callable[[], tuple[Sequence[Mapping[str, Any]], list[bool]]] | None = None) -> str:
    """The failure message of a check when no known mistake matched: what relates the output to the
    reference's (else the bare `problem`), where, and which cases of the set fail.

    `outcomes()` returns the check's cases and whether each fails; it is only called when needed.
    """
    try:
        found = relation(got, expected, atol, rtol, case)
        if found is None and reference is not None:
            found = argument_slip(got, reference, case, atol, rtol, expected)
    except Exception:  # noqa: BLE001 - a diagnosis is a bonus; never hide the failure itself
        found = None
    lines = [f"{name}: {found or problem}", f"  on {where}"]
    if outcomes is not None:
        try:
            pattern = failing_cases(*outcomes())
        except Exception:  # noqa: BLE001 - the pattern is a bonus; never hide the failure itself
            pattern = None
        if pattern:
            lines.append(f"  {pattern}")
    return "\n".join(lines)
