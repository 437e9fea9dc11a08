"""QuantLinear: a linear layer that stores real quantized weights (packed codes, scales, zeros).

Packed INT4 layout (the contract with the Triton kernel of kernels/; do not change one side alone):
  weight W is [N = out_features, K = in_features]; groups of `group_size` g run along K;
  `qweight` uint8 [N, K // 2]: byte j of row n holds the code of k = 2j in its LOW nibble and of
            k = 2j + 1 in its HIGH nibble; codes q are 0..15 (symmetric quantization uses zero = 8);
  `scales`, `zeros` [N, K // g], float16 (bfloat16 when the model is bf16);
  dequantization: w[n, k] = (q[n, k] - zeros[n, k // g]) * scales[n, k // g].
INT8: `qweight` int8 [N, K] and per-channel `scales` [N, 1]; w = q * scale.
FP8:  `qweight` float8_e4m3fn [N, K] and a float32 `scales` per tensor [1, 1] or per channel [N, 1].

Everything is a buffer, so `stored_bytes`, `state_dict()` and `save_pretrained` see what is stored.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..errors import WorkshopError
from .formats import _grouped, int_scale_zero, quantize_int

QUANT_LINEAR_FORMATS = ("int4", "int8", "fp8")
KERNEL_MAX_ROWS = 16  # above this, dequantize + cuBLAS beats the fused kernel (kernels/RESULTS.md)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] codes in 0..15 -> uint8 [N, K // 2]: even k in the low nibble, odd k in the high one."""
    if codes.shape[-1] % 2:
        raise WorkshopError(f"Cannot pack {codes.shape[-1]} int4 codes per row into bytes.",
                            "Pack rows of even length (every layer of the course models is).")
    if codes.min() < 0 or codes.max() > 15:
        raise WorkshopError("INT4 codes must be in 0..15 to pack.", "Shift signed codes by 8 (zero point 8).")
    codes = codes.to(torch.uint8)
    return codes[:, 0::2] | (codes[:, 1::2] << 4)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """uint8 [N, K // 2] -> uint8 codes [N, K], the inverse of `pack_int4`."""
    return torch.stack([packed & 0xF, packed >> 4], dim=-1).reshape(packed.shape[0], -1)


def dequantize_int4(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """The reference dequantization of the packed layout, in float32: [N, K]."""
    q = unpack_int4(qweight).float()
    return (q - zeros.float().repeat_interleave(group_size, dim=1)) * scales.float().repeat_interleave(group_size, dim=1)


class QuantLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, fmt: str = "int4", group_size: int | None = 128,
                 bias: bool = False, dtype: torch.dtype = torch.float32, device=None):
        """An empty layer (all codes zero) of the given shape; `dtype` is the model's: scales are bf16
        for a bf16 model and fp16 otherwise, the bias keeps `dtype`. INT8 is always per channel."""
        super().__init__()
        if fmt not in QUANT_LINEAR_FORMATS:
            raise WorkshopError(f"QuantLinear does not store {fmt!r}.", f"Use one of {', '.join(QUANT_LINEAR_FORMATS)}.")
        if fmt == "int4" and (group_size is None or group_size <= 0 or in_features % group_size):
            raise WorkshopError(f"INT4 group size {group_size} does not divide in_features={in_features}.",
                                "Use a positive group size that divides it (e.g. 128, or 64 for 576-wide layers).")
        if fmt == "fp8" and group_size not in (-1, None):
            raise WorkshopError(f"FP8 QuantLinear scales per tensor (-1) or per channel (None), not groups of {group_size}.",
                                "Pass group_size=-1 or group_size=None.")
        group_size = None if fmt == "int8" else group_size
        self.in_features, self.out_features, self.fmt, self.group_size = in_features, out_features, fmt, group_size
        N, K = out_features, in_features
        scale_dtype = torch.bfloat16 if dtype == torch.bfloat16 else torch.float16
        if fmt == "int4":
            self.register_buffer("qweight", torch.zeros(N, K // 2, dtype=torch.uint8, device=device))
            self.register_buffer("scales", torch.zeros(N, K // group_size, dtype=scale_dtype, device=device))
            self.register_buffer("zeros", torch.zeros(N, K // group_size, dtype=scale_dtype, device=device))
        elif fmt == "int8":
            self.register_buffer("qweight", torch.zeros(N, K, dtype=torch.int8, device=device))
            self.register_buffer("scales", torch.zeros(N, 1, dtype=scale_dtype, device=device))
        else:  # FP8 scales stay float32, the type torch._scaled_mm takes
            self.register_buffer("qweight", torch.zeros(N, K, dtype=torch.float8_e4m3fn, device=device))
            self.register_buffer("scales", torch.zeros(1 if group_size == -1 else N, 1, device=device))
        self.register_buffer("bias", torch.zeros(N, dtype=dtype, device=device) if bias else None)

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: str = "int4", group_size: int | None = 128,
                    codes: torch.Tensor | None = None, scales: torch.Tensor | None = None,
                    zeros: torch.Tensor | None = None, symmetric: bool = False) -> "QuantLinear":
        """Quantize `linear` round-to-nearest, or store codes/scales/zeros computed elsewhere (GPTQ, AWQ).

        INT4 codes are [N, K] in 0..15 with zeros [N, K // g]; signed codes (-8..7, zeros 0, as
        `quantize_int` gives for symmetric grids) are shifted by 8. INT8 codes are signed with
        per-channel scales [N, 1]. FP8 takes the weights only (group_size -1: per tensor, None: per channel).
        """
        w = linear.weight.detach()
        layer = cls(linear.in_features, linear.out_features, fmt, group_size, linear.bias is not None,
                    w.dtype, w.device)
        if codes is None:
            codes, scales, zeros = layer.quantize_weight(w, symmetric)
        layer.store(codes, scales, zeros)
        if linear.bias is not None:
            layer.bias.copy_(linear.bias.detach())
        return layer

    @torch.no_grad()
    def quantize_weight(self, w: torch.Tensor, symmetric: bool = False):
        """Round-to-nearest codes, scales and zeros of `w`, with scales rounded to their stored dtype first
        so that the codes are the nearest ones for the scales actually stored (as `fake_quant_int` with
        `scale_dtype`)."""
        if self.fmt == "fp8":
            fmax = torch.finfo(torch.float8_e4m3fn).max
            amax = _grouped(w, self.group_size).float().abs().amax(dim=1, keepdim=True)
            scale = amax.clamp(min=1e-12) / fmax
            return (w.float().reshape(scale.shape[0], -1) / scale).reshape(w.shape).clamp(-fmax, fmax), scale, None
        bits, group = (4, self.group_size) if self.fmt == "int4" else (8, None)
        symmetric = symmetric or self.fmt == "int8"  # INT8 stores no zero points
        groups = _grouped(w, group).float()
        scale, zero = int_scale_zero(groups, bits, symmetric)
        scale = scale.to(self.scales.dtype).float()
        q = quantize_int(groups, scale, zero, bits, symmetric)
        N = w.shape[0]
        return q.reshape(w.shape), scale.reshape(N, -1), (None if self.fmt == "int8" else zero.reshape(N, -1))

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
        else:  # int8 codes, or FP8: the scaled weights, rounded by the cast (nearest even)
            self.qweight.copy_(codes.to(self.qweight.dtype))
        self.scales.copy_(scales)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        if self.fmt == "int4":
            w = dequantize_int4(self.qweight, self.scales, self.zeros, self.group_size)
        else:
            w = self.qweight.float() * self.scales.float()
        return w.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        rows = x.numel() // x.shape[-1]
        if self.fmt == "int4" and self.uses_kernel(x) and rows <= KERNEL_MAX_ROWS:
            # Few rows (decode): the fused Triton W4A16 kernel reads the 4-bit codes directly.
            from kernels.w4a16 import w4a16_matmul
            out = w4a16_matmul(x, self.qweight, self.scales.to(x.dtype), self.zeros.to(x.dtype), self.group_size)
            return out if bias is None else out + bias
        # Reference path, and many rows (prefill): dequantize once, then a dense tensor-core matmul.
        return F.linear(x, self.dequantized_weight(x.dtype), bias)

    def uses_kernel(self, x: torch.Tensor) -> bool:
        g = self.group_size or 0
        return (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and g >= 32 and g & (g - 1) == 0)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, fmt={self.fmt}, "
                f"group_size={self.group_size}, bias={self.bias is not None}")


def replace_linears(model: nn.Module, fmt: str = "int4", group_size: int | None = 128,
                    skip=("lm_head",), symmetric: bool = False, progress: bool = True) -> nn.Module:
    """Every nn.Linear whose name contains none of `skip` replaced by a round-to-nearest QuantLinear."""
    names = [name for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and not any(s in name for s in skip)]
    for name in tqdm(names, desc=f"quantizing to {fmt}", disable=not progress, leave=False):
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        setattr(parent, child, QuantLinear.from_linear(getattr(parent, child), fmt, group_size, symmetric=symmetric))
    return model
