"""SmoothQuant (Xiao et al., 2022): W8A8 by moving the activations' outliers into the weights.

Activations have a few channels with huge magnitudes (hard to quantize per token), weights do not.
Y = (X diag(s)^-1)(diag(s) W^T) is the same product; with s_j = max|X_j|^a / max|W_j|^(1-a) both
factors end up with similar ranges, so both quantize to INT8: weights per output channel, activations
per token, dynamically (a scale per token computed at run time). The division of X by s is folded
into the RMSNorm that produces X, so it costs nothing.

`activation_scales="static"` instead calibrates one scale per tensor (max |X| / 127 on the calibration
data, after smoothing): no reduction at run time, and the form TensorRT's explicit INT8 takes (lab 07).
It is coarser than a scale per token, so it costs some accuracy that lab 07 measures.
"""
from dataclasses import dataclass

import torch

from ..calibration import linear_layers, record_linear_inputs, walk_layers
from ..errors import WorkshopError
from .awq import fold_scales, scaling_groups
from .rtn import rtn_into
from .storage import quantize_activations_per_token, quantize_inputs_static

ACTIVATION_SCALES = ("per_token", "static")


@dataclass(frozen=True)
class SmoothQuantConfig:
    alpha: float = 0.5           # migration strength: 0 leaves X alone, 1 moves all its range into W
    smooth: bool = True          # False: plain W8A8 (no scales migrated), the baseline SmoothQuant beats
    weight_bits: int = 8
    act_bits: int = 8
    activation_scales: str = "per_token"   # or "static": one calibrated scale per tensor (8 bits only)
    smooth_down_proj: bool = False         # also smooth down_proj's inputs (static scales need it most)
    needs_calibration = True               # the smoothing scales (and static activation scales) come from it

    def __post_init__(self):
        if not 0 <= self.alpha <= 1:
            raise WorkshopError(f"alpha={self.alpha} is not a migration strength in [0, 1].",
                                "Give e.g. 0.5 (0 leaves the activations alone, 1 moves all their range).")
        for name in ("weight_bits", "act_bits"):
            if not 2 <= getattr(self, name) <= 8:
                raise WorkshopError(f"{name}={getattr(self, name)}: the integer grids here have 2 to 8 bits.",
                                    f"Give {name}=8 (W8A8).")
        if self.activation_scales not in ACTIVATION_SCALES:
            raise WorkshopError(f"activation_scales={self.activation_scales!r} is not one of {ACTIVATION_SCALES}.",
                                "Use 'per_token' (computed at run time) or 'static' (calibrated, TensorRT's form).")
        if self.activation_scales == "static" and (self.act_bits, self.weight_bits) != (8, 8):
            raise WorkshopError("Static activation scales are stored and exported as INT8 W8A8 only.",
                                "Use weight_bits=8 and act_bits=8 with activation_scales='static'.")


def smoothing_groups(layer, down_proj: bool = False) -> list:
    """(the module producing the input, [linears reading it]): the inputs SmoothQuant smooths. AWQ's
    groups: the two norms always; with `down_proj` also up_proj -> down_proj (the MLP's product
    silu(gate) * up is scaled channel by channel with up's rows), whose inputs carry the largest
    outliers; never v -> o (the paper smooths the norms' outputs only)."""
    return [(producer, names) for producer, names in scaling_groups(layer)
            if producer is not layer.self_attn.v_proj and (down_proj or producer is not layer.mlp.up_proj)]


def channel_abs_max(x: torch.Tensor) -> torch.Tensor:
    """Max |x| of each input channel [tokens, channels]: where activation outliers live."""
    return x.abs().float().amax(dim=0)


def smoothing_scale(act_absmax: torch.Tensor, weights: list, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), W_j the j-th input column of all `weights`."""
    w_absmax = torch.stack([w.abs().float().amax(dim=0) for w in weights]).amax(dim=0)
    return (act_absmax.clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)


def smoothquant_layer(layer, hidden: torch.Tensor, kwargs: dict, config: SmoothQuantConfig) -> None:
    """One decoder layer, in place, from the hidden states `hidden` it receives on the calibration data:
    smoothed with the calibration maxima, then W8 per channel and A8 per token, or per tensor with a
    calibrated scale (fake-quantized)."""
    if config.smooth:
        inputs = record_linear_inputs(layer, hidden, kwargs)
        for producer, names in smoothing_groups(layer, config.smooth_down_proj):
            linears = [layer.get_submodule(n) for n in names]
            fold_scales(producer, linears, smoothing_scale(channel_abs_max(inputs[names[0]]),
                                                  [lin.weight for lin in linears], config.alpha))
    for linear in linear_layers(layer).values():
        rtn_into(linear, linear.weight.data, config.weight_bits, None, True)
    if config.activation_scales == "static":  # the inputs the layer now sees: smoothed, weights quantized
        inputs = record_linear_inputs(layer, hidden, kwargs)
    for name, linear in linear_layers(layer).items():
        if config.activation_scales == "static":
            quantize_inputs_static(linear, inputs[name].abs().max().item(), "int8")
        else:
            quantize_activations_per_token(linear, config.act_bits)


def quantize_smoothquant(model, config: SmoothQuantConfig, calib_batch: torch.Tensor, progress: bool = True):
    """SmoothQuant on every decoder layer in order, each calibrated on what the layers before it output."""
    return walk_layers(model, calib_batch,
                       lambda index, layer, hidden, kwargs: smoothquant_layer(layer, hidden, kwargs, config),
                       progress, desc="SmoothQuant")
