"""NF4 weight-only (QLoRA): 4-bit codes into 16 levels placed at quantiles of a normal distribution,
each block of 64 weights scaled by its absolute maximum.

Trained weights are roughly normal, so equal-probability levels waste fewer codes on the empty
tails than a uniform grid does. No calibration data; activations stay in 16 bits.
"""
from dataclasses import dataclass

import torch

from ..calibration import decoder_layers, linear_layers
from ..errors import WorkshopError
from .formats import fake_quant_nf4
from .storage import WeightFormat, mark_quantized, stored_scale_dtype


@dataclass(frozen=True)
class NF4Config:
    group_size: int = 64        # weights per absmax scale along the input (QLoRA's "block" of 64)
    needs_calibration = False   # absmax per group: the weights alone decide the grid

    def __post_init__(self):
        if not isinstance(self.group_size, int) or self.group_size < 1:
            raise WorkshopError(f"NF4Config(group_size={self.group_size!r}) is not a number of weights.",
                                "Give a positive group size that divides the layers' inputs, e.g. 64 (QLoRA's blocks).")


@torch.no_grad()
def quantize_nf4(model, config: NF4Config, calib_batch=None, progress: bool = True):
    for layer in decoder_layers(model):
        for linear in linear_layers(layer).values():
            linear.weight.data = fake_quant_nf4(linear.weight.data, config.group_size,
                                                stored_scale_dtype(linear.weight.dtype))
            mark_quantized(linear, WeightFormat("nf4", 4, config.group_size))
    return model
