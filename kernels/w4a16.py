"""W4A16: 4-bit weights, 16-bit activations, dequantization fused into the matmul (Triton).

Weight layout (the one `common.quant.layout` defines, QuantLinear stores and `pack_int4` writes), for W [N, K]:
  qweight  uint8 [N, K // 2]  byte j of row n holds the code of k = 2j in its low nibble and of
                              k = 2j + 1 in its high nibble; codes are 0..15
  scales   [N, K // group]    fp16 or bf16
  zeros    [N, K // group]    same dtype; w[n, k] = (code - zeros[n, k // group]) * scales[n, k // group]

Why it is fast: decode multiplies a few rows of activations by the whole weight, so the time is the
time to read the weight. Reading 4-bit codes instead of bf16 reads ~4x fewer bytes; the unpacking
and scaling happen in registers, never in memory.

Three kernels, by the number of activation rows M:
  M = 1       a GEMV on CUDA cores: the packed weight is read as int32 words (8 codes each), each code
              becomes a float by a shift and a mask (no integer-to-float conversion), and the scale and
              zero are applied once per group. The groups of a row are split over SPLIT_K programs so
              that every SM reads at once.
  M = 2..16   the tensor cores with the weight tile as the left operand (out^T = W x^T): codes are
              unpacked two per instruction by a few lines of PTX straight into the registers the
              matrix instruction reads; the activations are padded to 16 columns, which costs no bytes.
  M > 16      a tiled tensor-core GEMM that dequantizes a group at a time (also split along K for small M).
Packed columns are used as they come: the even inputs x[:, 0::2] meet the low nibbles and the odd
inputs x[:, 1::2] the high nibbles, so the codes are never interleaved back. K is a compile-time
constant: a model has a handful of distinct input widths, and constant loop bounds let the compiler
unroll and pipeline the K loop. kernels/NOTES.md records what was measured and tried.
"""
import os

import torch
import triton
import triton.language as tl

from common.errors import WorkshopError


EXPONENT_16 = 0x41800000  # the float32 bits of 16.0


@triton.jit
def _code_plus_16(words, P: tl.constexpr, exponent_16):
    # Code P of each int32 word (bits 4P..4P+3) moved to mantissa bits 19-22 under the exponent of 16:
    # read as a float that is 16 + code. One shift and one LOP3 instead of an integer-to-float
    # conversion, which Hopper issues at a quarter of the FMA rate. exponent_16 is a kernel argument
    # (EXPONENT_16), not a literal: with the mask and the exponent both literals, ptxas emits two LOP3s.
    if 4 * P <= 19:
        bits = (words << (19 - 4 * P)) & 0x00780000
    else:
        bits = (words >> (4 * P - 19)) & 0x00780000
    return (bits | exponent_16).to(tl.float32, bitcast=True)


@triton.jit
def _gemv_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, N, K: tl.constexpr, stride_qn, stride_sn, exponent_16,
                 GROUP: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr, GROUPS_PER_STEP: tl.constexpr):
    # One activation row. qw_ptr is the packed weight read as int32 words: code p of word i is k = 8i + p.
    # Within a group, sum_k (q - z) s x = s (sum_k (16 + q) x - (16 + z) sum_k x): the multiply-adds
    # use 16 + q as it comes out of _code_plus_16, and the scale and zero are applied once per group.
    WORDS: tl.constexpr = GROUP // 8
    G: tl.constexpr = GROUPS_PER_STEP
    STEPS: tl.constexpr = K // GROUP // SPLIT_K // G  # each program reads one contiguous K slice
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    grp = tl.arange(0, G)
    words = tl.arange(0, WORDS)
    first = pid_k * STEPS * G
    w_ptrs = qw_ptr + rows[:, None, None] * stride_qn + (first + grp[None, :, None]) * WORDS + words[None, None, :]
    sz_offsets = rows[:, None] * stride_sn + first + grp[None, :]
    x_ptrs = x_ptr + (first + grp[:, None]) * GROUP + words[None, :] * 8
    w = tl.load(w_ptrs, mask=row_ok[:, None, None], other=0)
    s = tl.load(s_ptr + sz_offsets, mask=row_ok[:, None], other=0)
    z = tl.load(z_ptr + sz_offsets, mask=row_ok[:, None], other=0)
    acc = tl.zeros((BLOCK_N, G, WORDS), tl.float32)
    for step in range(STEPS):
        # the next step's weights are requested before this step's arithmetic (the last step reloads itself)
        following = tl.minimum(step + 1, STEPS - 1) * G
        w_next = tl.load(w_ptrs + following * WORDS, mask=row_ok[:, None, None], other=0)
        s_next = tl.load(s_ptr + sz_offsets + following, mask=row_ok[:, None], other=0)
        z_next = tl.load(z_ptr + sz_offsets + following, mask=row_ok[:, None], other=0)
        part = tl.zeros((BLOCK_N, G, WORDS), tl.float32)
        x_sum = tl.zeros((G, WORDS), tl.float32)
        for p in tl.static_range(8):
            xp = tl.load(x_ptrs + step * G * GROUP + p).to(tl.float32)
            part += _code_plus_16(w, p, exponent_16) * xp[None, :, :]
            x_sum += xp
        acc += s.to(tl.float32)[:, :, None] * (part - (16.0 + z.to(tl.float32))[:, :, None] * x_sum[None, :, :])
        w, s, z = w_next, s_next, z_next
    out = tl.sum(tl.sum(acc, 2), 1)
    if SPLIT_K == 1:
        tl.store(out_ptr + rows, out.to(out_ptr.dtype.element_ty), mask=row_ok)
    else:
        tl.atomic_add(out_ptr + rows, out, mask=row_ok)


# Four packed bytes in one register -> their four low and four high codes as 16-bit floats MAGIC | code
# (bf16 0x4300 | code = 128 + code; fp16 0x6400 | code = 1024 + code). PRMT spreads two bytes into the
# two halves of a register and one LOP3 masks a code into each half and ORs the exponent: two codes per
# instruction, already in the register pairs the tensor cores read.
_UNPACK = """{
.reg .b32 t01, t23, zero;
mov.b32 zero, 0;
prmt.b32 t01, $4, zero, 0x4140;
prmt.b32 t23, $4, zero, 0x4342;
lop3.b32 $0, t01, 0x000F000F, MAGIC, 0xEA;
lop3.b32 $1, t23, 0x000F000F, MAGIC, 0xEA;
shr.b32 t01, t01, 4;
shr.b32 t23, t23, 4;
lop3.b32 $2, t01, 0x000F000F, MAGIC, 0xEA;
lop3.b32 $3, t23, 0x000F000F, MAGIC, 0xEA;
}"""
UNPACK_BF16 = tl.constexpr(_UNPACK.replace("MAGIC", "0x43004300"))
UNPACK_FP16 = tl.constexpr(_UNPACK.replace("MAGIC", "0x64006400"))


@triton.jit
def _small_m_kernel(x_ptr, qw_ptr, s_ptr, z_ptr, out_ptr, M, N, K: tl.constexpr, stride_xm, stride_qn, stride_sn,
                    stride_om, GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                    SPLIT_K: tl.constexpr, USE_PTX: tl.constexpr):
    # 2..16 activation rows on the tensor cores, computed as out^T = W x^T: the weight tile is the
    # left operand, which Hopper's wgmma takes from registers, so the unpacked codes never go through
    # shared memory, and the few activation rows are the narrow right operand (padded to 16).
    # The codes enter the product as MAGIC | code = OFFSET + code, exactly; per group
    # sum_k (q - z) s x = s (sum_k (OFFSET + q) x - (OFFSET + z) sum_k x).
    HALF: tl.constexpr = GROUP // 2
    STEPS: tl.constexpr = K // GROUP // SPLIT_K
    FP16: tl.constexpr = x_ptr.dtype.element_ty == tl.float16
    MAGIC: tl.constexpr = 0x6400 if FP16 else 0x4300
    OFFSET: tl.constexpr = 1024.0 if FP16 else 128.0
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_m = tl.arange(0, BLOCK_M)
    pairs = tl.arange(0, HALF)
    n_ok = rows_n < N
    m_ok = rows_m < M
    acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    for step in range(STEPS):
        g = pid_k * STEPS + step
        packed = tl.load(qw_ptr + rows_n[:, None] * stride_qn + g * HALF + pairs[None, :], mask=n_ok[:, None], other=0)
        if USE_PTX:
            lo, hi = tl.inline_asm_elementwise(UNPACK_FP16 if FP16 else UNPACK_BF16, "=r,=r,=r,=r,r", [packed],
                                               dtype=(x_ptr.dtype.element_ty,) * 2, is_pure=True, pack=4)
        else:  # Triton's interpreter runs no PTX: the same values, one code at a time
            lo = ((packed & 0xF).to(tl.int16) | MAGIC).to(x_ptr.dtype.element_ty, bitcast=True)
            hi = ((packed >> 4).to(tl.int16) | MAGIC).to(x_ptr.dtype.element_ty, bitcast=True)
        x_cols = x_ptr + rows_m[None, :] * stride_xm + g * GROUP + 2 * pairs[:, None]
        x_even = tl.load(x_cols, mask=m_ok[None, :], other=0)  # [HALF, BLOCK_M]: inputs that meet low nibbles
        x_odd = tl.load(x_cols + 1, mask=m_ok[None, :], other=0)
        part = tl.dot(hi, x_odd, tl.dot(lo, x_even))
        x_sum = tl.sum(x_even.to(tl.float32), 0) + tl.sum(x_odd.to(tl.float32), 0)
        s = tl.load(s_ptr + rows_n * stride_sn + g, mask=n_ok, other=0).to(tl.float32)
        z = tl.load(z_ptr + rows_n * stride_sn + g, mask=n_ok, other=0).to(tl.float32)
        acc += s[:, None] * (part - (OFFSET + z)[:, None] * x_sum[None, :])
    out = out_ptr + rows_m[None, :] * stride_om + rows_n[:, None]
    mask = n_ok[:, None] & m_ok[None, :]
    if SPLIT_K == 1:
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        tl.atomic_add(out, acc, mask=mask)


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
# Small layers (SmolLM2: 576 or 1536 inputs, 9 or 12 groups) want narrow row blocks and several groups
# per step (their time is latency); large ones want wide blocks split along K.
GEMV_CONFIGS = [dict(BLOCK_N=bn, SPLIT_K=sk, GROUPS_PER_STEP=g, num_warps=w)
                for bn, w in ((8, 1), (8, 4), (64, 4), (128, 4)) for sk in (1, 3, 4, 8) for g in (1, 2, 4)]
SMALL_M_CONFIGS = [dict(BLOCK_M=16, BLOCK_N=64, SPLIT_K=sk, num_warps=4, num_stages=ns)
                   for sk in (1, 2, 3, 4, 8) for ns in (2, 3)]
GEMM_CONFIGS = [dict(BLOCK_M=bm, BLOCK_N=bn, SPLIT_K=sk, num_warps=w, num_stages=3)
                for bm, bn, sk, w in [(16, 32, 4, 4), (16, 64, 4, 4), (16, 64, 1, 4), (16, 128, 2, 4),
                                      (32, 64, 2, 4), (32, 128, 1, 4), (64, 64, 1, 4), (64, 128, 1, 4),
                                      (128, 128, 1, 8), (128, 256, 1, 8)]]
SMALL_M = 16  # up to this many activation rows, the tensor-core kernel with the weight as left operand
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


def candidate_configs(M, K, group_size):
    """The launch configurations that apply: the GEMV and small-M kernels need SPLIT_K x GROUPS_PER_STEP
    to divide the number of groups (each program reads whole groups of one contiguous K slice)."""
    if M == 1:
        return [c for c in GEMV_CONFIGS if (K // group_size) % (c["SPLIT_K"] * c["GROUPS_PER_STEP"]) == 0]
    if M <= SMALL_M:
        return [c for c in SMALL_M_CONFIGS if (K // group_size) % c["SPLIT_K"] == 0]
    return GEMM_CONFIGS


def _run(x2d, qweight, scales, zeros, group_size, config):
    M, K = x2d.shape
    N = qweight.shape[0]
    split = config["SPLIT_K"]
    # split-K programs add their partial sums atomically into a zeroed float32 buffer
    out = torch.zeros(M, N, device=x2d.device, dtype=torch.float32) if split > 1 else \
        torch.empty(M, N, device=x2d.device, dtype=x2d.dtype)
    if M == 1:
        words = qweight.contiguous().view(torch.int32)  # 8 codes per word (K is a multiple of the group, >= 32)
        grid = (triton.cdiv(N, config["BLOCK_N"]), split)
        _gemv_kernel[grid](x2d, words, scales, zeros, out, N, K, words.stride(0), scales.stride(0), EXPONENT_16,
                           GROUP=group_size, **config)
    elif M <= SMALL_M:
        grid = (triton.cdiv(N, config["BLOCK_N"]), split)
        _small_m_kernel[grid](x2d, qweight, scales, zeros, out, M, N, K, x2d.stride(0), qweight.stride(0),
                              scales.stride(0), out.stride(0), GROUP=group_size,
                              USE_PTX=x2d.device.type == "cuda" and not INTERPRETING, **config)
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
        candidates = candidate_configs(M, K, group_size)
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
