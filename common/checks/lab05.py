"""Checkers of lab 05 (Ordering): the share of the weights a gradient reaches, and the straight-through
estimator that quantization-aware training rests on. The references are computed here, from the
model in front of the learner; the lab's own namespace holds neither."""
import torch
import torch.nn.functional as F

from . import ExerciseFailed, check, check_close, not_solved


# ---------------------------------------------------------------------------------------------
# Exercise: where can a gradient still go?
# ---------------------------------------------------------------------------------------------
def _weight_count(model) -> int:
    """Every weight: the parameters (the tied embedding once) and the codes packed layers store."""
    from ..quant.qlinear import QuantLinear
    return sum(p.numel() for p in model.parameters()) + sum(
        m.in_features * m.out_features for m in model.modules() if isinstance(m, QuantLinear))


def _gradient_reach(model, ids) -> float:
    """The share of the weights that one backward pass of the language-model loss on `ids` gives a
    non-zero gradient (packed codes are buffers: they never get one)."""
    was_training = model.training
    model.zero_grad(set_to_none=True)
    model.train()
    model(ids, labels=ids).loss.backward()
    reached = sum(int((p.grad != 0).sum()) for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return reached / _weight_count(model)


def check_gradient_reach(gradient_reach, packed_model, ids):
    """`gradient_reach(model, ids)` on the packed NF4 model, against the reference computed here. The
    packed model is the telling case: on an uncompressed model every weight is a parameter, and an
    answer that forgets the packed codes (or counts their bytes) would still come out right."""
    name = "share of the weights a gradient reaches"
    hint = ("one backward pass of model(ids, labels=ids).loss; count the elements of model.parameters() whose "
            ".grad is non-zero, and divide by every weight: the parameters plus in_features x out_features of "
            "each QuantLinear (its 4-bit codes are buffers, two to a byte: count weights, not bytes).")
    expected = _gradient_reach(packed_model, ids)
    try:
        answer = gradient_reach(packed_model, ids)
    except NotImplementedError:
        return not_solved(name, _gradient_reach)
    finally:
        packed_model.zero_grad(set_to_none=True)
    check_close(f"{name}, packed NF4 model", answer, expected, 1e-6, hint)
    return gradient_reach


# ---------------------------------------------------------------------------------------------
# Exercise: the straight-through estimator
# ---------------------------------------------------------------------------------------------
def _nf4_round(weight: torch.Tensor) -> torch.Tensor:
    from ..quant.formats import fake_quant_nf4
    return fake_quant_nf4(weight, 64)


def _straight_through(weight: torch.Tensor) -> torch.Tensor:
    """The NF4-rounded weight in the forward pass; the identity in the backward pass."""
    return weight + (_nf4_round(weight) - weight).detach()


def _close(a: torch.Tensor, b: torch.Tensor, rel: float) -> bool:
    return bool((a - b).abs().max() <= rel * b.abs().max())


def check_straight_through(straight_through, layer, x):
    """`straight_through(weight)` on a real linear `layer` and inputs `x` [tokens, in_features]: the
    layer's output must be the NF4-rounded layer's, and the loss's gradient must reach the float
    weight unchanged (what the rounded weight would get), for the loss of matching the float layer."""
    name = "the straight-through estimator"
    hint = ("the value must be nf4_round(weight), but autograd must see only weight: add to weight the "
            "rounding's correction nf4_round(weight) - weight taken out of the graph (.detach()); the "
            "gradient of weight + constant is the identity.")
    weight = layer.weight.detach().float()
    x = x.float()
    target = F.linear(x, weight)                 # the float layer's output
    rounded = _nf4_round(weight).requires_grad_()
    (F.linear(x, rounded) - target).square().mean().backward()
    w = weight.clone().requires_grad_()
    try:
        used = straight_through(w)
    except NotImplementedError:
        return not_solved(name, _straight_through)
    if not isinstance(used, torch.Tensor) or used.shape != weight.shape:
        raise ExerciseFailed(f"{name}: return a tensor shaped like the weight {tuple(weight.shape)}. Hint: {hint}")
    out = F.linear(x, used)
    check(f"{name}: the forward pass computes with the NF4-rounded weight",
          _close(out, F.linear(x, rounded.detach()), 1e-5), hint)
    if out.requires_grad:    # else the rounded weight left the graph: no gradient reaches the float weight
        (out - target).square().mean().backward()
    check(f"{name}: the loss's gradient reaches the float weight", w.grad is not None and bool(w.grad.abs().sum() > 0),
          hint)
    check(f"{name}: the float weight gets the rounded weight's gradient, unchanged (the identity backward)",
          _close(w.grad, rounded.grad, 1e-4), hint)
    return straight_through
