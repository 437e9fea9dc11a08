"""Checkers of lab 01 (Number formats).

References come from elsewhere than the learner's recipe wherever possible: FP8 values are PyTorch's
own float8 types read bit pattern by bit pattern (what the hardware decodes); E2M1, NF4 and the
fake-quantized weights come from `common.quant.formats`, imported here and not in the lab.
"""
import math

import torch

from . import check, check_close, not_solved, unsolved

# (exponent bits, mantissa bits, bias) of the floating-point formats the decoder is checked on
FLOAT_FORMATS = {"FP4 E2M1": (2, 1, 1), "FP8 E4M3": (4, 3, 7), "FP8 E5M2": (5, 2, 15)}


def _decode_float(pattern: int, exponent_bits: int, mantissa_bits: int, bias: int) -> float:
    """The value of a sign | exponent | mantissa bit pattern (IEEE 754 rules, special values aside)."""
    sign = -1.0 if (pattern >> (exponent_bits + mantissa_bits)) & 1 else 1.0
    exponent = (pattern >> mantissa_bits) & ((1 << exponent_bits) - 1)
    fraction = (pattern & ((1 << mantissa_bits) - 1)) / 2 ** mantissa_bits
    if exponent == 0:   # subnormal: no implicit leading 1, the exponent of exponent field 1
        return sign * 2.0 ** (1 - bias) * fraction
    return sign * 2.0 ** (exponent - bias) * (1 + fraction)


def _format_values(name: str) -> dict:
    """{bit pattern: value} of every finite pattern of a format, from a source other than the bit rules."""
    from ..quant.formats import fp4_e2m1_values
    if name == "FP4 E2M1":
        magnitudes = fp4_e2m1_values()
        magnitudes = magnitudes[magnitudes >= 0].tolist()   # sorted, and increasing with the 3-bit code
        return {p: (-1.0 if p >> 3 else 1.0) * magnitudes[p & 7] for p in range(16)}
    dtype = torch.float8_e4m3fn if name == "FP8 E4M3" else torch.float8_e5m2
    values = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype).float().tolist()
    return {p: v for p, v in enumerate(values) if math.isfinite(v)}


def check_decode_float(decode_fn):
    """`decode_fn(pattern, exponent_bits, mantissa_bits, bias)` must decode every finite pattern of E2M1,
    E4M3 and E5M2 as PyTorch's float8 types (and the E2M1 grid) do."""
    for fmt, (exponent_bits, mantissa_bits, bias) in FLOAT_FORMATS.items():
        name = f"{fmt} decoded from its bit fields"
        expected = _format_values(fmt)
        try:
            answer = {p: decode_fn(p, exponent_bits, mantissa_bits, bias) for p in expected}
        except NotImplementedError:
            return not_solved(name, _decode_float)
        wrong = [p for p, v in expected.items()
                 if not isinstance(answer[p], (int, float)) or not math.isclose(answer[p], v, rel_tol=1e-9)]
        example = ""
        if wrong:
            p = wrong[0]
            example = (f": pattern {p:0{1 + exponent_bits + mantissa_bits}b} gave {answer[p]!r}, expected {expected[p]!r}"
                       f" ({len(wrong)} of {len(expected)} patterns wrong)")
        check(name + example, not wrong,
              "split the pattern: the top bit is the sign, the next exponent_bits bits the exponent field e, the "
              "last mantissa_bits bits the mantissa m. A normal number (e > 0) is 1.m in binary times "
              "2^(e - bias); a subnormal one (e = 0) is 0.m in binary times the exponent of e = 1.")
    return decode_fn


def check_nf4_levels(answer):
    """The 16 NF4 levels built from QLoRA's definition, against the course's grid (common.quant.formats)."""
    from ..quant.formats import nf4_levels
    name, expected = "NF4 levels from normal quantiles", nf4_levels()
    if unsolved(answer):
        return not_solved(name, expected)
    levels = torch.as_tensor(answer).detach().to("cpu", torch.float64).flatten().sort().values.float()
    ok = levels.numel() == 16 and torch.allclose(levels, expected, atol=1e-4)
    shown = "" if ok else f": got {[round(v, 4) for v in levels.tolist()]}"
    check(name + shown, ok,
          "8 positive levels: the normal quantile (torch.special.ndtri) of 8 probabilities evenly spaced from 0.5 "
          "(excluded) up to offset (included); 7 negative levels: minus the quantiles of 7 such probabilities; "
          "and 0. Divide every level by the largest |level|. Sixteen values in all.")
    return answer


def _reference_fake_quant(w, grid_name: str, group_size):
    from ..quant.formats import fake_quant_fp4, fake_quant_int, fake_quant_nf4
    return {"int4": lambda: fake_quant_int(w, 4, group_size, symmetric=True),
            "nf4": lambda: fake_quant_nf4(w, group_size),
            "fp4": lambda: fake_quant_fp4(w, group_size)}[grid_name]()


def _groups(w, group_size):
    return w.reshape(w.shape[0], -1) if group_size is None else w.reshape(-1, group_size)


def _grid_fake_quant(w, grid, group_size):
    """Absmax scaling per group (a row when group_size is None), round to the nearest grid value, scale back."""
    from ..quant.formats import round_to_grid
    groups = _groups(w, group_size)
    scale = groups.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / grid.abs().max()
    return (round_to_grid(groups / scale, grid) * scale).reshape(w.shape)


def _not_a_nearest_level(answer, expected, w, grid, group_size) -> float:
    """Share of the weights whose answer is not a nearest grid level of w / scale. The weights of this model
    sit on a discrete grid (Q4_1), so exact ties between two levels are common: either level is right."""
    groups = _groups(w, group_size).float()
    scale = groups.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / grid.abs().max()
    x, mine = groups / scale, _groups(answer.to(w.device), group_size).float() / scale
    reference = _groups(expected, group_size).float() / scale
    on_grid = (mine[..., None] - grid).abs().amin(dim=-1) < 1e-4
    nearest = (mine - x).abs() <= (reference - x).abs() + 1e-4
    return 1 - (on_grid & nearest).float().mean().item()


def check_grid_fake_quant(fake_quant_fn, w):
    """`fake_quant_fn(w, grid, group_size)` on the INT4, NF4 and E2M1 grids, in groups of 64 and per row:
    every weight must land on a nearest level of its group's absmax-scaled grid."""
    from ..quant.formats import format_grid
    for grid_name in ("int4", "nf4", "fp4"):
        grid = format_grid(grid_name).to(w.device)   # on the weight's device (the GPU in full mode)
        for group_size in (64, None):
            name = f"absmax fake quantization onto the {grid_name} grid, " + (
                f"groups of {group_size}" if group_size else "one scale per row")
            try:
                answer = fake_quant_fn(w, grid, group_size)
            except NotImplementedError:
                return not_solved(name, _grid_fake_quant)
            shaped = isinstance(answer, torch.Tensor) and answer.shape == w.shape
            wrong = _not_a_nearest_level(answer, _reference_fake_quant(w, grid_name, group_size), w, grid,
                                         group_size) if shaped else 1.0
            shown = "" if not wrong else f": {wrong:.1%} of the weights are not on a nearest level" if shaped else \
                f": expected a tensor of shape {tuple(w.shape)}"
            check(name + shown, not wrong,
                  "view w as [groups, group_size] (per row: [rows, -1]); scale = max|w| of the group / max|grid|; "
                  "replace each w / scale by the nearest grid value (not the one below it); multiply by the "
                  "scale and return the result in w's shape.")
    return fake_quant_fn


def _mean_outlier_range_share(w, top=0.05):
    from ..quant.formats import outlier_range_fraction
    return outlier_range_fraction(w, top).mean().item()


def check_outlier_fraction(outlier_fn, w):
    name = "mean share of each row's range spanned by its top 5% weights"
    try:
        answer = outlier_fn(w)
    except NotImplementedError:
        return not_solved(name, _mean_outlier_range_share)
    check_close(name, answer, _mean_outlier_range_share(w), 1e-3,
                "per row: the outliers are the round(5% of the row) largest |w|; the inliers are the others; "
                "1 - (max(inliers) - min(inliers)) / (max(row) - min(row)), averaged over the rows.")
    return outlier_fn
