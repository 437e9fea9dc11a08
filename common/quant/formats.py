"""Number formats: reference quantize / dequantize / fake-quant on the grids of the course.

Granularity is set by `group_size`: None quantizes each output row (per channel) as one group,
-1 the whole tensor as one group, and g > 0 every g consecutive inputs of a row. Weights are
[out_features, in_features]; groups run along in_features, as in GPTQ, AWQ and the INT4 kernels.

Formats: INT (2-8 bits, symmetric or asymmetric with an integer zero point); NF4 (QLoRA's normal
quantiles); FP8 E4M3 / E5M2 (rounded by PyTorch's casts, so bit-exact with the hardware types);
FP4 E2M1; NVFP4 (E2M1 in blocks of 16 with FP8 E4M3 block scales and an fp32 tensor scale) and
MXFP4 (E2M1 in blocks of 32 with power-of-two scales). `fake_quant(w, fmt, group_size)` dispatches.
"""
import torch

from ..errors import WorkshopError


def grouped(w: torch.Tensor, group_size: int | None) -> torch.Tensor:
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


def rounded_scale(scale: torch.Tensor, scale_dtype: torch.dtype | None) -> torch.Tensor:
    """`scale` (float32) rounded to the type it is stored in, where given. A group of zeros has a scale
    below 16-bit floats' range, which rounds to 0 and would make its codes 0/0: any positive scale
    codes such a group exactly (all codes at the zero point), so it gets 1."""
    if scale_dtype is None:
        return scale
    scale = scale.to(scale_dtype).float()
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def quantize_int(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool):
    """Integer codes of `w` (same grouping as `scale`); round to nearest, clamp to the grid."""
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        return torch.clamp(torch.round(w / scale), -qmax, qmax)
    return torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1)


def dequantize_int(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
    return (q - zero) * scale


def int_codes(w: torch.Tensor, bits: int, group_size: int | None, symmetric: bool,
              scale_dtype: torch.dtype | None = None):
    """(codes, scales, zero points) of `w` rounded to nearest on a `bits`-bit integer grid: codes
    [groups, group_len] (signed when symmetric), scales and zero points [groups, 1] float32.

    `scale_dtype` (e.g. torch.float16) rounds the scales to the type they are stored in first, as a
    packed layer stores them, so that the codes are the nearest ones for the scales actually stored.
    """
    groups = grouped(w, group_size).float()
    scale, zero = int_scale_zero(groups, bits, symmetric)
    scale = rounded_scale(scale, scale_dtype)
    return quantize_int(groups, scale, zero, bits, symmetric), scale, zero


def fake_quant_int(w: torch.Tensor, bits: int, group_size: int | None = None, symmetric: bool = True,
                   scale_dtype: torch.dtype | None = None, return_grid: bool = False):
    """`w` rounded to a `bits`-bit integer grid at the given granularity, in `w`'s dtype and shape.

    `scale_dtype`: see `int_codes`; with it the result is exactly what a packed layer computes.
    `return_grid` also returns the scales and zero points, [rows, groups] float32 (what a packed layer
    stores).
    """
    q, scale, zero = int_codes(w, bits, group_size, symmetric, scale_dtype)
    w_hat = dequantize_int(q, scale, zero).reshape(w.shape).to(w.dtype)
    if not return_grid:
        return w_hat
    rows = 1 if group_size == -1 else w.shape[0]
    return w_hat, scale.reshape(rows, -1), zero.reshape(rows, -1)


# ---------------------------------------------------------------------------------------------
# Non-uniform and floating-point grids: scale each group by its absolute maximum, round to the grid
# ---------------------------------------------------------------------------------------------
FP8_DTYPES = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
FP8_MAX = torch.finfo(torch.float8_e4m3fn).max  # 448: the E4M3 range every FP8 scale maps onto
NVFP4_BLOCK, MXFP4_BLOCK = 16, 32


def nf4_levels() -> torch.Tensor:
    """The 16 NormalFloat levels of QLoRA: quantiles of N(0, 1), rescaled to [-1, 1], 0 exact.

    Each half of the grid cuts the normal distribution into equal-probability bins (8 on the positive
    side, 7 on the negative side, so that 0 is a level); the outermost probability is pulled in from 1
    to `offset` (QLoRA's choice, between the 15- and 16-bin half-widths) because the normal quantile of
    1 is infinite.
    """
    offset = 1 - 0.5 * (1 / (2 * 15) + 1 / (2 * 16))
    ppf = torch.special.ndtri
    positive = ppf(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])
    negative = -ppf(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])
    levels = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return (levels / levels.abs().max()).float()


def fp8_values(fmt: str) -> torch.Tensor:
    """Every finite value of an FP8 format, sorted: all 256 bit patterns read as that type."""
    values = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(FP8_DTYPES[fmt]).float()
    return values[values.isfinite()].unique()


def fp4_e2m1_values() -> torch.Tensor:
    """FP4 E2M1 (1 sign, 2 exponent, 1 mantissa bit, bias 1): ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}."""
    codes = torch.arange(8)
    exponent, mantissa = codes >> 1, (codes & 1).float()
    magnitude = torch.where(exponent == 0, 0.5 * mantissa,  # subnormals: 0 and 0.5
                            2.0 ** (exponent - 1).float() * (1 + 0.5 * mantissa))
    return torch.cat([-magnitude, magnitude]).unique()


def nearest_index(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """For each value of `x`, the index of the nearest value of the sorted 1-D `grid` (its code)."""
    grid = grid.to(x.device, x.dtype)
    return torch.bucketize(x, (grid[1:] + grid[:-1]) / 2)


def round_to_grid(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Each value of `x` replaced by the nearest value of the sorted 1-D `grid` (ends clamp)."""
    return grid.to(x.device, x.dtype)[nearest_index(x, grid)]


def absmax_scale(groups: torch.Tensor, grid_max: float, scale_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The scale [groups, 1] (float32) that puts each row's largest |w| of a [groups, group_len] tensor on
    the grid's largest value; rounded to `scale_dtype` first where given (as a packed layer stores it)."""
    scale = groups.float().abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / grid_max
    return rounded_scale(scale, scale_dtype)


def nf4_codes(w: torch.Tensor, group_size: int | None = 64, scale_dtype: torch.dtype | None = None):
    """(codes, scales) of `w` on NF4: indices 0..15 into `nf4_levels()` [groups, group_len] and each
    block's absmax scale [groups, 1] float32 (rounded to `scale_dtype` first, see `absmax_scale`)."""
    groups = grouped(w, group_size).float()
    scale = absmax_scale(groups, 1.0, scale_dtype)
    return nearest_index(groups / scale, nf4_levels()), scale


def fake_quant_nf4(w: torch.Tensor, group_size: int | None = 64, scale_dtype: torch.dtype | None = None) -> torch.Tensor:
    """NF4 with absmax block scaling (QLoRA uses blocks of 64)."""
    codes, scale = nf4_codes(w, group_size, scale_dtype)
    return (nf4_levels().to(codes.device)[codes] * scale).reshape(w.shape).to(w.dtype)


def fp8_codes(w: torch.Tensor, fmt: str = "fp8_e4m3", group_size: int | None = -1):
    """(codes, scales) of `w` on an FP8 format: w / scale as values of that float8 type [groups, group_len],
    and the amax scale of each group [groups, 1] float32 (one group per tensor by default).

    PyTorch's cast rounds as the hardware does (to nearest even), so these are bit-exact with
    `(w / scale).to(torch.float8_e4m3fn)`; the clamp keeps rounding noise in `w / scale` from overflowing.
    """
    if fmt not in FP8_DTYPES:
        raise WorkshopError(f"Unknown FP8 format {fmt!r}.", f"Use one of {', '.join(FP8_DTYPES)}.")
    fmax = torch.finfo(FP8_DTYPES[fmt]).max
    groups = grouped(w, group_size).float()
    scale = absmax_scale(groups, fmax)
    return (groups / scale).clamp(-fmax, fmax).to(FP8_DTYPES[fmt]), scale


def fake_quant_fp8(w: torch.Tensor, fmt: str = "fp8_e4m3", group_size: int | None = -1) -> torch.Tensor:
    """FP8 with amax scaling (per tensor by default), rounded by PyTorch's own cast (see `fp8_codes`)."""
    codes, scale = fp8_codes(w, fmt, group_size)
    return (codes.float() * scale).reshape(w.shape).to(w.dtype)


def fake_quant_fp4(w: torch.Tensor, group_size: int | None = 32) -> torch.Tensor:
    """FP4 E2M1 elements with a full-precision absmax scale per group."""
    groups = grouped(w, group_size).float()
    scale = absmax_scale(groups, 6.0)
    return (round_to_grid(groups / scale, fp4_e2m1_values()) * scale).reshape(w.shape).to(w.dtype)


def fake_quant_nvfp4(w: torch.Tensor) -> torch.Tensor:
    """NVFP4: E2M1 elements in blocks of 16, each block's scale stored as FP8 E4M3, times one fp32
    scale per tensor (chosen so the largest block scale lands at the top of the E4M3 range)."""
    blocks = grouped(w, NVFP4_BLOCK).float()
    block_amax = blocks.abs().amax(dim=1, keepdim=True)
    tensor_scale = block_amax.max().clamp(min=1e-12) / (6.0 * 448.0)
    block_scale = (block_amax / 6.0 / tensor_scale).to(torch.float8_e4m3fn).float() * tensor_scale
    # A block far below the tensor's maximum can get a zero FP8 scale: all its values become 0.
    scaled = torch.where(block_scale > 0, blocks / block_scale.clamp(min=1e-30), torch.zeros_like(blocks))
    return (round_to_grid(scaled, fp4_e2m1_values()) * block_scale).reshape(w.shape).to(w.dtype)


def fake_quant_mxfp4(w: torch.Tensor) -> torch.Tensor:
    """MXFP4 (OCP microscaling): E2M1 elements in blocks of 32 sharing a power-of-two (E8M0) scale.

    The scale is 2^(floor(log2(amax)) - 2): the block maximum lands in [4, 8) and values above 6 clamp,
    the price of a scale that is a bare exponent.
    """
    blocks = grouped(w, MXFP4_BLOCK).float()
    amax = blocks.abs().amax(dim=1, keepdim=True).clamp(min=2.0 ** -126)
    scale = 2.0 ** (torch.floor(torch.log2(amax)) - 2).clamp(-127, 127)
    return (round_to_grid(blocks / scale, fp4_e2m1_values()) * scale).reshape(w.shape).to(w.dtype)


# ---------------------------------------------------------------------------------------------
# Static activation scales: one calibrated scale per tensor, fixed at inference (TensorRT's form)
# ---------------------------------------------------------------------------------------------
def static_scale(amax: float, fmt: str) -> torch.Tensor:
    """The float32 scale [1] that maps the calibrated max |x| onto the largest value of `fmt`
    ("int8": 127, or an FP8 format)."""
    top = 127 if fmt == "int8" else torch.finfo(FP8_DTYPES[fmt]).max
    return torch.tensor([max(amax, 1e-12) / top], dtype=torch.float32)


def static_codes(x: torch.Tensor, scale: torch.Tensor, fmt: str) -> torch.Tensor:
    """x / scale on the grid of `fmt`, in float32, as ONNX's QuantizeLinear rounds it: INT8 to
    integer-valued floats (half to even, saturating at -128 and 127), FP8 to float8 values (the cast,
    after a clamp to the format's range)."""
    scaled = x.float() / scale
    if fmt == "int8":
        return torch.round(scaled).clamp(-128, 127)
    top = torch.finfo(FP8_DTYPES[fmt]).max
    return scaled.clamp(-top, top).to(FP8_DTYPES[fmt])


def quantize_static(x: torch.Tensor, scale: torch.Tensor, fmt: str) -> torch.Tensor:
    """x rounded to `fmt` with one fixed scale (QuantizeLinear -> DequantizeLinear), in x's dtype."""
    return (static_codes(x, scale, fmt).float() * scale).to(x.dtype)


# ---------------------------------------------------------------------------------------------
# One entry point for every format of the course
# ---------------------------------------------------------------------------------------------
INT_FORMATS = ("int8", "int4", "int3", "int2")
FORMATS = INT_FORMATS + ("nf4", "fp8_e4m3", "fp8_e5m2", "fp4", "nvfp4", "mxfp4")
DEFAULT_GROUP_SIZE = {"int8": None, "int4": 128, "int3": 128, "int2": 128, "nf4": 64, "fp8_e4m3": -1,
                      "fp8_e5m2": -1, "fp4": 32, "nvfp4": NVFP4_BLOCK, "mxfp4": MXFP4_BLOCK}
ELEMENT_BITS = {"int8": 8, "int4": 4, "int3": 3, "int2": 2, "nf4": 4, "fp8_e4m3": 8, "fp8_e5m2": 8,
                "fp4": 4, "nvfp4": 4, "mxfp4": 4}
DEFAULT = "default"


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise WorkshopError(f"Unknown number format {fmt!r}.", f"Use one of {', '.join(FORMATS)}.")


def resolve_group_size(fmt: str, group_size=DEFAULT):
    """The format's usual granularity when `group_size` is "default"; NVFP4 and MXFP4 fix theirs."""
    _check_format(fmt)
    if group_size == DEFAULT:
        return DEFAULT_GROUP_SIZE[fmt]
    if fmt in ("nvfp4", "mxfp4") and group_size != DEFAULT_GROUP_SIZE[fmt]:
        raise WorkshopError(f"{fmt} uses blocks of {DEFAULT_GROUP_SIZE[fmt]} by definition, not {group_size}.",
                            f"Leave group_size at its default for {fmt}, or pick int4, nf4 or fp4 to vary it.")
    return group_size


def fake_quant(w: torch.Tensor, fmt: str, group_size=DEFAULT, symmetric: bool = True) -> torch.Tensor:
    """`w` rounded to format `fmt` at the given granularity (see the module docstring), same dtype/shape.

    `symmetric` applies to the integer formats only (asymmetric: min-max grid with a zero point).
    """
    group_size = resolve_group_size(fmt, group_size)
    if fmt in INT_FORMATS:
        return fake_quant_int(w, ELEMENT_BITS[fmt], group_size, symmetric)
    if fmt == "nf4":
        return fake_quant_nf4(w, group_size)
    if fmt in FP8_DTYPES:
        return fake_quant_fp8(w, fmt, group_size)
    if fmt == "fp4":
        return fake_quant_fp4(w, group_size)
    return fake_quant_nvfp4(w) if fmt == "nvfp4" else fake_quant_mxfp4(w)


def format_grid(fmt: str, symmetric: bool = True) -> torch.Tensor:
    """The values one element of `fmt` can take before scaling (integer codes for INT), sorted."""
    _check_format(fmt)
    if fmt in INT_FORMATS:
        bits = ELEMENT_BITS[fmt]
        qmax = 2 ** (bits - 1) - 1
        return torch.arange(-qmax, qmax + 1.0) if symmetric else torch.arange(0, 2.0 ** bits)
    if fmt == "nf4":
        return nf4_levels()
    if fmt in FP8_DTYPES:
        return fp8_values(fmt)
    return fp4_e2m1_values()


def bits_per_weight(fmt: str, group_size=DEFAULT, symmetric: bool = True, scale_bits: int = 16) -> float:
    """Stored bits per weight: the element plus its share of the group's scale (and zero point).

    Per-channel and per-tensor scales are amortized over hundreds of weights and counted as free.
    NVFP4 and MXFP4 store 8-bit block scales (E4M3, E8M0), the others `scale_bits`-bit ones.
    """
    group_size = resolve_group_size(fmt, group_size)
    bits = float(ELEMENT_BITS[fmt])
    if group_size in (None, -1):
        return bits
    if fmt in ("nvfp4", "mxfp4"):
        return bits + 8 / group_size
    zero_bits = scale_bits if fmt in INT_FORMATS and not symmetric else 0
    return bits + (scale_bits + zero_bits) / group_size


def relative_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    """||w - w_hat|| / ||w|| (Frobenius), in float32."""
    w, w_hat = w.float(), w_hat.float()
    return ((w - w_hat).norm() / w.norm().clamp(min=1e-12)).item()


def outlier_range_fraction(w: torch.Tensor, top: float = 0.05) -> torch.Tensor:
    """For each row of `w` (an output channel): the share of its value range [min, max] that only the
    `top` fraction of its weights by magnitude reach (ICQuant's measurement). Returns a [rows] tensor.

    A uniform grid spreads its levels over the whole range, so this share of the levels is spent on
    the outliers alone.
    """
    w = w.float().reshape(w.shape[0], -1)
    n_top = max(1, round(top * w.shape[1]))
    is_inlier = w.abs() < w.abs().topk(n_top, dim=1).values[:, -1:]
    inlier_range = (torch.where(is_inlier, w, -torch.inf).amax(dim=1) -
                    torch.where(is_inlier, w, torch.inf).amin(dim=1))
    return 1 - inlier_range / (w.amax(dim=1) - w.amin(dim=1)).clamp(min=1e-12)


def check_int_grid(bits: int, group_size: int | None) -> None:
    """Configs of the integer-grid methods check themselves when they are made."""
    if not 2 <= bits <= 8:
        raise WorkshopError(f"bits={bits}: the integer grids here have 2 to 8 bits.", "Use bits between 2 and 8.")
    if group_size is not None and (not isinstance(group_size, int) or group_size < 1):
        raise WorkshopError(f"group_size={group_size!r} is not a positive number of inputs.",
                            "Use a positive group size such as 64, or None for one scale per output channel.")


def check_act_bits(act_bits: int | None) -> None:
    """Configs that may also quantize activations (per token, symmetric) check the bits when made."""
    if act_bits is not None and (isinstance(act_bits, bool) or not isinstance(act_bits, int) or not 2 <= act_bits <= 8):
        raise WorkshopError(f"act_bits={act_bits!r}: activations go to integer grids of 2 to 8 bits.",
                            "Give act_bits=8 or 4 (one scale per token), or None to leave them in float.")
