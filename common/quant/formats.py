"""Number formats: reference quantize / dequantize / fake-quant on the grids of the course.

Granularity is set by `group_size`: None quantizes each output row (per channel) as one group,
-1 the whole tensor as one group, and g > 0 every g consecutive inputs of a row. Weights are
[out_features, in_features]; groups run along in_features, as in GPTQ, AWQ and the INT4 kernels.
"""
import torch

from ..errors import WorkshopError


def _grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """View `w` as [groups, group_len] according to the granularity."""
    if group_size == -1:
        return w.reshape(1, -1)
    if group_size is None:
        return w.reshape(w.shape[0], -1)
    if w.shape[-1] % group_size:
        raise WorkshopError(f"Group size {group_size} does not divide the input dimension {w.shape[-1]}.",
                            "Use a group size that divides it (128 for most layers), or per-channel (None).")
    return w.reshape(-1, group_size)


def int_scale_zero(w: torch.Tensor, bits: int, symmetric: bool):
    """Scale and zero point of each row of a [groups, group_len] tensor for a `bits`-bit integer grid.

    Symmetric: codes in [-(2^(b-1)-1), 2^(b-1)-1] around zero (zero point 0), max |w| maps to the end.
    Asymmetric: codes in [0, 2^b - 1], min and max of the group map to the ends; the zero point is an
    integer code so that 0.0 is exactly representable.
    """
    if not 2 <= bits <= 8:
        raise WorkshopError(f"{bits}-bit integers are not supported.", "Use 2 to 8 bits.")
    w = w.float()
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / qmax
        return scale, torch.zeros_like(scale)
    qmax = 2 ** bits - 1
    lo = w.amin(dim=1, keepdim=True).clamp(max=0)
    hi = w.amax(dim=1, keepdim=True).clamp(min=0)
    scale = ((hi - lo) / qmax).clamp(min=1e-8)
    zero = torch.round(-lo / scale)
    return scale, zero


def quantize_int(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool):
    """Integer codes of `w` (same grouping as `scale`); round to nearest, clamp to the grid."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return torch.clamp(torch.round(w / scale), -qmax, qmax)
    return torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1)


def dequantize_int(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (q - zero) * scale


def fake_quant_int(w: torch.Tensor, bits: int, group_size: int | None = None, symmetric: bool = True):
    """`w` rounded to a `bits`-bit integer grid at the given granularity, in `w`'s dtype and shape."""
    groups = _grouped(w, group_size).float()
    scale, zero = int_scale_zero(groups, bits, symmetric)
    q = quantize_int(groups, scale, zero, bits, symmetric)
    return dequantize_int(q, scale, zero).reshape(w.shape).to(w.dtype)
