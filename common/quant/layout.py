"""The packed INT4 layout: the one contract between QuantLinear, checkpoints and the kernels of kernels/.

Packed INT4 layout (do not change one side alone):
  weight W is [N = out_features, K = in_features]; groups of `group_size` g run along K;
  `qweight` uint8 [N, K // 2]: byte j of row n holds the code of k = 2j in its LOW nibble and of
            k = 2j + 1 in its HIGH nibble; codes q are 0..15 (symmetric quantization uses zero = 8);
  `scales`, `zeros` [N, K // g], float16 (bfloat16 when the model is bf16);
  dequantization: w[n, k] = (q[n, k] - zeros[n, k // g]) * scales[n, k // g].

A leaf module: kernels/ and common/quant/ both import it, and it imports neither.
"""
import torch

from ..errors import WorkshopError


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
