"""Quantization-aware training: weights that train while the forward pass sees them on the grid.

`prepare_qat(model, NF4Config())` attaches a parametrization to every decoder linear's weight: the
forward pass uses `w + (q(w) - w).detach()`, the NF4-rounded weight, and the backward pass treats the
rounding as the identity (the straight-through estimator), so the float weight under it keeps
receiving gradients. `finish_qat(model)` rounds the trained weights onto the grid for good and marks
them as quantize_nf4 does, so that `pack_quantized` stores them as 4-bit codes.

Contrast with packed NF4 (`pack_quantized` after `quantize_nf4`), where the codes are buffers, as in
bitsandbytes: no gradient reaches them, and training after quantization moves only the layers that
stayed float (norms, embeddings).
"""
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..calibration import decoder_layers, linear_layers
from .formats import fake_quant_nf4
from .nf4 import NF4Config, quantize_nf4
from .storage import stored_scale_dtype


class NF4StraightThrough(nn.Module):
    """The weight rounded to NF4 blocks in the forward pass; the identity in the backward pass."""

    def __init__(self, block_size: int):
        super().__init__()
        self.block_size = block_size

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        rounded = fake_quant_nf4(weight.detach(), self.block_size, stored_scale_dtype(weight.dtype))
        return weight + (rounded - weight).detach()


def prepare_qat(model, config: NF4Config, calib_batch=None, progress: bool = True):
    """Every decoder linear computes with NF4 weights from now on, and its float weight still trains."""
    for layer in decoder_layers(model):
        for linear in linear_layers(layer).values():
            if not parametrize.is_parametrized(linear, "weight"):
                parametrize.register_parametrization(linear, "weight", NF4StraightThrough(config.block_size))
    return model


def is_qat(model) -> bool:
    return any(parametrize.is_parametrized(m, "weight") and isinstance(m.parametrizations.weight[0], NF4StraightThrough)
               for m in model.modules() if isinstance(m, nn.Linear))


def qat_block_size(model) -> int | None:
    return next((m.parametrizations.weight[0].block_size for m in model.modules() if isinstance(m, nn.Linear)
                 and parametrize.is_parametrized(m, "weight")), None)


@torch.no_grad()
def finish_qat(model, round_weights: bool = True):
    """Drop the parametrizations; with `round_weights` put the trained weights on the NF4 grid (marked
    for packing), else leave the float weights (to edit them and prepare QAT again)."""
    block_size = qat_block_size(model)
    for module in model.modules():
        if isinstance(module, nn.Linear) and parametrize.is_parametrized(module, "weight"):
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    return quantize_nf4(model, NF4Config(block_size=block_size)) if block_size and round_weights else model
