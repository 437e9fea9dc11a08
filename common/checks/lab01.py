"""Checkers of lab 01 (Number formats)."""
import torch

from . import check, check_close


def check_e2m1_values(answer) -> None:
    from ..quant.formats import format_grid
    values = torch.as_tensor(answer, dtype=torch.float32).flatten()
    check("FP4 E2M1 decoded from its bit fields", values.numel() == 16 and torch.equal(values.unique(), format_grid("fp4")),
          "16 bit patterns: sign s, exponent e (2 bits), mantissa m (1 bit), bias 1; e > 0 gives "
          "(-1)^s * 2^(e-1) * (1 + m/2), e = 0 (subnormal) gives (-1)^s * m/2. Positive values: 0, 0.5, ... 6.")


def check_int4_fake_quant(fake_quant_fn, w) -> None:
    from ..quant.formats import fake_quant_int, relative_error
    for group_size in (32, None):
        answer = fake_quant_fn(w, group_size)
        expected = fake_quant_int(w, 4, group_size, symmetric=True)
        ok = answer is not None and answer.shape == w.shape and relative_error(expected, answer) < 1e-3
        check(f"symmetric INT4 fake quantization, group size {group_size}", ok,
              "split each row into groups (reshape to [-1, group_size]; per channel: one group per row), "
              "scale = max|w| / 7 per group, q = clamp(round(w / scale), -7, 7), return q * scale in w's shape.")


def check_outlier_fraction(outlier_fn, w) -> None:
    from ..quant.formats import outlier_range_fraction
    answer = outlier_fn(w)
    expected = outlier_range_fraction(w).mean().item()
    check_close("mean share of each row's range spanned by its top 5% weights", answer, expected, 1e-3,
                "per row: the outliers are the round(5% of the row) largest |w|; the inliers are the others; "
                "1 - (max(inliers) - min(inliers)) / (max(row) - min(row)), averaged over the rows.")


def check_distinct_per_block(answer, w, block: int = 32) -> None:
    blocks = w.reshape(-1, block)
    expected = (blocks.sort(dim=1).values.diff(dim=1) != 0).sum(dim=1) + 1
    ok = answer is not None and torch.as_tensor(answer).shape == expected.shape and \
        torch.equal(torch.as_tensor(answer).to(expected.device, expected.dtype), expected)
    check(f"distinct values in each of the {len(expected)} blocks of {block} weights", ok,
          "reshape the weight to [-1, 32] (blocks run along each row), sort each block, and count the "
          "positions where a value differs from the previous one, plus one.")
