"""W4A16: 4-bit weights, 16-bit activations, dequantization fused into the matmul (Triton).

Weight layout (the one `common.quant.qlinear.QuantLinear` stores and `pack_int4` writes), for W [N, K]:
  qweight  uint8 [N, K // 2]  byte j of row n holds the code of k = 2j in its low nibble and of
                              k = 2j + 1 in its high nibble; codes are 0..15
  scales   [N, K // group]    fp16 or bf16
  zeros    [N, K // group]    same dtype; w[n, k] = (code - zeros[n, k // group]) * scales[n, k // group]

Why it is fast: decode multiplies a few rows of activations by the whole weight, so the time is the
time to read the weight. Reading 4-bit codes instead of bf16 reads ~4x fewer bytes; the unpacking
and scaling happen in registers, never in memory.

Two kernels: a GEMV for one activation row (each program reduces BLOCK_N output rows over some of
the groups with plain multiply-adds; the groups of a row are split across SPLIT_K programs so that all
SMs read at once), and a tiled tensor-core GEMM for M >= 2 (also split along K for small M). Packed columns are used as they come: the
even inputs x[:, 0::2] meet the low nibbles and the odd inputs x[:, 1::2] the high nibbles, so the
codes are never interleaved back. K is a compile-time constant: a model has a handful of distinct
input widths, and constant loop bounds let the compiler unroll and pipeline the K loop.
"""
import os

import torch
import triton
import triton.language as tl

from common.errors import WorkshopError


@triton.jit
def _gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, N, K: tl.constexpr, stride_qn, stride_sn,
                 GROUP: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS_PER_STEP: tl.constexpr, SPLIT_K: tl.constexpr):
    # sum_k (q - z) * s * x  =  s * (sum_k q * x  -  z * sum_k x)  within a group: the scale and zero
    # are applied once per group, not once per weight.
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    HALF: tl.constexpr = GROUP // 2
    NUM_GROUPS: tl.constexpr = K // GROUP
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    in_step = tl.arange(0, GROUPS_PER_STEP)
    pairs = tl.arange(0, HALF)
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for step in range(0, tl.cdiv(NUM_GROUPS, SPLIT_K * GROUPS_PER_STEP)):
        groups = (step * SPLIT_K + pid_k) * GROUPS_PER_STEP + in_step  # groups dealt round-robin to SPLIT_K programs
        g_ok = groups < NUM_GROUPS
        byte_cols = groups[:, None] * HALF + pairs[None, :]                     # [G, HALF]
        packed = tl.load(qw_ptr + rows[:, None, None] * stride_qn + byte_cols[None, :, :],
                         mask=row_ok[:, None, None] & g_ok[None, :, None], other=0)  # [BLOCK_N, G, HALF]
        rg_ok = row_ok[:, None] & g_ok[None, :]
        scale = tl.load(s_ptr + rows[:, None] * stride_sn + groups[None, :], mask=rg_ok, other=0).to(tl.float32)
        zero = tl.load(z_ptr + rows[:, None] * stride_sn + groups[None, :], mask=rg_ok, other=0).to(tl.float32)
        k_even = 2 * byte_cols
        x_even = tl.load(x_ptr + k_even, mask=g_ok[:, None], other=0).to(tl.float32)   # [G, HALF]
        x_odd = tl.load(x_ptr + k_even + 1, mask=g_ok[:, None], other=0).to(tl.float32)
        qx = tl.sum((packed & 0xF).to(tl.float32) * x_even[None, :, :], axis=2) \
            + tl.sum((packed >> 4).to(tl.float32) * x_odd[None, :, :], axis=2)        # [BLOCK_N, G]
        x_sum = tl.sum(x_even, axis=1) + tl.sum(x_odd, axis=1)                        # [G]
        acc += tl.sum(scale * (qx - zero * x_sum[None, :]), axis=1)
    if SPLIT_K == 1:
        tl.store(out_ptr + rows, acc.to(out_ptr.dtype.element_ty), mask=row_ok)
    else:
        tl.atomic_add(out_ptr + rows, acc, mask=row_ok)


@triton.jit
def _gemm_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, M, N, K: tl.constexpr,
                 stride_xm, stride_qn, stride_sn, stride_om, GROUP: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr):
    # One quantization group per step: its scale and zero are one value per output row.
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    HALF: tl.constexpr = GROUP // 2
    NUM_GROUPS: tl.constexpr = K // GROUP
    rows_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rows_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    pairs = tl.arange(0, HALF)
    m_ok = rows_m < M
    n_ok = rows_n < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for step in range(0, tl.cdiv(NUM_GROUPS, SPLIT_K)):
        g = step * SPLIT_K + pid_k
        g_ok = g < NUM_GROUPS
        packed = tl.load(qw_ptr + rows_n[:, None] * stride_qn + g * HALF + pairs[None, :],
                         mask=n_ok[:, None] & g_ok, other=0)                          # [BLOCK_N, HALF]
        scale = tl.load(s_ptr + rows_n * stride_sn + g, mask=n_ok & g_ok, other=0).to(tl.float32)
        zero = tl.load(z_ptr + rows_n * stride_sn + g, mask=n_ok & g_ok, other=0).to(tl.float32)
        x_rows = x_ptr + rows_m[:, None] * stride_xm + g * GROUP + 2 * pairs[None, :]
        x_even = tl.load(x_rows, mask=m_ok[:, None] & g_ok, other=0)                  # [BLOCK_M, HALF]
        x_odd = tl.load(x_rows + 1, mask=m_ok[:, None] & g_ok, other=0)
        w_even = (((packed & 0xF).to(tl.float32) - zero[:, None]) * scale[:, None]).to(x_even.dtype)
        w_odd = (((packed >> 4).to(tl.float32) - zero[:, None]) * scale[:, None]).to(x_odd.dtype)
        acc = tl.dot(x_even, tl.trans(w_even), acc)
        acc = tl.dot(x_odd, tl.trans(w_odd), acc)
    out = out_ptr + rows_m[:, None] * stride_om + rows_n[None, :]
    mask = m_ok[:, None] & n_ok[None, :]
    if SPLIT_K == 1:
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(out, acc, mask=mask)


# ---------------------------------------------------------------------------------------------
# Launch configurations: a few candidates per regime, the fastest picked once per shape on the GPU
# (a hand-rolled autotuner, so the choice is visible and cached in CONFIG_CACHE).
# ---------------------------------------------------------------------------------------------
GEMV_CONFIGS = [dict(BLOCK_N=bn, GROUPS_PER_STEP=g, SPLIT_K=sk, num_warps=4)
                for bn in (8, 16, 32) for g in (1, 2, 4) for sk in (1, 4, 8)]
GEMM_CONFIGS = [dict(BLOCK_M=bm, BLOCK_N=bn, SPLIT_K=sk, num_warps=w, num_stages=3)
                for bm, bn, sk, w in [(16, 32, 4, 4), (16, 64, 4, 4), (16, 64, 1, 4), (16, 128, 2, 4),
                                      (32, 64, 2, 4), (32, 128, 1, 4), (64, 64, 1, 4), (64, 128, 1, 4),
                                      (128, 128, 1, 8), (128, 256, 1, 8)]]
CONFIG_CACHE: dict = {}
INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


def check_w4a16_inputs(x, qweight, scales, zeros, group_size):
    N, K = qweight.shape[0], qweight.shape[1] * 2
    if x.shape[-1] != K:
        raise WorkshopError(f"Activations have {x.shape[-1]} inputs but the packed weight has {K}.",
                            "Pass the layer's own input.")
    power_of_two = group_size >= 32 and group_size & (group_size - 1) == 0
    if K % group_size or not power_of_two or scales.shape != (N, K // group_size) or zeros.shape != scales.shape:
        raise WorkshopError(f"The W4A16 kernel needs a power-of-two group size of at least 32 that divides K "
                            f"(here group {group_size}, K {K}), with scales and zeros of shape [N, K // group].",
                            "Use the dequantize-then-matmul reference path for this layer.")
    sixteen_bit = (torch.float16, torch.bfloat16)
    if qweight.dtype != torch.uint8 or x.dtype not in sixteen_bit or scales.dtype not in sixteen_bit \
            or zeros.dtype not in sixteen_bit:
        raise WorkshopError("The W4A16 kernel takes uint8 packed weights and fp16/bf16 activations, scales and zeros.",
                            "Convert the activations with .half() or .bfloat16().")


def _run(x2d, qweight, scales, zeros, group_size, config):
    M, K = x2d.shape
    N = qweight.shape[0]
    split = config["SPLIT_K"]
    # split-K programs add their partial sums atomically into a zeroed float32 buffer
    out = torch.zeros(M, N, device=x2d.device, dtype=torch.float32) if split > 1 else \
        torch.empty(M, N, device=x2d.device, dtype=x2d.dtype)
    if M == 1:
        grid = (triton.cdiv(N, config["BLOCK_N"]), split)
        _gemv_kernel[grid](x2d, qweight, scales, zeros, out, N, K, qweight.stride(0), scales.stride(0),
                           GROUP=group_size, **config)
    else:
        grid = (triton.cdiv(M, config["BLOCK_M"]), triton.cdiv(N, config["BLOCK_N"]), split)
        _gemm_kernel[grid](x2d, qweight, scales, zeros, out, M, N, K, x2d.stride(0), qweight.stride(0),
                           scales.stride(0), out.stride(0), GROUP=group_size, **config)
    return out.to(x2d.dtype)


def _pick_config(x2d, qweight, scales, zeros, group_size):
    M, K = x2d.shape
    regime = 1 if M == 1 else min(triton.next_power_of_2(M), 256)
    key = (regime, qweight.shape[0], K, group_size, x2d.dtype)
    if key not in CONFIG_CACHE:
        candidates = GEMV_CONFIGS if M == 1 else GEMM_CONFIGS
        if INTERPRETING or x2d.device.type != "cuda":
            CONFIG_CACHE[key] = candidates[0]
        else:
            timings, errors = [], []
            for config in candidates:
                try:
                    # graph replays: the kernel's time, not Python's launch overhead
                    ms = triton.testing.do_bench_cudagraph(
                        lambda: _run(x2d, qweight, scales, zeros, group_size, config), rep=20, return_mode="median")
                except Exception as error:  # a config may not fit this GPU's shared memory or registers
                    errors.append(error)
                    continue
                timings.append((ms, config))
            if not timings:
                raise WorkshopError(f"No launch configuration of the W4A16 kernel ran on this GPU; the first "
                                    f"failure was: {str(errors[0]).splitlines()[0][:300]}",
                                    "Use the dequantize-then-matmul reference path (QuantLinear on the CPU, or "
                                    "report the GPU and Triton version).")
            CONFIG_CACHE[key] = min(timings, key=lambda t: t[0])[1]
    return CONFIG_CACHE[key]


# A custom op, so that torch.compile treats the kernel as one opaque call (its Python-side config
# choice cannot be traced) instead of breaking the compiled graph around it.
@torch.library.custom_op("workshop::w4a16_matmul", mutates_args=())
def w4a16_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor,
                 group_size: int = 128) -> torch.Tensor:
    """x [..., K] (fp16/bf16) times the dequantized packed weight transposed: [..., N]."""
    check_w4a16_inputs(x, qweight, scales, zeros, group_size)
    x2d = x.reshape(-1, x.shape[-1]).contiguous()
    config = _pick_config(x2d, qweight, scales, zeros, group_size)
    return _run(x2d, qweight, scales, zeros, group_size, config).view(*x.shape[:-1], qweight.shape[0])


@w4a16_matmul.register_fake
def _(x, qweight, scales, zeros, group_size=128):
    return x.new_empty(*x.shape[:-1], qweight.shape[0])
