"""Round-to-nearest (RTN): every weight to the nearest point of a uniform integer grid.

The baseline every other method is measured against: no calibration data, one scale (and zero
point, if asymmetric) per output channel or per group of `group_size` inputs. With `act_bits`, every
linear's input is also rounded at run time, symmetric with one scale per token (W4A4, W4A8).
"""
from dataclasses import dataclass

import torch

from ..calibration import decoder_layers, linear_layers
from .formats import check_act_bits, check_int_grid, fake_quant_int
from .storage import WeightFormat, mark_quantized, quantize_activations_per_token, stored_scale_dtype


@dataclass(frozen=True)
class RTNConfig:
    bits: int = 4
    group_size: int | None = 128   # None: one scale per output channel
    symmetric: bool = False
    act_bits: int | None = None    # also round every linear's input per token to this many bits; None: float
    needs_calibration = False      # the weights alone decide the grid

    def __post_init__(self):
        check_int_grid(self.bits, self.group_size)
        check_act_bits(self.act_bits)


def rtn_into(linear, weight: torch.Tensor, bits: int, group_size: int | None, symmetric: bool) -> None:
    """Set `linear`'s weight to `weight` rounded to nearest (scales rounded to the 16 bits they are
    stored in), and mark the grid. AWQ ends with this too, on its scaled and clipped weights."""
    w_hat, scale, zero = fake_quant_int(weight, bits, group_size, symmetric,
                                        scale_dtype=stored_scale_dtype(weight.dtype), return_grid=True)
    linear.weight.data = w_hat
    mark_quantized(linear, WeightFormat("int", bits, group_size, symmetric, scale, zero))


@torch.no_grad()
def quantize_rtn(model, config: RTNConfig, calib_batch=None, progress: bool = True):
    """Fake-quantize every linear layer of the decoder in place (the head and embedding stay)."""
    for layer in decoder_layers(model):
        for linear in linear_layers(layer).values():
            rtn_into(linear, linear.weight.data, config.bits, config.group_size, config.symmetric)
            if config.act_bits:
                quantize_activations_per_token(linear, config.act_bits)
    return model
