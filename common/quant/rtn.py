"""Round-to-nearest (RTN): every weight to the nearest point of a uniform integer grid.

The baseline every other method is measured against: no calibration data, one scale (and zero
point, if asymmetric) per output channel or per group of `group_size` inputs.
"""
from dataclasses import dataclass

import torch

from .calibration import decoder_layers, linear_layers, mark_quantized
from .formats import fake_quant_int


@dataclass
class RTNConfig:
    bits: int = 4
    group_size: int | None = 128   # None: one scale per output channel
    symmetric: bool = False


def weights_per_scale(linear, group_size: int | None) -> int:
    return linear.in_features if group_size is None else group_size


@torch.no_grad()
def quantize_rtn(model, config: RTNConfig, calib_batch=None, progress: bool = True):
    """Fake-quantize every linear layer of the decoder in place (the head and embedding stay)."""
    for layer in decoder_layers(model):
        for linear in linear_layers(layer).values():
            linear.weight.data = fake_quant_int(linear.weight.data, config.bits, config.group_size, config.symmetric)
            mark_quantized(linear, config.bits, weights_per_scale(linear, config.group_size), not config.symmetric)
    return model
