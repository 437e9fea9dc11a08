"""Checkers of lab 02 (Post-training quantization).

Each exercise is checked on a real layer of the embedded model, against a reference computed here
(from common.quant, imported privately): GPTQ's column loop by its layer's output error on held-out
inputs, AWQ's salient-channel protection by its weights, AWQ's scale search by its output error.
"""
import torch

from . import check, not_solved


def _call(function, *args, **kwargs):
    """function(*args, **kwargs), or NotImplemented while the exercise still raises NotImplementedError."""
    try:
        return function(*args, **kwargs)
    except NotImplementedError:
        return NotImplemented


def check_gptq_layer(gptq_layer, weight: torch.Tensor, H: torch.Tensor, held_out: dict, bits: int,
                     group_size: int | None) -> torch.Tensor:
    """`gptq_layer(weight, H, bits, group_size)` must return a quantized weight (at most 2^bits values
    per row and group) whose relative output error on every held-out input set of `held_out`
    ({text: inputs [tokens, in]}) is below round-to-nearest's and within 5% of the library's GPTQ
    (same order of columns, same damping). Returns the learner's weight (the library's if unsolved)."""
    from ..quant.gptq import GPTQConfig, gptq_quantize_weight
    from ..calibration import relative_output_error
    from ..quant.layer_study import on_grid, rtn_weight
    name = f"GPTQ's column loop on one layer (W{bits}, {'per channel' if group_size is None else f'g{group_size}'})"
    reference = gptq_quantize_weight(weight, H, GPTQConfig(bits=bits, group_size=group_size, act_order=False))[0].float()
    answer = _call(gptq_layer, weight.clone(), H.clone(), bits, group_size)
    if answer is NotImplemented:
        return not_solved(name, reference, "(the library's GPTQ of this layer)")
    ok_shape = isinstance(answer, torch.Tensor) and answer.shape == weight.shape and bool(torch.isfinite(answer).all())
    check(f"{name}: a tensor of the weight's shape", ok_shape,
          f"return the quantized weight, a tensor [{weight.shape[0]}, {weight.shape[1]}] (Q, not W).")
    answer = answer.float()
    check(f"{name}: every value on the grid", on_grid(answer, bits, group_size),
          f"each column must be rounded to its group's {2 ** bits}-level grid (quantize_int, then dequantize_int); "
          "return those rounded columns, not the updated weights.")
    rtn = rtn_weight(weight, bits, group_size)
    lines = []
    for text, x in held_out.items():
        yours, library, nearest = (relative_output_error(x, weight, w) for w in (answer, reference, rtn))
        lines.append(f"{text}: yours {yours:.4f}, library {library:.4f}, RTN {nearest:.4f}")
        check(f"{name}: held-out output error on {text} below RTN's and close to the library's "
              f"(yours {yours:.4f}, library {library:.4f}, RTN {nearest:.4f})",
              yours < nearest and yours <= 1.05 * library,
              "after rounding column i, err = (W[:, i] - q) / U[i, i] and W[:, i:] -= outer(err, U[i, i:]) with U "
              "the upper Cholesky factor of the damped H's inverse (H + 0.01 * mean(diag H) * I); a group's grid "
              "comes from its columns as they are when the loop reaches its first column.")
    print("relative output error on held-out inputs: " + "; ".join(lines))
    return answer


def check_protect_salient(protect_salient, weight: torch.Tensor, act_mean: torch.Tensor, bits: int,
                          group_size: int | None):
    """`protect_salient(weight, act_mean, fraction, bits, group_size, scale=None)` must keep (scale None)
    or scale around rounding (a number) the input columns with the largest mean |x|, as the reference
    does. Returns the learner's function (the reference if unsolved)."""
    from ..quant import awq_steps
    name = "AWQ step by step: protect the salient input channels"
    for fraction, scale in ((0.01, None), (0.01, 2.0), (0.05, 4.0)):
        expected = awq_steps.protect_salient(weight, act_mean, fraction, bits, group_size, scale)
        answer = _call(protect_salient, weight.clone(), act_mean.clone(), fraction, bits, group_size, scale)
        if answer is NotImplemented:
            return not_solved(name, awq_steps.protect_salient)
        what = f"fraction {fraction}, " + ("kept" if scale is None else f"scaled by {scale:g}")
        ok = (isinstance(answer, torch.Tensor) and answer.shape == weight.shape
              and torch.allclose(answer.float(), expected, rtol=1e-4, atol=1e-6))
        check(f"{name} ({what})", ok,
              "choose k = max(1, round(fraction * in_features)) input channels (columns, dim 1) with the LARGEST "
              "act_mean (topk); scale None: round every column to nearest, then put those k columns back as they "
              "were; a scale: multiply those columns by it, round the whole weight to nearest, divide them by it again.")
    return protect_salient


def check_search_scale(search_scale, weights: list, x: torch.Tensor, bits: int, group_size: int | None):
    """`search_scale(weights, x, bits, group_size)` must return per-input-channel scales s whose quantized
    output error (of Q(W diag(s)) diag(s)^-1 on `x`) is no more than 2% above the reference search's and
    clearly below round-to-nearest's. Returns the learner's function (the reference if unsolved)."""
    from ..quant import awq_steps
    from ..quant.layer_study import rtn_weight
    name = "AWQ step by step: search s = mean|x|^alpha"
    reference = awq_steps.search_scale(weights, x, bits, group_size)
    answer = _call(search_scale, [w.clone() for w in weights], x.clone(), bits, group_size)
    if answer is NotImplemented:
        return not_solved(name, awq_steps.search_scale)

    def error(s):
        return awq_steps.output_error(x, weights, [rtn_weight(w.float() * s, bits, group_size) / s for w in weights])

    ok = (isinstance(answer, torch.Tensor) and answer.shape == (x.shape[1],) and bool(torch.isfinite(answer).all())
          and bool((answer > 0).all()))
    check(f"{name}: one positive scale per input channel", ok,
          f"return s, a tensor of {x.shape[1]} positive numbers (one per input channel).")
    yours, best, nearest = error(answer.float()), error(reference), error(torch.ones(x.shape[1]))
    check(f"{name}: output error {yours:.4g} against the reference search's {best:.4g} and RTN's {nearest:.4g}",
          yours <= 1.02 * best and yours < 0.98 * nearest,
          "for each alpha in 0, 0.2, 0.4, 0.6, 0.8: s = x.abs().mean(0) ** alpha; quantize W * s (every weight of the "
          "group), divide by s again, and measure the OUTPUT error ((x @ (W - W_hat).T) ** 2).sum() summed over "
          "the weights; keep the s with the smallest error.")
    return search_scale
