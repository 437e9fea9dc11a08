"""Checkers of lab 06 (Hardware and kernels)."""
import math

from . import check, check_close, not_solved


def _gemm_bytes(m: int, n: int, k: int, weight_bits: int, group_size: int | None) -> float:
    """Bytes a weight-only-quantized GEMM must move: x [m, k] times W [n, k]^T -> [m, n].

    Weights at `weight_bits`, one 16-bit scale and one 16-bit zero per group of `group_size` weights
    (none for 16-bit weights), 16-bit activations read and outputs written.
    """
    weights = n * k * weight_bits / 8
    scales_and_zeros = 0 if group_size is None else 2 * 2 * n * k / group_size
    return weights + scales_and_zeros + 2 * (m * k + m * n)


def _compute_bound_m(n: int, k: int, weight_bits: int, group_size: int | None, bandwidth: float, flops: float):
    """Smallest M whose arithmetic intensity reaches the ridge point flops / bandwidth (None: never)."""
    ridge = flops / bandwidth
    # intensity 2*M*n*k / (W + 2*M*(k + n)) grows with M towards n*k / (n + k); solve it >= ridge for M
    if ridge >= n * k / (n + k):
        return None
    weight_bytes = _gemm_bytes(0, n, k, weight_bits, group_size)
    return max(1, math.ceil(ridge * weight_bytes / (2 * n * k - 2 * ridge * (n + k))))


def check_gemm_bytes(gemm_bytes):
    cases = [(1, 14336, 4096, 16, None), (1, 14336, 4096, 4, 128), (4096, 14336, 4096, 4, 128),
             (7, 1536, 576, 4, 64), (16, 576, 1536, 8, None)]
    hint = ("weights: n*k*bits/8 bytes; group-quantized weights add one fp16 scale and one fp16 zero "
            "(4 bytes) per group of group_size weights of a row; activations: 2*m*k bytes in and "
            "2*m*n bytes out.")
    for m, n, k, bits, group in cases:
        name = f"bytes moved by a {m}x{n}x{k} GEMM with {bits}-bit weights (group {group})"
        try:
            answer = gemm_bytes(m, n, k, bits, group)
        except NotImplementedError:
            return not_solved("bytes moved by a GEMM", _gemm_bytes)
        check_close(name, answer, _gemm_bytes(m, n, k, bits, group), 1e-9, hint)
    return gemm_bytes


def check_compute_bound_m(compute_bound_m, n: int, k: int, bandwidth: float, flops: float):
    """`compute_bound_m(n, k, weight_bits, group_size, bandwidth, flops)` for 16-bit and INT4 g128 weights, on
    this machine's ceilings, on a GPU's (where leaving out the activations' bytes changes the answer) and on a
    shape too small ever to reach the ridge point (the answer is None)."""
    hint = ("the ridge point is flops / bandwidth (FLOPs per byte); find the smallest integer M with "
            "2*M*n*k / gemm_bytes(M, n, k, bits, group) >= ridge (None if the intensity never gets there).")
    gpu_like = (3.0e12, 7.9e14)   # bytes/s and FLOP/s of a Hopper GPU, roughly: a ridge near 260 FLOPs per byte
    cases = [(n, k, bandwidth, flops, "here"), (n, k, *gpu_like, "on a GPU's ceilings"),
             (128, 128, *gpu_like, "on a GPU's ceilings")]
    for shape_n, shape_k, bytes_per_s, flops_per_s, where in cases:
        for weight_bits, group_size in ((16, None), (4, 128)):
            try:
                answer = compute_bound_m(shape_n, shape_k, weight_bits, group_size, bytes_per_s, flops_per_s)
            except NotImplementedError:
                return not_solved("smallest compute-bound M", _compute_bound_m)
            expected = _compute_bound_m(shape_n, shape_k, weight_bits, group_size, bytes_per_s, flops_per_s)
            what = f"{shape_n}x{shape_k} with {weight_bits}-bit weights {where}"
            if expected is None:
                check(f"{what} never becomes compute bound" if answer is None
                      else f"{what}: got M={answer}, but this shape never reaches the ridge point", answer is None, hint)
            else:
                check(f"smallest compute-bound M for {what}: "
                      + (f"M={answer}" if answer == expected else f"got {answer}, expected {expected}"),
                      answer == expected, hint)
    return compute_bound_m
