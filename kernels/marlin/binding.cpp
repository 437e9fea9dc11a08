// PyTorch binding of the Marlin-style W4A16 kernel: argument checks (with what to do instead) and the
// launch. The device code is in w4a16.cu, which includes no torch header; this file includes no torch CUDA
// header either (the caller passes the stream and has made x's device current), so both halves compile
// on a machine whose torch is a CPU build (tests/test_marlin.py checks that with nvcc and g++).
#include <torch/extension.h>

#include "w4a16.h"

namespace {

constexpr int64_t kTileN = 64, kTileK = 64, kMaxRows = 64;

bool aligned16(const torch::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

torch::Tensor w4a16_gemm(const torch::Tensor& x, const torch::Tensor& qweight, const torch::Tensor& scales,
                         const torch::Tensor& zeros, const torch::Tensor& locks, int64_t group_size, int64_t splits,
                         int64_t k_tile, const std::optional<torch::Tensor>& norm_weight, double eps, bool silu_mul,
                         const std::optional<torch::Tensor>& residual, int64_t stream) {
  TORCH_CHECK(x.is_cuda() && qweight.is_cuda() && scales.is_cuda() && zeros.is_cuda(),
              "w4a16_marlin: all tensors must be on the GPU (move them with .cuda(); on a CPU use the "
              "dequantize-then-matmul reference, QuantLinear's own forward)");
  TORCH_CHECK(x.device() == qweight.device() && x.device() == scales.device() && x.device() == zeros.device(),
              "w4a16_marlin: x, qweight, scales and zeros are on different GPUs; move them to one");
  TORCH_CHECK(x.scalar_type() == torch::kHalf || x.scalar_type() == torch::kBFloat16,
              "w4a16_marlin: activations must be float16 or bfloat16, got ", x.scalar_type(),
              "; cast them (x.to(torch.bfloat16)) or use the dequantize-then-matmul path for float32");
  TORCH_CHECK(scales.scalar_type() == x.scalar_type() && zeros.scalar_type() == x.scalar_type(),
              "w4a16_marlin: scales and zeros must have the activations' dtype (", x.scalar_type(), "), got ",
              scales.scalar_type(), " and ", zeros.scalar_type(), "; repack with scales.to(x.dtype)");
  TORCH_CHECK(qweight.scalar_type() == torch::kInt32 && qweight.dim() == 2,
              "w4a16_marlin: qweight must be the int32 [K/64, 8N] tensor that kernels.marlin.repack returns");
  TORCH_CHECK(x.dim() == 2, "w4a16_marlin: x must be 2-D [M, K]; flatten the leading dimensions first");
  const int64_t M = x.size(0), K = silu_mul ? x.size(1) / 2 : x.size(1);
  TORCH_CHECK(!silu_mul || x.size(1) % 2 == 0, "w4a16_marlin: silu_mul takes gate and up side by side, [M, 2K]; "
              "x has an odd width ", x.size(1));
  TORCH_CHECK(!(silu_mul && norm_weight.has_value()), "w4a16_marlin: RMSNorm and silu_mul are two different "
              "inputs (before q/k/v or gate/up, and before down); pass one of them");
  TORCH_CHECK(M >= 1 && M <= kMaxRows, "w4a16_marlin: takes 1..", kMaxRows, " rows, got ", M,
              "; for more rows (prefill) dequantize once and use a dense matmul, or call it per 64-row chunk");
  TORCH_CHECK(K % kTileK == 0, "w4a16_marlin: K = ", K, " is not a multiple of ", kTileK,
              "; this kernel needs K % 64 == 0 (use the Triton kernel kernels.w4a16 for this layer)");
  TORCH_CHECK(qweight.size(0) == K / kTileK && qweight.size(1) % (8 * kTileN) == 0,
              "w4a16_marlin: qweight has shape ", qweight.sizes(), ", which does not match K = ", K,
              " (expected [K/64, 8N] with N % 64 == 0); repack the layer with kernels.marlin.repack");
  const int64_t N = qweight.size(1) / 8;
  TORCH_CHECK(group_size == 32 || (group_size > 0 && group_size % kTileK == 0),
              "w4a16_marlin: group size ", group_size, " is not supported; use 32, 64, 128 (any multiple of 64) "
              "or per channel (group size = K)");
  TORCH_CHECK(K % group_size == 0, "w4a16_marlin: group size ", group_size, " does not divide K = ", K,
              "; quantize with a group size that divides the layer's input width");
  TORCH_CHECK(scales.dim() == 2 && scales.size(0) == K / group_size && scales.size(1) == N &&
                  zeros.sizes() == scales.sizes(),
              "w4a16_marlin: scales/zeros must be [K/group, N] = [", K / group_size, ", ", N, "], got ",
              scales.sizes(), " and ", zeros.sizes(), "; use the tensors kernels.marlin.repack returns");
  TORCH_CHECK(x.is_contiguous() && qweight.is_contiguous() && scales.is_contiguous() && zeros.is_contiguous(),
              "w4a16_marlin: tensors must be contiguous (call .contiguous())");
  TORCH_CHECK(aligned16(x) && aligned16(qweight) && aligned16(scales) && aligned16(zeros),
              "w4a16_marlin: tensors must start on 16-byte boundaries (cp.async copies 16 bytes); "
              "a sliced view can break this: pass x.clone()");
  TORCH_CHECK(splits >= 1, "w4a16_marlin: splits must be >= 1");
  TORCH_CHECK(k_tile == 0 || k_tile == 64 || (k_tile == 128 && marlin_w4a16::k_tile_for(K, group_size) == 128),
              "w4a16_marlin: k_tile ", k_tile, " does not fit K = ", K, " and group ", group_size,
              "; use 0 (automatic), 64, or 128 where K % 128 == 0 and the group is 32, 64 or a multiple of 128");

  TORCH_CHECK(locks.is_cuda() && locks.device() == x.device() && locks.scalar_type() == torch::kInt32 &&
                  locks.numel() >= N / kTileN,
              "w4a16_marlin: locks must be a zeroed int32 tensor of at least N/64 = ", N / kTileN,
              " elements on x's GPU (kernels.marlin keeps one per GPU)");

  if (norm_weight.has_value()) {
    const auto& w = *norm_weight;
    TORCH_CHECK(w.is_cuda() && w.device() == x.device() && w.scalar_type() == x.scalar_type() && w.dim() == 1 &&
                    w.size(0) == K && w.is_contiguous() && aligned16(w),
                "w4a16_marlin: norm_weight must be the RMSNorm's weight, a contiguous [", K, "] tensor of x's dtype "
                "on x's GPU; got ", w.sizes(), " ", w.scalar_type());
  }
  if (residual.has_value()) {
    const auto& r = *residual;
    TORCH_CHECK(r.is_cuda() && r.device() == x.device() && r.scalar_type() == x.scalar_type() && r.dim() == 2 &&
                    r.size(0) == M && r.size(1) == N && r.is_contiguous(),
                "w4a16_marlin: residual must be a contiguous [", M, ", ", N, "] tensor of x's dtype on x's GPU; got ",
                r.sizes(), " ", r.scalar_type());
  }

  auto out = torch::empty({M, N}, x.options());
  torch::Tensor workspace;  // each K slice's fp32 sums; the last slice per column tile adds them up
  const size_t floats = marlin_w4a16::workspace_floats(static_cast<int>(M), static_cast<int>(N), static_cast<int>(splits));
  if (floats) workspace = torch::empty({static_cast<int64_t>(floats)}, x.options().dtype(torch::kFloat32));
  marlin_w4a16::Problem p{};
  p.x = x.data_ptr(), p.qweight = qweight.data_ptr(), p.scales = scales.data_ptr(), p.zeros = zeros.data_ptr();
  p.norm_weight = norm_weight.has_value() ? norm_weight->data_ptr() : nullptr;
  p.eps = static_cast<float>(eps);
  p.silu_mul = silu_mul;
  p.residual = residual.has_value() ? residual->data_ptr() : nullptr;
  p.out = out.data_ptr();
  p.workspace = floats ? workspace.data_ptr<float>() : nullptr;
  p.locks = locks.data_ptr<int>();
  p.M = static_cast<int>(M), p.N = static_cast<int>(N), p.K = static_cast<int>(K);
  p.group = static_cast<int>(group_size), p.splits = static_cast<int>(splits), p.k_tile = static_cast<int>(k_tile);
  p.bf16 = x.scalar_type() == torch::kBFloat16;
  const cudaError_t err = marlin_w4a16::launch_w4a16(p, reinterpret_cast<cudaStream_t>(stream));
  TORCH_CHECK(err == cudaSuccess, "w4a16_marlin: kernel launch failed: ", cudaGetErrorString(err));
  return out;
}

// Blocks of the kernel that `w4a16_gemm` would launch for these sizes that fit on one SM of the current GPU.
int64_t resident_blocks(int64_t M, int64_t K, int64_t group_size, int64_t k_tile, bool bf16) {
  TORCH_CHECK(M >= 1 && M <= kMaxRows && K % kTileK == 0 && K % group_size == 0,
              "w4a16_marlin.resident_blocks: M in 1..64, K a multiple of 64 and of the group");
  int blocks = 0;
  marlin_w4a16::Problem p{};
  p.M = static_cast<int>(M), p.N = static_cast<int>(kTileN), p.K = static_cast<int>(K);
  p.group = static_cast<int>(group_size), p.splits = 1, p.k_tile = static_cast<int>(k_tile), p.bf16 = bf16;
  p.resident_blocks = &blocks;
  const cudaError_t err = marlin_w4a16::launch_w4a16(p, nullptr);
  TORCH_CHECK(err == cudaSuccess, "w4a16_marlin.resident_blocks: ", cudaGetErrorString(err));
  return blocks;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("w4a16_gemm", &w4a16_gemm,
        "out[M, N] = f(x) @ W^T (+ residual), W the repacked INT4 weight, f RMSNorm, SiLU x up or nothing "
        "(kernels/marlin)",
        pybind11::arg("x"), pybind11::arg("qweight"), pybind11::arg("scales"), pybind11::arg("zeros"),
        pybind11::arg("locks"), pybind11::arg("group_size"), pybind11::arg("splits"), pybind11::arg("k_tile"),
        pybind11::arg("norm_weight"), pybind11::arg("eps"), pybind11::arg("silu_mul"), pybind11::arg("residual"),
        pybind11::arg("stream"));
  m.def("resident_blocks", &resident_blocks, "blocks per SM of the kernel w4a16_gemm launches for (M, K, group, "
        "k_tile, bf16) on the current GPU", pybind11::arg("M"), pybind11::arg("K"), pybind11::arg("group_size"),
        pybind11::arg("k_tile"), pybind11::arg("bf16"));
  m.def("k_tile_for", &marlin_w4a16::k_tile_for, "K per pipeline stage the kernel picks for (K, group)",
        pybind11::arg("K"), pybind11::arg("group"));  // tests compare it with kernels.marlin.k_tile_for
}
