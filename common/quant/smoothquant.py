"""SmoothQuant (Xiao et al., 2022): W8A8 by moving the activations' outliers into the weights.

Activations have a few channels with huge magnitudes (hard to quantize per token), weights do not.
Y = (X diag(s)^-1)(diag(s) W^T) is the same product; with s_j = max|X_j|^a / max|W_j|^(1-a) both
factors end up with similar ranges, so both quantize to INT8: weights per output channel, activations
per token, dynamically (a scale per token computed at run time). The division of X by s is folded
into the RMSNorm that produces X, so it costs nothing.
"""
from dataclasses import dataclass

import torch

from ..calibration import linear_layers, record_linear_inputs, walk_layers
from .formats import fake_quant_int
from .rtn import rtn_into


@dataclass
class SmoothQuantConfig:
    alpha: float = 0.5           # migration strength: 0 leaves X alone, 1 moves all its range into W
    smooth: bool = True          # False: plain W8A8 (no scales migrated), the baseline SmoothQuant beats
    weight_bits: int = 8
    act_bits: int = 8


def smoothing_groups(layer) -> list:
    """(the norm producing the input, [linears reading it]): the inputs SmoothQuant smooths."""
    return [(layer.input_layernorm, ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
            (layer.post_attention_layernorm, ["mlp.gate_proj", "mlp.up_proj"])]


def channel_abs_max(x: torch.Tensor) -> torch.Tensor:
    """Max |x| of each input channel [tokens, channels]: where activation outliers live."""
    return x.abs().float().amax(dim=0)


def smoothing_scale(act_absmax: torch.Tensor, weights: list, alpha: float) -> torch.Tensor:
    """s_j = max|X_j|^alpha / max|W_j|^(1 - alpha), W_j the j-th input column of all `weights`."""
    w_absmax = torch.stack([w.abs().float().amax(dim=0) for w in weights]).amax(dim=0)
    return (act_absmax.clamp(min=1e-5).pow(alpha) / w_absmax.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def smooth(norm, linears, s: torch.Tensor) -> None:
    """X / s inside the norm, W * s in the linears: the float layer computes the same function."""
    norm.weight.div_(s.to(norm.weight.dtype))
    for linear in linears:
        linear.weight.mul_(s.view(1, -1).to(linear.weight.dtype))


def quantize_activations_per_token(linear, bits: int) -> None:
    """From now on `linear` sees its input rounded to `bits`-bit integers with one scale per token."""
    def hook(module, args):
        x = args[0]
        return (fake_quant_int(x.reshape(-1, x.shape[-1]), bits, None, True).reshape(x.shape),)
    linear.register_forward_pre_hook(hook)
    if hasattr(linear, "weight_format"):  # so that packing keeps it
        linear.weight_format.activations = f"int{bits}_per_token"


def quantize_smoothquant(model, config: SmoothQuantConfig, calib_batch: torch.Tensor, progress: bool = True):
    """Smooth each layer with calibration maxima, then W8 per channel and A8 per token (fake-quantized)."""
    def quantize_layer(index, layer, hidden, kwargs):
        if config.smooth:
            inputs = record_linear_inputs(layer, hidden, kwargs)
            for norm, names in smoothing_groups(layer):
                linears = [layer.get_submodule(n) for n in names]
                smooth(norm, linears, smoothing_scale(channel_abs_max(inputs[names[0]]),
                                                      [lin.weight for lin in linears], config.alpha))
        for linear in linear_layers(layer).values():
            rtn_into(linear, linear.weight.data, config.weight_bits, None, True)
            quantize_activations_per_token(linear, config.act_bits)

    return walk_layers(model, calib_batch, quantize_layer, progress, desc="SmoothQuant")
