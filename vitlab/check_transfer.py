"""Checks for the exercises of 06_transfer_and_scale: each compares the learner's code with `vitlab.transfer`,
`vitlab.peft` or `vitlab.parallel`, or with an independent truth (the full-batch gradient, the unsplit MLP).

Visible checks use `seed=0`; graded checks pass another seed and `graded=True`, which adds float64, other
shapes, depths, ranks and world sizes, frozen parameters and average pooling.
"""
from __future__ import annotations

import copy
import math
import threading
from unittest import mock

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vitlab import parallel, peft, transfer
from vitlab.attention import MultiHeadAttention
from vitlab.check import (CheckFailed, Mistake, PASS, call_learner, check_function, check_module, describe, forbid,
                          randn, tolerance)
from vitlab.check import exercise_check
from vitlab.vit import VisionTransformer


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Generic random values for every parameter (zero-initialised ones included, so that mistakes show)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(randn(gen, *p.shape, dtype=p.dtype) / math.sqrt(p[0].numel() if p.ndim > 1 else 4))
    return module


# --------------------------------------------------------------------------------- layer-wise lr decay


def _groups_variant(reverse=False, blocks_from_zero=False, head_in_last_block=False, norm_in_last_block=False,
                    norm_in_stem=False,
                    decay_on_1d=False, decay_on_tokens=False, frozen_too=False, no_stem_layer=False):
    """layer_decay_groups wrong in the ways the keyword arguments say (one group per parameter)."""

    def groups(model, lr, weight_decay, layer_decay):
        depth = len(model.blocks)
        out = []
        for name, p in model.named_parameters():
            if not p.requires_grad and not frozen_too:
                continue
            layer = transfer.layer_id(name, depth)
            if blocks_from_zero and name.startswith("blocks."):
                layer -= 1
            if head_in_last_block and layer == depth + 1:
                layer = depth
            if norm_in_last_block and name.startswith(("norm.", "fc_norm.")):
                layer = depth
            if norm_in_stem and layer == depth + 1 and "norm" in name:
                layer = 0
            if no_stem_layer and layer == 0:
                layer = 1
            scale = layer_decay ** layer if reverse else layer_decay ** (depth + 1 - layer)
            decay = (p.ndim > 1 or decay_on_1d) and (name not in transfer.NO_DECAY_NAMES or decay_on_tokens)
            out.append({"params": [p], "lr": lr * scale, "weight_decay": weight_decay if decay else 0.0})
        return out

    return groups


GROUP_MISTAKES = [
    Mistake("decayed the learning rate the wrong way round (the stem learns fastest)",
            "The head (layer L + 1) trains at the full lr; each layer below it is layer_decay times slower: "
            "lr * layer_decay ** (L + 1 - layer_id).", _groups_variant(reverse=True)),
    Mistake("numbered the blocks from 0, so block 0 shares the stem's layer",
            "Layer 0 is the stem (patch_embed, cls_token, pos_embed); block i is layer i + 1.",
            _groups_variant(blocks_from_zero=True)),
    Mistake("put the final norm and the head in the last block's layer",
            "BEiT's convention gives what comes after the blocks (norm, fc_norm, head) a layer of its own, L + 1, "
            "trained at the full lr.", _groups_variant(head_in_last_block=True)),
    Mistake("put the final norm in the last block's layer (timm 1.0 does that for `norm`)",
            "This course follows BEiT: what comes after the blocks (norm, fc_norm, head) is layer L + 1, trained at "
            "the full lr. timm's param_groups_layer_decay groups `norm` with the last block instead; both train, but "
            "the check wants BEiT's.", _groups_variant(norm_in_last_block=True)),
    Mistake("put the final norm in the stem's layer",
            "`norm` and `fc_norm` come after the last block: layer L + 1, with the head.",
            _groups_variant(norm_in_stem=True)),
    Mistake("gave the stem the first block's layer",
            "patch_embed, cls_token and pos_embed are layer 0, below block 0 (layer 1).",
            _groups_variant(no_stem_layer=True)),
    Mistake("applied weight decay to biases and LayerNorm weights",
            "1-D parameters (every bias, every norm's weight) get weight_decay 0.0: decaying a norm's scale towards "
            "0 or a bias towards 0 is not a useful prior.", _groups_variant(decay_on_1d=True)),
    Mistake("applied weight decay to cls_token and pos_embed",
            "cls_token and pos_embed are learned embeddings, not weights of a map: timm's no_weight_decay() lists "
            "them, and they get weight_decay 0.0 although they are 3-D.", _groups_variant(decay_on_tokens=True)),
    Mistake("put frozen parameters into the groups",
            "Skip parameters with requires_grad=False: the optimizer should not hold them.",
            _groups_variant(frozen_too=True)),
]


def _assignment(model: nn.Module, groups, name: str) -> dict[str, tuple[float, float]]:
    """{parameter name: (lr, weight_decay)} from a list of AdamW groups, or CheckFailed saying what is malformed."""
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, dict) for g in groups):
        raise CheckFailed(f"{name} should return a list of dicts (AdamW parameter groups), got {describe(groups)}")
    names = {id(p): n for n, p in model.named_parameters()}
    found: dict[str, tuple[float, float]] = {}
    for g in groups:
        missing = [k for k in ("params", "lr", "weight_decay") if k not in g]
        if missing:
            raise CheckFailed(f"{name}: every group needs 'params', 'lr' and 'weight_decay'; one lacks {missing}")
        for p in g["params"]:
            if id(p) not in names:
                raise CheckFailed(f"{name}: a group holds a tensor that is not a parameter of the model")
            if names[id(p)] in found:
                raise CheckFailed(f"{name}: `{names[id(p)]}` is in two groups; each parameter belongs to one")
            found[names[id(p)]] = (float(g["lr"]), float(g["weight_decay"]))
    return found


def _same_assignment(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(math.isclose(a[k][0], b[k][0], rel_tol=1e-9) and a[k][1] == b[k][1]
                                        for k in a)


def _group_cases(graded: bool) -> list[tuple[dict, dict, tuple[str, ...]]]:
    """(ViT config, optimiser settings, frozen name prefixes)."""
    small = dict(img_size=16, patch_size=4, in_chans=3, num_classes=5, embed_dim=16, num_heads=2)
    cases = [(dict(small, depth=3), dict(lr=1e-3, weight_decay=0.05, layer_decay=0.75), ())]
    if graded:
        cases += [(dict(small, depth=5, global_pool="avg"), dict(lr=3e-4, weight_decay=0.1, layer_decay=0.65), ()),
                  (dict(small, depth=2), dict(lr=2e-3, weight_decay=0.02, layer_decay=0.9),
                   ("patch_embed", "cls_token", "blocks.0."))]
    return cases


@exercise_check
def layer_decay_groups(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `layer_decay_groups(model, lr, weight_decay, layer_decay)` on ViTs of a few depths: each trainable
    parameter's lr and weight decay must be BEiT's (timm's `param_groups_layer_decay` with a CLS-pooled ViT)."""
    name = "layer_decay_groups"
    for config, settings, frozen in _group_cases(graded):
        torch.manual_seed(seed)
        model = VisionTransformer(**config)
        for n, p in model.named_parameters():
            p.requires_grad_(not n.startswith(frozen) if frozen else True)
        where = (f"a ViT of depth {config['depth']}{' with average pooling' if 'global_pool' in config else ''}"
                 f"{', ' + ', '.join(frozen) + ' frozen' if frozen else ''}; "
                 + ", ".join(f"{k}={v}" for k, v in settings.items()))
        with forbid({transfer.layer_decay_groups: "vitlab.transfer.layer_decay_groups"}) as called:
            got = call_learner(name, fn, dict(model=model, **settings), where)
        if called:
            raise CheckFailed(f"{name}: your code calls {' and '.join(called)}, the very thing this exercise asks "
                              "you to write.\nA graded check gives zero for this exercise when it does.")
        mine = _assignment(model, got, name)
        truth = _assignment(model, transfer.layer_decay_groups(model, **settings), "the reference")
        if _same_assignment(mine, truth):
            continue
        for mistake in GROUP_MISTAKES:
            if _same_assignment(mine, _assignment(model, mistake.impl(model, **settings), mistake.label)):
                raise CheckFailed(f"{name}: looks like you {mistake.label}.\n  {mistake.hint}")
        lost = [k for k in truth if k not in mine]
        if lost:
            raise CheckFailed(f"{name}: trainable parameters missing from the groups: {', '.join(lost[:4])}\n"
                              f"  on {where}")
        extra = [k for k in mine if k not in truth]
        if extra:
            raise CheckFailed(f"{name}: the groups hold parameters that should not be there: {', '.join(extra[:4])}")
        wrong = next(k for k in truth if not _same_assignment({k: mine[k]}, {k: truth[k]}))
        raise CheckFailed(f"{name}: `{wrong}` gets lr {mine[wrong][0]:.4g} and weight_decay {mine[wrong][1]:g}, "
                          f"expected lr {truth[wrong][0]:.4g} and weight_decay {truth[wrong][1]:g}\n  on {where}")
    print(f"{PASS} {name}: every parameter's lr and weight decay are BEiT's on {len(_group_cases(graded))} "
          f"model{'s' * graded}.")


# ---------------------------------------------------------------------------------------------- LoRA


class _WrongLoRA(peft.LoRALinear):
    """The reference LoRALinear with its update scaled wrongly."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, scaling: float):
        super().__init__(base, r, alpha)
        self.scaling = scaling


def _lora_mistakes(base: nn.Linear, r: int, alpha: float) -> list[Mistake]:
    wrong = [("scaled the update by alpha instead of alpha / r", alpha),
             ("left out the scaling alpha / r", 1.0),
             ("scaled the update by r / alpha instead of alpha / r", r / alpha)]
    return [Mistake(label, "The update is (alpha / r) * B A x: with x of shape (..., in), "
                           "x @ A.T @ B.T * (alpha / r).", _WrongLoRA(copy.deepcopy(base), r, alpha, s))
            for label, s in wrong if not math.isclose(s, alpha / r)]


def _lora_structure(module: nn.Module, base: nn.Linear, r: int, name: str) -> None:
    """Name the mistakes visible before any forward pass: shapes, initialisation, what is frozen."""
    params = dict(module.named_parameters())
    for key, shape in [("lora_A", (r, base.in_features)), ("lora_B", (base.out_features, r))]:
        if key not in params:
            raise CheckFailed(f"{name}: there is no parameter `{key}`; make it an nn.Parameter of shape {shape}.")
        if tuple(params[key].shape) != shape:
            raise CheckFailed(f"{name}: `{key}` has shape {tuple(params[key].shape)}, expected {shape} "
                              "(A maps in -> r, B maps r -> out).")
    if not torch.all(params["lora_B"] == 0):
        raise CheckFailed(f"{name}: looks like you initialised B randomly.\n  B starts at zero (nn.init.zeros_), so "
                          "that the wrapped layer starts as exactly the pretrained one; A is the random one.")
    if torch.all(params["lora_A"] == 0):
        raise CheckFailed(f"{name}: looks like you initialised A (and B) at zero.\n  With both at zero the gradient "
                          "of each is zero too, and LoRA never learns: A starts random (Kaiming-uniform, as "
                          "nn.Linear), B at zero.")
    trainable = [k for k, p in params.items() if p.requires_grad and k.startswith("base.")]
    if trainable:
        raise CheckFailed(f"{name}: looks like you left the pretrained weights trainable ({', '.join(trainable)}).\n"
                          "  Freeze the base layer: base.requires_grad_(False); only lora_A and lora_B learn.")
    if not (params["lora_A"].requires_grad and params["lora_B"].requires_grad):
        raise CheckFailed(f"{name}: lora_A and lora_B must be trainable (requires_grad=True).")


@exercise_check
def lora_linear(cls, *, seed: int = 0, graded: bool = False) -> None:
    """Check a learner's `LoRALinear(base, r, alpha)`: frozen base, B = 0 at the start, outputs and gradients with
    the reference's weights (B random), and `merge()` giving one nn.Linear with the same outputs."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    configs = [(12, 10, 4, 8.0, True)]
    if graded:
        configs += [(7, 5, 2, 3.0, False), (16, 24, 8, 8.0, True), (6, 6, 1, 1.0, True)]
    forbidden = {peft.LoRALinear: "vitlab.peft.LoRALinear"}
    for fin, fout, r, alpha, bias in configs:
        name = f"LoRALinear(nn.Linear({fin}, {fout}{', bias=False' if not bias else ''}), r={r}, alpha={alpha:g})"
        torch.manual_seed(seed + fin)
        base = nn.Linear(fin, fout, bias=bias)
        with forbid(forbidden) as called:
            module = call_learner(name, lambda: cls(copy.deepcopy(base), r=r, alpha=alpha), {}, "construction")
        base = base.to(dt)
        if called:
            raise CheckFailed(f"{name}: your code calls {' and '.join(called)}, the very thing this exercise asks "
                              "you to write.\nA graded check gives zero for this exercise when it does.")
        if not isinstance(module, nn.Module):
            raise CheckFailed(f"{name} should build an nn.Module, got {describe(module)}")
        module = module.to(dt)
        _lora_structure(module, base, r, name)
        x = randn(gen, 3, 4, fin, dtype=dt)
        with torch.no_grad():
            start = call_learner(name, module, {"x": x}, "the input (3, 4, in) at initialisation")
            if not torch.allclose(start, base(x), **tolerance(dt)):
                raise CheckFailed(f"{name}: with B = 0 the output should equal base(x), and it does not.\n  The "
                                  "forward pass is base(x) + (alpha / r) * x @ A.T @ B.T.")
        reference = peft.LoRALinear(copy.deepcopy(base), r, alpha)
        with torch.no_grad():
            reference.lora_B.copy_(randn(gen, fout, r, dtype=dt) * 0.3)
        inputs = [dict(x=x), dict(x=randn(gen, 5, fin, dtype=dt) * 2)]
        check_module(lambda: module, reference, inputs, name=name, mistakes=_lora_mistakes(reference.base, r, alpha),
                     forbidden=forbidden, **tolerance(dt))
        _check_merge(module, reference, inputs, name, dt)
    print(f"{PASS} LoRALinear: frozen base, B = 0 at the start, merge() exact, on {len(configs)} "
          f"configuration{'s' * (len(configs) > 1)}.")


def _check_merge(module: nn.Module, reference: peft.LoRALinear, inputs: list[dict], name: str,
                 dt: torch.dtype) -> None:
    x = inputs[1]["x"]
    with torch.no_grad():
        before = module(x)
        merged = call_learner(f"{name}.merge", module.merge, {}, "merge()")
        if not isinstance(merged, nn.Linear):
            raise CheckFailed(f"{name}.merge() should return an nn.Linear, got {describe(merged)}")
        if not torch.allclose(module(x), before, **tolerance(dt)):
            raise CheckFailed(f"{name}.merge() changed the LoRA layer itself: build a new nn.Linear and leave "
                              "`base`, A and B as they were.")
        got = merged(x)
        if torch.allclose(got, before, **tolerance(dt)):
            return
        base = reference.base
        if torch.allclose(got, base(x) + x @ (reference.lora_B @ reference.lora_A).T, **tolerance(dt)):
            raise CheckFailed(f"{name}.merge(): looks like you forgot the scaling alpha / r in the merged weight.\n"
                              "  The merged weight is W0 + (alpha / r) * B @ A.")
        if base.bias is not None and torch.allclose(got, before - base.bias, **tolerance(dt)):
            raise CheckFailed(f"{name}.merge(): looks like you forgot to copy the bias.\n  The merged Linear keeps "
                              "the base layer's bias unchanged.")
        raise CheckFailed(f"{name}.merge(): the merged Linear's outputs differ from the LoRA layer's by up to "
                          f"{(got - before).abs().max().item():.3g}.\n  Its weight is W0 + (alpha / r) * B @ A "
                          "(shape (out, in)), its bias the base's.")


# ------------------------------------------------------------------------------------------ prefix K/V


class _WrongPrefix(peft.PrefixAttention):
    """The reference PrefixAttention with one known mistake."""

    def __init__(self, attn: MultiHeadAttention, length: int, mistake: str):
        super().__init__(attn, length)
        self.mistake = mistake

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        heads, hd = self.attn.num_heads, self.attn.head_dim
        q, k, v = self.attn.qkv(x).reshape(b, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
        pk, pv = {"swapped": (self.prefix_v, self.prefix_k), "keys_twice": (self.prefix_k, self.prefix_k),
                  "values_twice": (self.prefix_v, self.prefix_v)}.get(self.mistake, (self.prefix_k, self.prefix_v))
        if self.mistake == "projected":
            w_k, w_v = self.attn.qkv.weight[dim:2 * dim], self.attn.qkv.weight[2 * dim:]
            b_k, b_v = (self.attn.qkv.bias[dim:2 * dim], self.attn.qkv.bias[2 * dim:]) if self.attn.qkv.bias is not None \
                else (None, None)
            pk, pv = F.linear(pk, w_k, b_k), F.linear(pv, w_v, b_v)

        def split(p):
            if self.mistake == "heads_major":
                return p.reshape(heads, -1, hd).expand(b, -1, -1, -1)
            return p.reshape(-1, heads, hd).transpose(0, 1).expand(b, -1, -1, -1)

        k, v = torch.cat([split(pk), k], dim=2), torch.cat([split(pv), v], dim=2)
        scale = 1.0 if self.mistake == "no_scale" else None
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        return self.attn.proj(out.transpose(1, 2).reshape(b, n, dim))


PREFIX_MISTAKES = [
    ("split the prefix into heads the wrong way (reshape(heads, length, head_dim))", "heads_major",
     "Split the prefix exactly as the tokens' keys are split: row j of prefix_k (dim,) is one key, cut into heads "
     "of head_dim features: prefix_k.reshape(length, heads, head_dim).transpose(0, 1)."),
    ("swapped the prefix keys and values", "swapped",
     "prefix_k goes in front of the keys, prefix_v in front of the values."),
    ("put the same prefix in front of the keys and the values", "keys_twice",
     "prefix_k goes in front of the keys, prefix_v (not prefix_k again) in front of the values."),
    ("put the same prefix in front of the keys and the values", "values_twice",
     "prefix_k (not prefix_v again) goes in front of the keys, prefix_v in front of the values."),
    ("sent the prefix through the qkv projection (that is prompt tuning, not prefix tuning)", "projected",
     "In prefix tuning the learned vectors ARE keys and values: concatenate them after the projection, "
     "without applying qkv to them."),
    ("forgot the 1 / sqrt(head_dim) scaling", "no_scale",
     "Scores are q . k / sqrt(head_dim); F.scaled_dot_product_attention applies it for you."),
]


@exercise_check
def prefix_attention(cls, *, seed: int = 0, graded: bool = False) -> None:
    """Check a learner's `PrefixAttention(attn, length)` with the reference's weights: the wrapped attention frozen,
    prefix_k and prefix_v of shape (length, dim), outputs (B, N, dim) and the prefixes' gradients."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32
    configs = [(32, 4, 3)] + ([(24, 3, 5), (16, 1, 1)] if graded else [])
    for dim, heads, length in configs:
        name = f"PrefixAttention(MultiHeadAttention({dim}, {heads}), length={length})"
        torch.manual_seed(seed)
        attn = _randomise(MultiHeadAttention(dim, heads), seed)
        module = call_learner(name, lambda: cls(copy.deepcopy(attn), length=length), {}, "construction")
        if not isinstance(module, nn.Module):
            raise CheckFailed(f"{name} should build an nn.Module, got {describe(module)}")
        module, attn = module.to(dt), attn.to(dt)
        params = dict(module.named_parameters())
        for key in ("prefix_k", "prefix_v"):
            if key not in params or tuple(params[key].shape) != (length, dim):
                raise CheckFailed(f"{name}: expected a parameter `{key}` of shape ({length}, {dim}), got "
                                  f"{describe(params[key]) if key in params else 'none'}.")
        trainable = [k for k, p in params.items() if p.requires_grad and k.startswith("attn.")]
        if trainable:
            raise CheckFailed(f"{name}: looks like you left the pretrained attention trainable ({trainable[0]}, ...)."
                              "\n  Freeze it: attn.requires_grad_(False); only prefix_k and prefix_v learn.")
        reference = peft.PrefixAttention(copy.deepcopy(attn), length)
        with torch.no_grad():
            reference.prefix_k.copy_(randn(gen, length, dim, dtype=dt))
            reference.prefix_v.copy_(randn(gen, length, dim, dtype=dt))
        mistakes = []
        for label, key, hint in PREFIX_MISTAKES:
            wrong = _WrongPrefix(copy.deepcopy(attn), length, key)
            wrong.load_state_dict(reference.state_dict())
            mistakes.append(Mistake(label, hint, wrong))
        inputs = [dict(x=randn(gen, 2, 5, dim, dtype=dt))]
        if graded:
            inputs += [dict(x=randn(gen, 1, 1, dim, dtype=dt) * 3), dict(x=randn(gen, 3, 9, dim, dtype=dt) * 0.5)]
        check_module(lambda: module, reference, inputs, name=name, mistakes=mistakes,
                     forbidden={peft.PrefixAttention: "vitlab.peft.PrefixAttention"}, **tolerance(dt))


# -------------------------------------------------------------------------------- gradient averaging


class _SimulatedWorld:
    """torch.distributed's all_reduce, get_world_size and get_rank for `size` ranks played by threads."""

    def __init__(self, size: int):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=10)
        self.slots: list[torch.Tensor | None] = [None] * size
        self.local = threading.local()

    def get_rank(self, group=None) -> int:
        return self.local.rank

    def get_world_size(self, group=None) -> int:
        return self.size

    def all_reduce(self, tensor, op=dist.ReduceOp.SUM, group=None, async_op=False):
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"all_reduce needs a tensor, got {describe(tensor)} (a frozen parameter's .grad is None: "
                            "skip those)")
        self.slots[self.local.rank] = tensor.detach().clone()
        self.barrier.wait()
        stacked = torch.stack(self.slots)
        reduce = {dist.ReduceOp.SUM: lambda t: t.sum(0), dist.ReduceOp.AVG: lambda t: t.mean(0),
                  dist.ReduceOp.MAX: lambda t: t.amax(0), dist.ReduceOp.MIN: lambda t: t.amin(0),
                  dist.ReduceOp.PRODUCT: lambda t: t.prod(0)}
        result = next(f for key, f in reduce.items() if op == key)(stacked)
        self.barrier.wait()  # everyone has read the slots before anyone writes the next call's
        with torch.no_grad():
            tensor.copy_(result)
        return _Done() if async_op else None

    def run(self, fn, replicas: list[nn.Module], name: str, forbidden: dict) -> None:
        """fn(replica) on every rank at once (rank 0 in this thread, under `forbid`); errors become CheckFailed."""
        errors: list[BaseException | None] = [None] * self.size

        def play(rank: int) -> None:
            self.local.rank = rank
            try:
                fn(replicas[rank])
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors[rank] = exc
                self.barrier.abort()

        threads = [threading.Thread(target=play, args=(r,), daemon=True) for r in range(1, self.size)]
        patched = dict(all_reduce=self.all_reduce, get_world_size=self.get_world_size, get_rank=self.get_rank,
                       is_initialized=lambda: True)
        with mock.patch.multiple(dist, **patched):
            for t in threads:
                t.start()
            self.local.rank = 0
            with forbid(forbidden) as called:
                try:
                    call_learner(name, fn, {"model": replicas[0]}, f"rank 0 of {self.size}")
                except CheckFailed as exc:
                    errors[0] = exc
                    self.barrier.abort()
            for t in threads:
                t.join(timeout=60)
        if called:
            raise CheckFailed(f"{name}: your code calls {' and '.join(called)}, the very thing this exercise asks "
                              "you to write.\nA graded check gives zero for this exercise when it does.")
        failures = [(rank, e) for rank, e in enumerate(errors) if e is not None and not _broken_barrier(e)]
        if failures:
            rank, error = failures[0]
            if isinstance(error, CheckFailed):
                raise error
            raise CheckFailed(f"{name} raised {type(error).__name__} on rank {rank}: {error}")
        if any(e is not None for e in errors) or any(t.is_alive() for t in threads):
            raise CheckFailed(f"{name}: the {self.size} ranks did not call all_reduce the same number of times, in the "
                              "same order.\n  Every rank must all-reduce the same tensors: loop over "
                              "model.parameters() and skip only those whose .grad is None.")


def _broken_barrier(error: BaseException) -> bool:
    """True for a rank that failed only because another rank left the collective."""
    return isinstance(error, threading.BrokenBarrierError) or isinstance(error.__context__, threading.BrokenBarrierError)


class _Done:
    def wait(self) -> bool:
        return True


def _averaging_cases(graded: bool) -> list[tuple[int, bool, torch.dtype]]:
    """(world size, a frozen parameter?, dtype)."""
    cases = [(2, False, torch.float32), (4, False, torch.float32)]
    if graded:
        cases = [(3, False, torch.float64), (2, True, torch.float64), (5, True, torch.float32)]
    return cases


@exercise_check
def average_gradients(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `average_gradients(model)` in simulated worlds of 2 to 5 ranks (threads stand in for processes):
    after it runs, every rank's gradients must equal the gradient of the loss on the whole batch."""
    name = "average_gradients"
    forbidden = {parallel.average_gradients: "vitlab.parallel.average_gradients",
                 nn.parallel.DistributedDataParallel: "DistributedDataParallel"}
    for world, frozen, dt in _averaging_cases(graded):
        gen = torch.Generator().manual_seed(seed + world)
        torch.manual_seed(seed + world)
        model = nn.Sequential(nn.Linear(6, 8), nn.GELU(), nn.Linear(8, 3)).to(dt)
        if frozen:
            model[0].bias.requires_grad_(False)
        x, y = randn(gen, 4 * world, 6, dtype=dt), torch.randint(0, 3, (4 * world,), generator=gen)
        full = copy.deepcopy(model)
        F.cross_entropy(full(x), y).backward()
        expected = [p.grad for p in full.parameters()]
        replicas = [copy.deepcopy(model) for _ in range(world)]
        for rank, replica in enumerate(replicas):
            F.cross_entropy(replica(parallel.shard(x, rank, world)), parallel.shard(y, rank, world)).backward()
        local = [[None if p.grad is None else p.grad.clone() for p in r.parameters()] for r in replicas]
        _SimulatedWorld(world).run(fn, replicas, name, forbidden)
        where = f"a world of {world} ranks, {dt}".replace("torch.", "") + (", one frozen parameter" if frozen else "")
        _compare_averages(name, replicas, expected, local, world, where, tolerance(dt))
    print(f"{PASS} {name}: every rank holds the full-batch gradient, in simulated worlds of "
          f"{', '.join(str(w) for w, _, _ in _averaging_cases(graded))} ranks.")


def _compare_averages(name, replicas, expected, local, world, where, tol) -> None:
    names = [n for n, _ in replicas[0].named_parameters()]
    total = [None if g is None else sum(l[i] for l in local) for i, g in enumerate(expected)]
    for rank, replica in enumerate(replicas):
        for i, (p, want) in enumerate(zip(replica.parameters(), expected)):
            if want is None:
                if p.grad is not None:
                    raise CheckFailed(f"{name}: `{names[i]}` is frozen (no gradient) but has one afterwards.")
                continue
            if p.grad is None:
                raise CheckFailed(f"{name}: `{names[i]}` has no gradient any more on rank {rank}.")
            if torch.allclose(p.grad, want, **tol):
                continue
            same = lambda other: torch.allclose(p.grad, other, **tol)  # noqa: E731
            if same(total[i]):
                raise CheckFailed(f"{name}: looks like you summed the gradients without dividing by the world size.\n"
                                  "  all_reduce with ReduceOp.SUM leaves the sum on every rank; divide it by "
                                  "dist.get_world_size() to get the mean, which is the full-batch gradient.")
            if same(local[rank][i]):
                raise CheckFailed(f"{name}: looks like you did not all-reduce `{names[i]}`: rank {rank} still holds "
                                  "its own shard's gradient.\n  Call dist.all_reduce(p.grad) on every parameter "
                                  "that has a gradient (all_reduce changes the tensor in place).")
            if same(total[i] / world ** 2):
                raise CheckFailed(f"{name}: looks like you divided by the world size twice.\n  Divide the summed "
                                  "gradient by dist.get_world_size() once.")
            if same(local[rank][i] / world):
                raise CheckFailed(f"{name}: looks like you divided each rank's gradient by the world size but never "
                                  "added them up.\n  dist.all_reduce(p.grad) sums over the ranks in place.")
            raise CheckFailed(f"{name}: after averaging, `{names[i]}` on rank {rank} differs from the full-batch "
                              f"gradient by up to {(p.grad - want).abs().max().item():.3g}\n  on {where}")


# --------------------------------------------------------------------------------- tensor parallelism


def _tp_variant(mistake: str):
    def wrong(x, w1, b1, w2, b2, parts):
        if mistake == "strided":
            pieces = zip([w1[i::parts] for i in range(parts)], [b1[i::parts] for i in range(parts)],
                         w2.chunk(parts, 1))
        else:
            pieces = zip(w1.chunk(parts, 0), b1.chunk(parts, 0), w2.chunk(parts, 1))
        act = {"no_gelu": lambda h: h, "tanh": lambda h: F.gelu(h, approximate="tanh")}.get(mistake, F.gelu)
        partials = torch.stack([act(F.linear(x, a, b)) @ c.T + (b2 if mistake == "bias_each" else 0)
                                for a, b, c in pieces])
        if mistake == "bias_times_parts":
            return partials.sum(0) + parts * b2, partials
        return partials.sum(0) + (0 if mistake == "bias_each" else b2), partials
    return wrong


TP_MISTAKES = [
    Mistake("added fc2's bias on every device", "Each device holds a partial sum of fc2's output; b2 is added once, "
            "after the partials are summed (the all-reduce), or it counts `parts` times.", _tp_variant("bias_each")),
    Mistake("added fc2's bias `parts` times to the sum", "b2 is added once, after the partials are summed: "
            "partials.sum(0) + b2.", _tp_variant("bias_times_parts")),
    Mistake("left out the GELU", "Each device applies GELU to its own hidden units before its slice of fc2: "
            "GELU acts on each unit alone, which is why the column split needs no communication.",
            _tp_variant("no_gelu")),
    Mistake("used the tanh approximation of GELU", "ViT's MLP uses the exact GELU: F.gelu(h).", _tp_variant("tanh")),
    Mistake("gave fc1 and fc2 different hidden units on the same device (a strided split of fc1)",
            "Device i must hold the same hidden units in both layers: rows [i H/parts, (i+1) H/parts) of w1 and b1, "
            "and the same columns of w2 (.chunk(parts, dim=0) and .chunk(parts, dim=1)).", _tp_variant("strided")),
]


@exercise_check
def tensor_parallel_mlp(fn, *, seed: int = 0, graded: bool = False) -> None:
    """Check `tensor_parallel_mlp(x, w1, b1, w2, b2, parts) -> (output, partials)` against the reference split;
    its output against the unsplit MLP fc2(GELU(fc1(x))) too."""
    gen = torch.Generator().manual_seed(seed)
    dt = torch.float64 if graded else torch.float32

    def case(lead, d, hidden, out, parts):
        return dict(x=randn(gen, *lead, d, dtype=dt), w1=randn(gen, hidden, d, dtype=dt) / math.sqrt(d),
                    b1=randn(gen, hidden, dtype=dt) * 0.3, w2=randn(gen, out, hidden, dtype=dt) / math.sqrt(hidden),
                    b2=randn(gen, out, dtype=dt) * 0.3, parts=parts)

    cases = [case((4,), 8, 16, 8, 2), case((2, 3), 6, 12, 5, 4)]
    if graded:
        cases += [case((5,), 4, 12, 3, 3), case((1, 2, 2), 5, 8, 5, 1), case((3,), 8, 32, 8, 8)]
    for c in cases:  # the reference itself against the unsplit MLP
        full = F.linear(F.gelu(F.linear(c["x"], c["w1"], c["b1"])), c["w2"], c["b2"])
        assert torch.allclose(parallel.tensor_parallel_mlp(**c)[0], full, **tolerance(dt))
    check_function(fn, parallel.tensor_parallel_mlp, cases, name="tensor_parallel_mlp", mistakes=TP_MISTAKES,
                   forbidden={parallel.tensor_parallel_mlp: "vitlab.parallel.tensor_parallel_mlp"}, **tolerance(dt))
