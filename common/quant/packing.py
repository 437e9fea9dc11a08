"""From fake quantization to real storage: `pack_quantized(model)` replaces the fake-quantized linears
of lab 02's methods (marked by `storage.mark_quantized`) by the QuantLinear layers that store them, and
`unpack_quantized` turns packed 4-bit layers back into plain linears to edit them."""
import warnings

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..errors import WorkshopError
from .formats import static_scale
from .qlinear import STATIC_GRID, QuantLinear


class NotPackable(Exception):
    """A marked linear whose format has no packed layout here (it stays fake-quantized)."""


def packed_layer(linear: nn.Linear) -> QuantLinear:
    """The QuantLinear storing `linear`'s fake-quantized weight (marked by `storage.mark_quantized`):
    the codes are recovered from the weight and the recorded grid, so both compute the same function."""
    fmt, w = linear.weight_format, linear.weight.detach()
    if fmt.kind == "int" and fmt.bits == 4 and fmt.activations is None:
        group = fmt.group_size or linear.in_features   # per channel: one group as wide as the row
        scale, zero = fmt.scale.to(w.device), fmt.zero.to(w.device)
        codes = torch.round(w.float().reshape(-1, group) / scale.reshape(-1, 1) + zero.reshape(-1, 1))
        codes = codes.reshape(w.shape)
        step = scale.repeat_interleave(group, 1)
        off_grid = (codes - zero.repeat_interleave(group, 1)) * step - w.float()
        if (off_grid.abs() > 0.1 * step).any():  # bf16 storage of the weight alone moves it < 0.03 step
            raise WorkshopError(f"The weights of a {linear.out_features}x{linear.in_features} linear are no longer "
                                "on the grid they were quantized to (were they trained since?).",
                                "Quantize again right before packing.")
        return QuantLinear.from_linear(linear, "int4", group, codes=codes, scales=scale, zeros=zero)
    if fmt.kind == "int" and fmt.bits == 8 and fmt.symmetric and fmt.group_size is None \
            and fmt.activations in (None, "int8_per_token", "int8_static"):
        scale = static_scale(fmt.input_amax, STATIC_GRID["int8_static"]) if fmt.activations == "int8_static" else None
        return QuantLinear.from_linear(linear, "int8", activations=fmt.activations, input_scale=scale)
    if fmt.kind == "fp8_e4m3" and fmt.group_size in (None, -1) and fmt.activations in (None, "fp8_static"):
        scale = static_scale(fmt.input_amax, STATIC_GRID["fp8_static"]) if fmt.activations else None
        return QuantLinear.from_linear(linear, "fp8", fmt.group_size, activations=fmt.activations, input_scale=scale)
    if fmt.kind == "nf4":
        return QuantLinear.from_linear(linear, "nf4", fmt.group_size)
    raise NotPackable(f"{fmt.kind}{fmt.bits}" + (f" with {fmt.activations} activations" if fmt.activations else ""))


@torch.no_grad()
def unpack_quantized(model: nn.Module) -> int:
    """Replace every packed 4-bit layer (NF4 or INT4) by a plain Linear holding its grid values, to
    edit the weights (e.g. prune) before quantizing and packing again; returns how many there were."""
    dtype, unpacked = next(model.parameters()).dtype, 0
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantLinear):
            if module.fmt not in ("nf4", "int4"):
                raise WorkshopError(f"{name} stores {module.fmt}; only 4-bit weight-only layers are unpacked here.",
                                    "Edit the model before quantizing it.")
            weight = module.dequantized_weight(dtype)
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                               device=weight.device, dtype=weight.dtype)
            linear.weight.copy_(weight)
            if module.bias is not None:
                linear.bias.copy_(module.bias)
            model.set_submodule(name, linear)
            unpacked += 1
    return unpacked


@torch.no_grad()
def pack_quantized(model: nn.Module, progress: bool = True) -> nn.Module:
    """Replace every fake-quantized linear by the QuantLinear that stores it (INT4 and INT8 weights,
    FP8 W8A8, SmoothQuant's W8A8, NF4); in place, returns the model. Formats without a packed
    layout here (2, 3 and 5-7-bit integers, INT4 W4A4, ...) stay fake-quantized, with a warning."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and hasattr(m, "weight_format")]
    if not names:
        raise WorkshopError("This model has no quantized linear layers to pack.",
                            "Quantize it first (quantize_rtn, quantize_gptq, quantize_awq, ...), then pack.")
    left = {}
    for name in tqdm(names, desc="packing", disable=not progress, leave=False):
        try:
            model.set_submodule(name, packed_layer(model.get_submodule(name)))
        except NotPackable as reason:
            left.setdefault(str(reason), []).append(name)
    if left:
        warnings.warn("; ".join(f"{len(v)} linears stay fake-quantized ({k}: no packed layout)" for k, v in left.items()))
    return model
