// Host entry point of the W4A16 Marlin-style kernel (kernels/marlin/w4a16.cu).
// Header-free on purpose: it names no torch type, so w4a16.cu compiles with nvcc alone (tests/test_marlin.py
// does that on a machine without a GPU) and binding.cpp, which includes torch, only forwards pointers.
#pragma once
#include <cuda_runtime.h>
#include <stddef.h>

namespace marlin_w4a16 {

// out[M, N] = f(x)[M, K] @ W^T (+ residual), W given by the repacked tensors of kernels/marlin/__init__.py:
//   x         [M, K] fp16 or bf16, row-major, 16-byte aligned, 1 <= M <= 64, K % 64 == 0;
//             [M, 2K] with silu_mul
//   f         identity; or RMSNorm, x / rms(x) * norm_weight (norm_weight [K], same dtype, eps added to the
//             mean square); or with silu_mul, silu(x[:, :K]) * x[:, K:] (gate and up side by side)
//   qweight   int32 [K / 64, 8 * N]  codes in mma.sync B-fragment order (see NOTES.md), N % 64 == 0
//   scales    [K / group, N] same dtype as x;  zeros [K / group, N] same dtype (integer-valued)
//   group     32, or a multiple of 64 that divides K (K itself = per channel)
//   residual  [M, N] same dtype, or null
//   out       [M, N] same dtype as x
//   workspace float32, workspace_floats(M, N, splits) of them, uninitialised, when splits > 1: each K
//             slice's partial sums (and its rows' sums of squares for RMSNorm)
//   locks     int32 [>= N / 64], all zero, when splits > 1: per column tile, how many slices are done;
//             the last one adds the partial sums and resets its counter to zero
//   k_tile    K per pipeline stage: 64, 128 (needs K % 128 == 0 and group 32, 64 or a multiple of 128),
//             or 0 for k_tile_for(K, group), the larger one where it fits.
struct Problem {
  const void *x, *qweight, *scales, *zeros;
  const void* norm_weight;  // null: no RMSNorm
  float eps;
  bool silu_mul;
  const void* residual;     // null: nothing added
  void* out;
  float* workspace;
  int* locks;
  int M, N, K, group, splits, k_tile;
  bool bf16;
  int* resident_blocks;     // not null: launch nothing, store how many blocks of the kernel this problem
                            // takes fit on one SM at once (registers, shared memory); tensors may be null
                            // (with splits = 1)
};

// Returns the launch's cudaError_t (cudaErrorInvalidValue for arguments the kernel cannot take).
cudaError_t launch_w4a16(const Problem& p, cudaStream_t stream);
int k_tile_for(int K, int group);
size_t workspace_floats(int M, int N, int splits);

}  // namespace marlin_w4a16
