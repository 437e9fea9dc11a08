"""Quantization-aware training: weights that train while the forward pass sees them on the grid.

`prepare_qat(model, NF4Config())` (or an `RTNConfig` for an integer grid) attaches a parametrization
to every decoder linear's weight: the forward pass uses `w + (q(w) - w).detach()`, the rounded
weight, and the backward pass treats the rounding as the identity (the straight-through estimator),
so the float weight under it keeps receiving gradients. `finish_qat(model)` rounds the trained
weights onto the grid for good and marks them as quantize_nf4 / quantize_rtn do, so that
`pack_quantized` stores them as 4-bit codes.

Contrast with packed weights (`pack_quantized` after `quantize_nf4`), where the codes are buffers,
as in bitsandbytes: no gradient reaches them, and training after quantization moves only the layers
that stayed float (norms, embeddings).
"""
import copy

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..calibration import decoder_layers, linear_layers
from .formats import fake_quant_int, fake_quant_nf4
from .nf4 import NF4Config, quantize_nf4
from .rtn import RTNConfig, quantize_rtn
from .storage import stored_scale_dtype


def fake_quantize(weight: torch.Tensor, config) -> torch.Tensor:
    """`weight` on the grid of `config` (NF4Config or RTNConfig), scales rounded to their stored type."""
    scale_dtype = stored_scale_dtype(weight.dtype)
    if isinstance(config, NF4Config):
        return fake_quant_nf4(weight, config.group_size, scale_dtype)
    return fake_quant_int(weight, config.bits, config.group_size, config.symmetric, scale_dtype=scale_dtype)


def quantize_with(model, config):
    """quantize_nf4 or quantize_rtn, as `config` says: the weights rounded and marked for packing."""
    return quantize_nf4(model, config) if isinstance(config, NF4Config) else quantize_rtn(model, config)


class StraightThrough(nn.Module):
    """The weight rounded to the grid in the forward pass; the identity in the backward pass."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + (fake_quantize(weight.detach(), self.config) - weight).detach()


def prepare_qat(model, config):
    """Every decoder linear computes with weights on `config`'s grid from now on, and its float weight
    still trains. `config`: NF4Config, or RTNConfig for an integer grid."""
    if not isinstance(config, (NF4Config, RTNConfig)):
        raise TypeError(f"QAT takes an NF4Config or an RTNConfig, not {type(config).__name__}")
    for layer in decoder_layers(model):
        for linear in linear_layers(layer).values():
            if not parametrize.is_parametrized(linear, "weight"):
                parametrize.register_parametrization(linear, "weight", StraightThrough(config))
    return model


def qat_config(model):
    """The grid config of a model under QAT, or None if it is not."""
    return next((m.parametrizations.weight[0].config for m in model.modules() if isinstance(m, nn.Linear)
                 and parametrize.is_parametrized(m, "weight") and isinstance(m.parametrizations.weight[0], StraightThrough)),
                None)


def is_qat(model) -> bool:
    return qat_config(model) is not None


def copy_model(model):
    """copy.deepcopy, also for a model under QAT: torch's copy of a parametrized module shares the
    class that parametrize generated for it, and removing the parametrization from either copy strips
    the weight from that shared class, breaking the other. So the parametrizations come off for the
    copy (the float weights stay exactly as they are) and go back on both."""
    config = qat_config(model)
    if config is None:
        return copy.deepcopy(model)
    copied = copy.deepcopy(finish_qat(model, round_weights=False))
    prepare_qat(model, config)
    return prepare_qat(copied, config)


@torch.no_grad()
def finish_qat(model, round_weights: bool = True):
    """Drop the parametrizations; with `round_weights` put the trained weights on the grid (marked for
    packing), else leave the float weights (to edit them and prepare QAT again)."""
    config = qat_config(model)
    for module in model.modules():
        if isinstance(module, nn.Linear) and parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    return quantize_with(model, config) if config is not None and round_weights else model
