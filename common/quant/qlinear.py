"""QuantLinear: a linear layer that stores real quantized weights (packed codes, scales, zeros).

INT4: the packed layout of `common.quant.layout` (codes 0..15, two per byte, scales and zeros per group).
INT8: `qweight` int8 [N, K] and per-channel `scales` [N, 1]; w = q * scale.
FP8:  `qweight` float8_e4m3fn [N, K] and a float32 `scales` per tensor [1, 1] or per channel [N, 1].
NF4:  `qweight` packed as INT4 (indices into the 16 NF4 levels), `scales` [N, K // g] (absmax per block).

Activations: None (weight-only, 16-bit inputs), "int8_per_token" (SmoothQuant's W8A8: a scale per
token computed at run time), "int8_static" (SmoothQuant with one calibrated float32 `input_scale`, the
form TensorRT's explicit quantization takes) or "fp8_static" (one calibrated float32 `input_scale`).

Everything is a buffer, so `stored_bytes`, `state_dict()` and `save_pretrained` see what is stored.
Which kernel computes the output on a GPU is `common.quant.kernel_paths`'s choice; elsewhere the layer
dequantizes its weight and multiplies.
`common.quant.packing.pack_quantized(model)` turns the fake-quantized linears of lab 02's methods into these layers.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import WorkshopError
from .formats import fake_quant_int, fp8_codes, int_codes, nf4_codes, nf4_levels, quantize_static
from .kernel_paths import kernel_output
from .layout import dequantize_int4, pack_int4, unpack_int4
from .storage import stored_scale_dtype

QUANT_LINEAR_FORMATS = ("int4", "int8", "fp8", "nf4")
ACTIVATIONS = (None, "int8_per_token", "int8_static", "fp8_static")
ACTIVATION_FORMAT = {"int8_per_token": "int8", "int8_static": "int8", "fp8_static": "fp8"}
STATIC_GRID = {"int8_static": "int8", "fp8_static": "fp8_e4m3"}   # the format of formats.quantize_static


class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, fmt: str = "int4", group_size: int | None = 128,
                 bias: bool = False, dtype: torch.dtype = torch.float32, device=None, activations: str | None = None):
        """An empty layer (all codes zero) of the given shape; `dtype` is the model's: scales are bf16
        for a bf16 model and fp16 otherwise, the bias keeps `dtype`. INT8 is always per channel."""
        super().__init__()
        if fmt not in QUANT_LINEAR_FORMATS:
            raise WorkshopError(f"QuantLinear does not store {fmt!r}.", f"Use one of {', '.join(QUANT_LINEAR_FORMATS)}.")
        if fmt in ("int4", "nf4") and (group_size is None or group_size <= 0 or in_features % group_size):
            raise WorkshopError(f"{fmt.upper()} group size {group_size} does not divide in_features={in_features}.",
                                "Use a positive group size that divides it (e.g. 128, or 64 for 576-wide layers).")
        if activations not in ACTIVATIONS or (activations and fmt != ACTIVATION_FORMAT[activations]):
            raise WorkshopError(f"QuantLinear cannot quantize the activations of a {fmt} layer as {activations!r}.",
                                "Use activations='int8_per_token' or 'int8_static' with int8, 'fp8_static' with fp8, "
                                "or None.")
        if fmt == "fp8" and group_size not in (-1, None):
            raise WorkshopError(f"FP8 QuantLinear scales per tensor (-1) or per channel (None), not groups of {group_size}.",
                                "Pass group_size=-1 or group_size=None.")
        group_size = None if fmt == "int8" else group_size
        self.in_features, self.out_features, self.fmt, self.group_size = in_features, out_features, fmt, group_size
        self.activations = activations
        N, K = out_features, in_features
        scale_dtype = stored_scale_dtype(dtype)
        if fmt in ("int4", "nf4"):
            self.register_buffer("qweight", torch.zeros(N, K // 2, dtype=torch.uint8, device=device))
            self.register_buffer("scales", torch.zeros(N, K // group_size, dtype=scale_dtype, device=device))
            if fmt == "int4":
                self.register_buffer("zeros", torch.zeros(N, K // group_size, dtype=scale_dtype, device=device))
        elif fmt == "int8":
            self.register_buffer("qweight", torch.zeros(N, K, dtype=torch.int8, device=device))
            self.register_buffer("scales", torch.zeros(N, 1, dtype=scale_dtype, device=device))
            if activations == "int8_static":
                self.register_buffer("input_scale", torch.ones(1, device=device))
        else:  # FP8 scales stay float32, the type torch._scaled_mm takes
            self.register_buffer("qweight", torch.zeros(N, K, dtype=torch.float8_e4m3fn, device=device))
            self.register_buffer("scales", torch.zeros(1 if group_size == -1 else N, 1, device=device))
            if activations == "fp8_static":
                self.register_buffer("input_scale", torch.ones(1, device=device))
        self.register_buffer("bias", torch.zeros(N, dtype=dtype, device=device) if bias else None)
        self.marlin_cache = None   # the INT4 codes as the Marlin-style kernel reads them (kernel_paths.marlin_weight)

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: str = "int4", group_size: int | None = 128,
                    codes: torch.Tensor | None = None, scales: torch.Tensor | None = None,
                    zeros: torch.Tensor | None = None, symmetric: bool = False, activations: str | None = None,
                    input_scale: torch.Tensor | None = None) -> "QuantLinear":
        """Quantize `linear` round-to-nearest, or store codes/scales/zeros computed elsewhere (GPTQ, AWQ).

        INT4 codes are [N, K] in 0..15 with zeros [N, K // g]; signed codes (-8..7, zeros 0, as
        `quantize_int` gives for symmetric grids) are shifted by 8. INT8 codes are signed with
        per-channel scales [N, 1]. FP8 takes the weights only (group_size -1: per tensor, None: per
        channel); with activations "int8_static" or "fp8_static", the float32 `input_scale` [1].
        """
        w = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, fmt, group_size, linear.bias is not None,
                    w.dtype, w.device, activations)
        if activations in ("int8_static", "fp8_static"):
            layer.input_scale.copy_(input_scale)
        if codes is None:
            codes, scales, zeros = layer.quantize_weight(w, symmetric)
        layer.store(codes, scales, zeros)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    @torch.no_grad()
    def quantize_weight(self, w: torch.Tensor, symmetric: bool = False):
        """Round-to-nearest codes, scales and zeros of `w` as `store` takes them: the grids of
        `common.quant.formats`, with scales rounded to their stored dtype first, as the fake quantizers
        round them, so that a packed layer computes exactly what its fake-quantized linear did."""
        if self.fmt == "fp8":   # FP8 scales stay float32
            codes, scale = fp8_codes(w, "fp8_e4m3", self.group_size)
            return codes.reshape(w.shape), scale.reshape(self.scales.shape), None
        if self.fmt == "nf4":
            codes, scale = nf4_codes(w, self.group_size, self.scales.dtype)
            return codes.reshape(w.shape), scale.reshape(self.scales.shape), None
        bits = 4 if self.fmt == "int4" else 8
        symmetric = symmetric or self.fmt == "int8"  # INT8 stores no zero points
        codes, scale, zero = int_codes(w, bits, self.group_size, symmetric, self.scales.dtype)
        zeros = None if self.fmt == "int8" else zero.reshape(self.scales.shape)
        return codes.reshape(w.shape), scale.reshape(self.scales.shape), zeros

    @torch.no_grad()
    def store(self, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None) -> None:
        expect = tuple(self.scales.shape)
        if tuple(scales.shape) != expect:
            raise WorkshopError(f"scales have shape {tuple(scales.shape)}, expected {expect} for {self.fmt} "
                                f"with group size {self.group_size}.", "Compute one scale per group of each row.")
        if self.fmt == "int4":
            if zeros is None:
                raise WorkshopError("INT4 codes came without zero points.",
                                    "Pass zeros [N, K // group_size] (all 8, or 0 with signed codes, when symmetric).")
            zeros = zeros.float()
            if codes.min() < 0:  # signed symmetric codes: move them to 0..15 around zero point 8
                codes, zeros = codes + 8, zeros + 8
            self.qweight.copy_(pack_int4(codes.round()))
            self.zeros.copy_(zeros)
        elif self.fmt == "nf4":  # codes: indices 0..15 into the NF4 levels
            self.qweight.copy_(pack_int4(codes))
        else:  # int8 codes, or FP8: the scaled weights, rounded by the cast (nearest even)
            self.qweight.copy_(codes.to(self.qweight.dtype))
        self.scales.copy_(scales)

    def int4_symmetric(self) -> bool:
        """An INT4 layer whose grid has no zero points (every stored zero is 8, the layout's zero)."""
        return self.fmt == "int4" and bool((self.zeros == 8).all())

    def int4_signed_codes(self) -> torch.Tensor:
        """An INT4 layer's codes as signed integers -8..7 [out, in] (stored shifted by 8)."""
        return unpack_int4(self.qweight).to(torch.int16) - 8

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.fmt == "int4":
            w = dequantize_int4(self.qweight, self.scales, self.zeros, self.group_size)
        elif self.fmt == "nf4":
            levels = nf4_levels().to(self.qweight.device)[unpack_int4(self.qweight).long()]
            w = levels * self.scales.float().repeat_interleave(self.group_size, dim=1)
        else:
            w = self.qweight.float() * self.scales.float()
        return w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if (out := kernel_output(self, x)) is not None:   # a GPU kernel that takes this layer and input
            return out if bias is None else out + bias
        if self.activations == "int8_per_token":
            x = fake_quant_int(x.reshape(-1, x.shape[-1]), 8, None, True).reshape(x.shape)
        elif self.activations in ("int8_static", "fp8_static"):  # in float32, as the hooks of fake quantization
            x = quantize_static(x, self.input_scale, STATIC_GRID[self.activations])
        # The reference, and many rows (prefill): dequantize once, then a dense tensor-core matmul.
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, fmt={self.fmt}, "
                f"group_size={self.group_size}, activations={self.activations}, bias={self.bias is not None}")


def replace_linears(model: nn.Module, fmt: str = "int4", group_size: int | None = 128,
                    skip=("lm_head",), symmetric: bool = False, progress: bool = True) -> nn.Module:
    """Every nn.Linear whose name contains none of `skip` replaced by a round-to-nearest QuantLinear."""
    names = [name for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and not any(s in name for s in skip)]
    for name in tqdm(names, desc=f"quantizing to {fmt}", disable=not progress, leave=False):
        model.set_submodule(name, QuantLinear.from_linear(model.get_submodule(name), fmt, group_size, symmetric=symmetric))
    return model
