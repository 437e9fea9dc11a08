"""FP8 W8A8 (E4M3): the format H100 tensor cores multiply natively.

Weights: one scale per output channel (amax / 448), or per tensor. Activations: one static scale per tensor,
from the largest |x| each linear saw on the calibration data, so no reduction runs at inference.
E4M3 spends its 8 bits on a floating-point grid (relative precision ~6%, everywhere in the range),
which is why it needs no outlier tricks for most models.
"""
from dataclasses import dataclass

import torch

from ..calibration import decoder_layers, linear_layers, record_linear_inputs, walk_layers
from ..errors import WorkshopError
from .formats import FP8_DTYPES, fake_quant_fp8
from .storage import WeightFormat, mark_quantized, quantize_inputs_static


@dataclass(frozen=True)
class FP8Config:
    fmt: str = "fp8_e4m3"
    quantize_activations: bool = True
    weight_group_size: int | None = None   # None: a scale per output channel; -1: one per tensor

    def __post_init__(self):
        if self.fmt not in FP8_DTYPES:
            raise WorkshopError(f"FP8Config(fmt={self.fmt!r}) is not an FP8 format.", f"Use one of {', '.join(FP8_DTYPES)}.")
        if self.weight_group_size not in (None, -1):
            raise WorkshopError(f"FP8Config(weight_group_size={self.weight_group_size!r}): FP8 weights are scaled per "
                                "output channel or per tensor.", "Give None (per channel) or -1 (per tensor).")

    @property
    def needs_calibration(self) -> bool:
        return self.quantize_activations   # the static activation scales come from it; the weights' do not


def quantize_fp8(model, config: FP8Config, calib_batch: torch.Tensor | None = None, progress: bool = True):
    """FP8 weights per channel and (with calibration) FP8 activations per tensor, fake-quantized."""
    def quantize_layer(index, layer, hidden, kwargs):
        inputs = record_linear_inputs(layer, hidden, kwargs) if config.quantize_activations else {}
        for name, linear in linear_layers(layer).items():
            linear.weight.data = fake_quant_fp8(linear.weight.data, config.fmt, config.weight_group_size)
            mark_quantized(linear, WeightFormat(config.fmt, 8, config.weight_group_size))
            if config.quantize_activations:
                quantize_inputs_static(linear, inputs[name].abs().max().item(), config.fmt)

    if not config.needs_calibration:   # weights only: no layer needs to see the calibration text
        for index, layer in enumerate(decoder_layers(model)):
            quantize_layer(index, layer, None, None)
        return model
    return walk_layers(model, calib_batch, quantize_layer, progress, desc="FP8")
