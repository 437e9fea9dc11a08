"""The other ways fewer bits or fewer non-zeros reach the tensor cores, through PyTorch's own kernels.

- INT8 W8A8: `torch._int_mm` (int8 x int8 -> int32 on the tensor cores), then a scale epilogue
  out = acc * x_scale[m] * w_scale[n] (per-token activation scales, per-channel weight scales).
- FP8 W8A8: `torch._scaled_mm` on E4M3 operands with per-tensor or row-wise scales (sm_89+).
- bf16 W4A16 baseline from PyTorch: tinygemm (`torch._weight_int4pack_mm`), group-wise asymmetric.
- 2:4 sparsity: `torch.sparse.to_sparse_semi_structured` (cuSPARSELt / CUTLASS, sm_80+).
Each needs CUDA; shape rules are checked here so a caller gets one clear message.

Quantizing the activations on the fly and scaling the INT8 result are memory-bound passes over
[M, K] and [M, N]: done as chains of PyTorch element-wise ops they read and write float32 copies
several times and can cost more than the low-precision GEMM saves (at 8192^3 they did: FP8 came out
1.04x bf16). Two small Triton kernels do each in one pass.
"""
import torch
import triton
import triton.language as tl

from common.errors import WorkshopError
from common.quant.formats import FP8_MAX

ROUND_MAGIC = tl.constexpr(12582912.0)  # 1.5 * 2^23: adding and subtracting it rounds a float32 to the nearest integer, ties to even


@triton.jit
def _quantize_rows_kernel(x_ptr, q_ptr, scale_ptr, K: tl.constexpr, stride_x, QMAX: tl.constexpr, EPS: tl.constexpr,
                          DYNAMIC: tl.constexpr, TO_INT: tl.constexpr, BLOCK_K: tl.constexpr):
    # One program per row. With per-row (dynamic) scales the row is read twice, the second time from cache.
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK_K)
    x_row = x_ptr + row * stride_x
    if DYNAMIC:
        amax = tl.zeros((BLOCK_K,), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            amax = tl.maximum(amax, tl.abs(tl.load(x_row + k0 + cols, mask=k0 + cols < K, other=0).to(tl.float32)))
        scale = tl.maximum(tl.max(amax, axis=0), EPS) / QMAX
        tl.store(scale_ptr + row, scale)
    else:
        scale = tl.load(scale_ptr)
    for k0 in range(0, K, BLOCK_K):
        ok = k0 + cols < K
        v = tl.load(x_row + k0 + cols, mask=ok, other=0).to(tl.float32) / scale
        v = tl.minimum(tl.maximum(v, -QMAX), QMAX)
        if TO_INT:
            v = (v + ROUND_MAGIC) - ROUND_MAGIC
        tl.store(q_ptr + row * K + k0 + cols, v.to(q_ptr.dtype.element_ty), mask=ok)


def quantize_rows(x: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | None = None):
    """x [M, K] to int8 (symmetric, round to nearest even) or FP8 E4M3 in one pass: (codes, scale).

    Without `scale`, one scale per row (per token) is computed as amax / qmax, returned as [M, 1]
    float32; with a one-element float32 `scale` (a static or per-tensor scale) that scale is used.
    """
    M, K = x.shape
    to_int = dtype == torch.int8
    q = torch.empty(M, K, device=x.device, dtype=dtype)
    out_scale = torch.empty(M, 1, device=x.device, dtype=torch.float32) if scale is None else scale.float().reshape(1)
    _quantize_rows_kernel[(M,)](x, q, out_scale, K, x.stride(0), QMAX=127.0 if to_int else FP8_MAX,
                                EPS=1e-8 if to_int else 1e-12, DYNAMIC=scale is None, TO_INT=to_int,
                                BLOCK_K=min(triton.next_power_of_2(K), 4096))
    return q, (out_scale if scale is None else scale)


@triton.jit
def _scale_int32_kernel(acc_ptr, xs_ptr, ws_ptr, out_ptr, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    ok = (rows < M)[:, None] & (cols < N)[None, :]
    acc = tl.load(acc_ptr + rows[:, None] * N + cols[None, :], mask=ok, other=0).to(tl.float32)
    xs = tl.load(xs_ptr + rows, mask=rows < M, other=0)
    ws = tl.load(ws_ptr + cols, mask=cols < N, other=0)
    tl.store(out_ptr + rows[:, None] * N + cols[None, :], (acc * xs[:, None] * ws[None, :]).to(out_ptr.dtype.element_ty),
             mask=ok)


def _need_cuda(what: str, capability: tuple = (8, 0)) -> None:
    if not torch.cuda.is_available():
        raise WorkshopError(f"{what} needs an NVIDIA GPU; this machine has none.",
                            "Use the reference (fake-quant) path, or run on a GPU.")
    if torch.cuda.get_device_capability() < capability:
        raise WorkshopError(f"{what} needs compute capability {capability[0]}.{capability[1]}+; this GPU is "
                            f"{'.'.join(map(str, torch.cuda.get_device_capability()))}.",
                            "Use the reference (fake-quant) path on this GPU.")


# --- INT8 --------------------------------------------------------------------------------------
def quantize_int8_rows(t: torch.Tensor):
    """Symmetric INT8 codes and one scale per row (per token for activations, per channel for weights)."""
    scale = t.abs().amax(dim=-1, keepdim=True).float().clamp(min=1e-8) / 127
    return torch.clamp(torch.round(t.float() / scale), -127, 127).to(torch.int8), scale


def int8_linear(x: torch.Tensor, w_int8: torch.Tensor, w_scale: torch.Tensor) -> torch.Tensor:
    """W8A8 linear: x [M, K] (quantized per token here), w_int8 [N, K], w_scale [N, 1]."""
    _need_cuda("INT8 GEMM", (7, 5))
    if x.shape[0] <= 16 or x.shape[1] % 8 or w_int8.shape[0] % 8:
        raise WorkshopError("torch._int_mm needs more than 16 rows and K, N multiples of 8.",
                            "Batch more tokens, or use the fake-quant path for small M.")
    x_int8, x_scale = quantize_rows(x.contiguous(), torch.int8)
    acc = torch._int_mm(x_int8, w_int8.t())
    out = torch.empty(acc.shape, device=x.device, dtype=x.dtype)
    grid = (triton.cdiv(acc.shape[0], 32), triton.cdiv(acc.shape[1], 128))
    _scale_int32_kernel[grid](acc, x_scale, w_scale.float().contiguous(), out, *acc.shape, BLOCK_M=32, BLOCK_N=128)
    return out


# --- FP8 ---------------------------------------------------------------------------------------
def quantize_fp8(t: torch.Tensor, rowwise: bool):
    amax = t.abs().amax(dim=-1, keepdim=True) if rowwise else t.abs().amax()
    scale = (amax.float().clamp(min=1e-12) / FP8_MAX)
    return (t.float() / scale).to(torch.float8_e4m3fn), scale


def fp8_linear(x: torch.Tensor, w_fp8: torch.Tensor, w_scale: torch.Tensor, rowwise: bool = False) -> torch.Tensor:
    """FP8 W8A8 linear: activations quantized on the fly (per tensor or per row), w_fp8 [N, K]."""
    _need_cuda("FP8 GEMM", (8, 9))
    if x.shape[0] % 16 or x.shape[1] % 16 or w_fp8.shape[0] % 16:
        raise WorkshopError("torch._scaled_mm needs M, K and N to be multiples of 16.",
                            "Pad the batch to a multiple of 16, or use the fake-quant path.")
    x = x.contiguous()
    # per tensor: the amax in one reduction (no |x| copy), then the one-pass quantizer with that scale
    x_fp8, x_scale = quantize_rows(x, torch.float8_e4m3fn, None if rowwise else
                                   torch.linalg.vector_norm(x, float("inf")).float().clamp(min=1e-12) / FP8_MAX)
    scale_b = w_scale.view(1, -1) if rowwise else w_scale
    return torch._scaled_mm(x_fp8, w_fp8.t(), scale_a=x_scale, scale_b=scale_b, out_dtype=torch.bfloat16)


# --- tinygemm (PyTorch's int4 weight-only kernel) ----------------------------------------------
def tinygemm_pack(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int = 128):
    """Our (codes, scales, integer zero points) to tinygemm's layout.

    tinygemm computes w = (code - 8) * scale + offset, so offset = (8 - zero) * scale.
    """
    packed = (codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8)  # tinygemm: high nibble first
    k = codes.shape[1]
    inner_k_tiles = next(t for t in (8, 4, 2) if k % (t * 32) == 0)
    weight = torch._convert_weight_to_int4pack(packed.contiguous(), inner_k_tiles)
    offset = (8 - zeros.float()) * scales.float()
    scales_and_zeros = torch.stack([scales.float(), offset], dim=-1).transpose(0, 1).contiguous().to(torch.bfloat16)
    return weight, scales_and_zeros


def tinygemm_linear(x: torch.Tensor, weight, scales_and_zeros, group_size: int = 128) -> torch.Tensor:
    return torch._weight_int4pack_mm(x, weight, group_size, scales_and_zeros)


# --- 2:4 ---------------------------------------------------------------------------------------
def two_four_sparse(weight: torch.Tensor):
    """A 2:4-pruned weight (the two largest of every four kept) as a semi-structured sparse tensor."""
    _need_cuda("2:4 sparse tensor cores", (8, 0))
    groups = weight.reshape(-1, 4)
    keep = groups.abs().topk(2, dim=1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(1, keep, True)
    dense = (groups * mask).reshape(weight.shape)
    return torch.sparse.to_sparse_semi_structured(dense), dense
