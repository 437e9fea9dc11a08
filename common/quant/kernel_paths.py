"""Which kernel computes a QuantLinear's output, for the input it gets; `kernel_output` tries them in order.

1. Marlin-style CUDA kernel (kernels/marlin): INT4 layers, 1 to 64 rows of 16-bit input on a GPU.
2. Triton W4A16 kernel (kernels/w4a16): INT4 layers, up to 16 rows, where Marlin does not apply.
3. INT8 or FP8 tensor cores (kernels/gemm_paths, torch._scaled_mm): W8A8 layers on a GPU that has them.
Anywhere else (a CPU, many rows of prefill) `kernel_output` returns None and QuantLinear takes its
reference path: dequantize once, then one dense matmul. Every path computes the reference's numbers
up to the accumulation order (tests/test_kernels.py, test_marlin.py, test_qlinear.py).

The layer is read here, never imported: qlinear.py imports this module.
"""
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..errors import WorkshopError

TRITON_MAX_ROWS = 16  # above this, dequantize + cuBLAS beats the Triton kernel (kernels/RESULTS.md)
MARLIN_MAX_ROWS = 64  # the CUDA kernel's limit; up to it, it beats dequantize + cuBLAS (kernels/marlin/NOTES.md)


class MarlinCache(NamedTuple):
    key: tuple          # (tensor versions, device, dtype, data pointer) it was made from
    packed: object      # kernels.marlin.MarlinWeight
    splits: tuple       # K slices for 1-16, 17-32, 33-48 and 49-64 rows (kernels.marlin.choose_splits)

    def splits_for(self, x: torch.Tensor) -> int:
        return self.splits[(x.numel() // x.shape[-1] - 1) // 16]


def rows_of(x: torch.Tensor) -> int:
    return x.numel() // x.shape[-1]


def kernel_output(layer, x: torch.Tensor) -> torch.Tensor | None:
    """layer(x) without its bias from the first kernel above that takes this layer and input, else None."""
    if (marlin := marlin_for(layer, x)) is not None:
        from kernels.marlin import w4a16_marlin
        return w4a16_marlin(x, marlin.packed, marlin.splits_for(x))
    if uses_triton_w4a16(layer, x):
        from kernels.w4a16 import w4a16_matmul
        return w4a16_matmul(x, layer.qweight, layer.scales, layer.zeros, layer.group_size)  # 16-bit scales, either
    if layer.activations and uses_low_precision_gemm(layer):
        return low_precision_gemm(layer, x.reshape(rows_of(x), -1)).reshape(*x.shape[:-1], -1).to(x.dtype)
    return None


def uses_triton_w4a16(layer, x: torch.Tensor) -> bool:
    """Few rows (decode) of 16-bit input on a GPU, and a power-of-two group the kernel takes."""
    g = layer.group_size or 0
    return (layer.fmt == "int4" and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and g >= 32
            and g & (g - 1) == 0 and rows_of(x) <= TRITON_MAX_ROWS)


def uses_low_precision_gemm(layer) -> bool:
    """INT8 or FP8 tensor cores: on a GPU that has them, for shapes their PyTorch kernels take.
    Static INT8 scales are for exporting to TensorRT: here they take the reference path."""
    if not layer.qweight.is_cuda or layer.activations == "int8_static":
        return False
    capability = torch.cuda.get_device_capability(layer.qweight.device)
    needed = (7, 5) if layer.activations == "int8_per_token" else (8, 9)
    if capability < needed:  # said once per process (Python shows a warning once per place)
        warnings.warn(f"This GPU (sm_{capability[0]}{capability[1]}) has no {layer.fmt.upper()} tensor cores "
                      f"(sm_{needed[0]}{needed[1]}+): QuantLinear computes {layer.activations} layers with the "
                      "dequantize-then-matmul reference instead (same numbers, no speed-up).")
        return False
    if layer.activations == "int8_per_token":
        return layer.in_features % 8 == 0 and layer.out_features % 8 == 0
    return layer.in_features % 16 == 0 and layer.out_features % 16 == 0


def low_precision_gemm(layer, x: torch.Tensor) -> torch.Tensor:
    """x [rows, in] times the layer's INT8 or FP8 weight on tensor cores, in bf16 [rows, out].

    The kernels take M > 16 (INT8) or M a multiple of 16 (FP8): decode's few rows are padded with zero
    rows, which costs little since the time goes into reading the weight."""
    rows = x.shape[0]
    padded = max(rows + (-rows) % 8, 24) if layer.activations == "int8_per_token" else rows + (-rows) % 16
    if padded != rows:
        x = F.pad(x, (0, 0, 0, padded - rows))
    if layer.activations == "int8_per_token":
        from kernels.gemm_paths import int8_linear
        return int8_linear(x, layer.qweight, layer.scales.float())[:rows]
    from kernels.gemm_paths import quantize_rows
    x_fp8, _ = quantize_rows(x.contiguous(), torch.float8_e4m3fn, layer.input_scale)  # static scale, one pass
    if layer.scales.numel() == 1:
        out = torch._scaled_mm(x_fp8, layer.qweight.t(), scale_a=layer.input_scale, scale_b=layer.scales.view(()),
                               out_dtype=torch.bfloat16)
    else:  # per-channel weight scales: row-wise scaling, which wants a scale for every row of x too
        scale_a = layer.input_scale.expand(x.shape[0], 1).contiguous()
        out = torch._scaled_mm(x_fp8, layer.qweight.t(), scale_a=scale_a, scale_b=layer.scales.view(1, -1),
                               out_dtype=torch.bfloat16)
    return out[:rows]


def marlin_for(layer, x: torch.Tensor) -> MarlinCache | None:
    """`marlin_weight(layer, x)` where the layer's output for x comes from the Marlin-style kernel (INT4
    codes, at most 64 rows of input), else None."""
    return marlin_weight(layer, x) if layer.fmt == "int4" and rows_of(x) <= MARLIN_MAX_ROWS else None


def marlin_weight(layer, x: torch.Tensor) -> MarlinCache | None:
    """The layer's codes, scales and zeros repacked for the Marlin-style CUDA kernel (kernels/marlin), with
    the K slices it runs, for inputs like `x`; None where the kernel does not apply (CPU, float32, a shape
    or group it does not take, non-integer zeros, no nvcc to build it), so that another path runs.

    Kept on the layer beside the plain layout (which checkpoints and exports read), not in its state dict,
    and repacked when the plain tensors change (tensor versions) or x's device or dtype differs. Under
    torch.compile only a repacking made by an earlier eager call is used (the first eager forward, e.g.
    prefill, makes it)."""
    cached = layer.marlin_cache
    if torch.compiler.is_compiling():
        return cached if cached is not None and cached.key[1:3] == (x.device, x.dtype) else None
    if not (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16)):
        return None
    key = (tuple(t._version for t in (layer.qweight, layer.scales, layer.zeros)), x.device, x.dtype,
           layer.qweight.data_ptr())
    if cached is not None and cached.key == key:
        return cached
    from kernels import marlin
    group = layer.in_features if layer.group_size in (None, -1) else layer.group_size
    try:
        marlin.check_shapes(layer.out_features, layer.in_features, group)
    except WorkshopError:
        return None
    if not torch.equal(layer.zeros, layer.zeros.round()) or not marlin.usable(x.device):
        return None
    packed = marlin.repack(layer.qweight, layer.scales.to(x.dtype), layer.zeros.to(x.dtype), group)
    splits = tuple(marlin.choose_splits(layer.out_features, layer.in_features, group, rows, 0, x.device, x.dtype)
                   for rows in range(16, MARLIN_MAX_ROWS + 1, 16))
    layer.marlin_cache = MarlinCache(key, packed, splits)
    return layer.marlin_cache
