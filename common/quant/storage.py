"""What a quantized model really stores, before and after packing.

The quantizers of lab 02 fake-quantize: a weight keeps its dtype but every value sits on the
method's grid, so the model can still be evaluated (and trained, or compared with modelopt) with
ordinary linears. Each quantized linear is marked with its `WeightFormat`: the grid's scales and
zero points, and how its activations are quantized. `true_bytes` counts the marked weights at their
packed size; `common.quant.packing.pack_quantized` turns them into QuantLinear layers that store
exactly those bytes and compute exactly the same function.
"""
from dataclasses import dataclass

import torch
from torch import nn

from .formats import fake_quant_int, quantize_static, static_scale
from ..sizes import unique_tensors

SCALE_BYTES = 2  # scales and zero points are stored in 16 bits, as the INT4 kernels and checkpoints do


def stored_scale_dtype(weight_dtype: torch.dtype) -> torch.dtype:
    """The 16-bit type a packed layer keeps its scales in: bf16 for a bf16 model, fp16 otherwise."""
    return torch.bfloat16 if weight_dtype == torch.bfloat16 else torch.float16


@dataclass
class WeightFormat:
    """How a fake-quantized linear would be stored packed."""
    kind: str                            # "int", "nf4", "fp8_e4m3" or "fp8_e5m2"
    bits: int
    group_size: int | None               # weights per scale along the input; None: per output channel;
                                         # -1: one per tensor (FP8)
    symmetric: bool = True
    scale: torch.Tensor | None = None    # "int": [out, groups] the scales the codes were rounded with
    zero: torch.Tensor | None = None     # "int", asymmetric: [out, groups] integer zero points
    activations: str | None = None       # None (weight-only), "int8_per_token", "int8_static", "fp8_static"
    input_amax: float | None = None      # static activations: the calibrated max |x|

    def packed_bytes(self, out_features: int, in_features: int) -> int:
        """Codes at `bits` each, one 16-bit scale per group (FP8: a float32 scale per channel, as
        torch._scaled_mm takes it), and a 16-bit zero point per group where there is one."""
        n = out_features * in_features
        groups = out_features * (1 if self.group_size is None else in_features // self.group_size)
        if self.kind.startswith("fp8"):
            scales = 1 if self.group_size == -1 else out_features
            return n + 4 * scales + (4 if self.activations == "fp8_static" else 0)
        # The INT4 layout keeps a zero point even for symmetric grids (all 8): one kernel for both.
        zero_points = not self.symmetric or (self.kind == "int" and self.bits == 4)
        scale_bytes = SCALE_BYTES * (2 if zero_points else 1)
        static_input_scale = 4 if self.activations == "int8_static" else 0   # float32, as QuantLinear stores it
        return -(-n * self.bits // 8) + groups * scale_bytes + static_input_scale


def mark_quantized(linear: nn.Linear, fmt: WeightFormat) -> None:
    """Record how `linear`'s (fake-quantized) weight is stored packed, and its packed size."""
    linear.weight_format = fmt
    linear.packed_weight_bytes = fmt.packed_bytes(linear.out_features, linear.in_features)


def quantize_inputs_static(linear: nn.Linear, amax: float, fmt: str) -> None:
    """From now on the marked `linear` sees its input rounded to `fmt` ("int8" or an FP8 format) with
    the one scale amax / max(fmt); its mark records it (and counts the stored float32 input scale)."""
    scale = static_scale(amax, fmt).to(linear.weight.device)
    linear.register_forward_pre_hook(lambda module, args: (quantize_static(args[0], scale, fmt),))
    linear.weight_format.activations = "int8_static" if fmt == "int8" else "fp8_static"
    linear.weight_format.input_amax = amax
    mark_quantized(linear, linear.weight_format)


def quantize_activations_per_token(linear, bits: int) -> None:
    """From now on `linear` sees its input rounded to `bits`-bit integers with one scale per token
    (symmetric, computed at run time)."""
    def hook(module, args):
        x = args[0]
        return (fake_quant_int(x.reshape(-1, x.shape[-1]), bits, None, True).reshape(x.shape),)
    linear.register_forward_pre_hook(hook)
    if hasattr(linear, "weight_format"):  # so that packing keeps it
        linear.weight_format.activations = f"int{bits}_per_token"


def true_bytes(model) -> int:
    """Bytes the model would take with its quantized weights packed: each tensor once (a tied
    embedding too), a weight marked by `mark_quantized` at its packed size, the rest as stored."""
    packed = {f"{name}.weight": m.packed_weight_bytes for name, m in model.named_modules()
              if hasattr(m, "packed_weight_bytes")}
    return sum(packed.get(name, t.numel() * t.element_size()) for name, t in unique_tensors(model)
               if "_quantizer." not in name)  # modelopt's quantizer state: the packed scales count it
