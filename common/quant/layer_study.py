"""One linear layer of the real model, studied alone (lab 02).

A whole-model perplexity mixes every layer's error; one layer shows a method's mechanism. The inputs a
named linear receives and the relative error of its outputs are common.calibration's `linear_inputs`
and `relative_output_error` (lab 03 prunes one layer with them too); here: held-out windows, the RTN
reference and the W8A8 errors, where the layer's inputs are quantized as well as its weight.
"""
import torch

from ..data import eval_windows, token_ids
from .formats import fake_quant_int
from .formats import quantize_static, static_scale
from .smoothquant import smoothing_scale


def eval_text_windows(tokenizer, text: str, seqlen: int, windows: int) -> torch.Tensor:
    """The first `windows` evaluation windows [windows, seqlen] of `text`'s evaluation part: held-out
    text for a layer calibrated on a calibration part."""
    return eval_windows(token_ids(tokenizer, text, "eval"), seqlen, windows)


def rtn_weight(weight: torch.Tensor, bits: int, group_size: int | None) -> torch.Tensor:
    """Round to nearest on an asymmetric grid: the reference every method on one layer is set against."""
    return fake_quant_int(weight.float(), bits, group_size, symmetric=False)


def on_grid(w_hat: torch.Tensor, bits: int, group_size: int | None) -> bool:
    """True if every (row, group) of `w_hat` takes at most 2^bits distinct values: it is quantized."""
    groups = w_hat.float().reshape(-1, group_size or w_hat.shape[1])
    distinct = (groups.sort(dim=1).values.diff(dim=1).abs() > 1e-7 * groups.abs().amax().clamp(min=1e-12)).sum(dim=1) + 1
    return bool((distinct <= 2 ** bits).all())


# W8A8 on one layer: INT8 weights per output channel (symmetric), INT8 activations per token (a scale
# computed for each token at run time) or per tensor (one static scale calibrated beforehand), with or
# without SmoothQuant's migration of the activations' range into the weights.

@torch.no_grad()
def w8a8_output(x: torch.Tensor, weight: torch.Tensor, activations: str, calib_x: torch.Tensor,
                alpha: float | None = None) -> torch.Tensor:
    """The layer's W8A8 output on inputs `x`. `activations`: 'per_token' or 'static' (the scale from
    max |x| of `calib_x`); `alpha`: SmoothQuant's migration strength, from `calib_x`'s channel maxima
    (None: no smoothing)."""
    weight = weight.float()
    s = torch.ones(weight.shape[1])
    if alpha is not None:
        s = smoothing_scale(calib_x.abs().amax(dim=0), [weight], alpha)
    x, calib_x, weight = x / s, calib_x / s, weight * s
    w_q = fake_quant_int(weight, 8, None, symmetric=True)
    if activations == "per_token":
        x_q = fake_quant_int(x, 8, None, symmetric=True)
    else:
        x_q = quantize_static(x, static_scale(calib_x.abs().max().item(), "int8"), "int8")
    return x_q @ w_q.T


@torch.no_grad()
def w8a8_relative_error(x: torch.Tensor, weight: torch.Tensor, activations: str, calib_x: torch.Tensor,
                        alpha: float | None = None) -> float:
    """||Y_w8a8 - Y||^2 / ||Y||^2 of the layer on inputs `x` (see w8a8_output)."""
    reference = x @ weight.float().T
    error = w8a8_output(x, weight, activations, calib_x, alpha) - reference
    return float((error ** 2).sum() / (reference ** 2).sum())
