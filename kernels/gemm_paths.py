"""The other ways fewer bits or fewer non-zeros reach the tensor cores, through PyTorch's own kernels.

- INT8 W8A8: `torch._int_mm` (int8 x int8 -> int32 on the tensor cores), then a scale epilogue
  out = acc * x_scale[m] * w_scale[n] (per-token activation scales, per-channel weight scales).
- FP8 W8A8: `torch._scaled_mm` on E4M3 operands with per-tensor or row-wise scales (sm_89+).
- bf16 W4A16 baseline from PyTorch: tinygemm (`torch._weight_int4pack_mm`), group-wise asymmetric.
- 2:4 sparsity: `torch.sparse.to_sparse_semi_structured` (cuSPARSELt / CUTLASS, sm_80+).
Each needs CUDA; shape rules are checked here so a caller gets one clear message.
"""
import torch

from common.errors import WorkshopError

FP8_MAX = torch.finfo(torch.float8_e4m3fn).max


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
    x_int8, x_scale = quantize_int8_rows(x)
    acc = torch._int_mm(x_int8, w_int8.t())
    return (acc.float() * x_scale * w_scale.view(1, -1)).to(x.dtype)


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
    x_fp8, x_scale = quantize_fp8(x, rowwise)
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
