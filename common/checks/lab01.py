"""Checkers of lab 01 (Number formats)."""
import torch

from . import check, check_close, not_solved, unsolved


def check_e2m1_values(answer):
    from ..quant.formats import format_grid
    name, grid = "FP4 E2M1 decoded from its bit fields", format_grid("fp4")
    if unsolved(answer):
        return not_solved(name, grid.tolist())
    values = torch.as_tensor(answer, dtype=torch.float32).flatten()
    check(name, values.numel() == 16 and torch.equal(values.unique(), grid),
          "16 bit patterns: sign s, exponent e (2 bits), mantissa m (1 bit), bias 1; e > 0 gives "
          "(-1)^s * 2^(e-1) * (1 + m/2), e = 0 (subnormal) gives (-1)^s * m/2. Positive values: 0, 0.5, ... 6.")
    return answer


def _int4_fake_quant(w, group_size):
    from ..quant.formats import fake_quant_int
    return fake_quant_int(w, 4, group_size, symmetric=True)


def check_int4_fake_quant(fake_quant_fn, w):
    from ..quant.formats import relative_error
    for group_size in (32, None):
        name = f"symmetric INT4 fake quantization, group size {group_size}"
        try:
            answer = fake_quant_fn(w, group_size)
        except NotImplementedError:
            return not_solved(name, _int4_fake_quant)
        expected = _int4_fake_quant(w, group_size)
        ok = answer is not None and answer.shape == w.shape and relative_error(expected, answer) < 1e-3
        check(name, ok,
              "split each row into groups (reshape to [-1, group_size]; per channel: one group per row), "
              "scale = max|w| / 7 per group, q = clamp(round(w / scale), -7, 7), return q * scale in w's shape.")
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


def check_distinct_per_block(answer, w, block: int = 32):
    blocks = w.reshape(-1, block)
    expected = (blocks.sort(dim=1).values.diff(dim=1) != 0).sum(dim=1) + 1
    name = f"distinct values in each of the {len(expected)} blocks of {block} weights"
    if unsolved(answer):
        return not_solved(name, expected)
    ok = answer is not None and torch.as_tensor(answer).shape == expected.shape and \
        torch.equal(torch.as_tensor(answer).to(expected.device, expected.dtype), expected)
    check(name, ok, "reshape the weight to [-1, 32] (blocks run along each row), sort each block, and count the "
          "positions where a value differs from the previous one, plus one.")
    return answer
