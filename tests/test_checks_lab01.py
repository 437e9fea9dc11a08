"""Lab 01's checkers hand back their reference for the unsolved stub and reject plausible wrong answers."""
from statistics import NormalDist

import pytest
import torch

from common.checks import ExerciseFailed
from common.checks.lab01 import check_decode_float, check_grid_fake_quant, check_nf4_levels, check_outlier_fraction
from conftest import unsolved_function   # an exercise left open: the stub labs/ hands the learner


def decode(pattern, exponent_bits, mantissa_bits, bias, subnormal_exponent=1, subnormals=True, signed=True):
    """A bit-field decoder, with one deliberate mistake switched on by each keyword."""
    sign = -1.0 if signed and (pattern >> (exponent_bits + mantissa_bits)) & 1 else 1.0
    e = (pattern >> mantissa_bits) & ((1 << exponent_bits) - 1)
    fraction = (pattern & ((1 << mantissa_bits) - 1)) / 2 ** mantissa_bits
    if e == 0 and subnormals:
        return sign * 2.0 ** (subnormal_exponent - bias) * fraction
    return sign * 2.0 ** (e - bias) * (1 + fraction)


def test_the_decoder_falls_back_on_its_reference_and_accepts_a_right_one(capsys):
    reference = check_decode_float(unsolved_function)
    assert "NOT SOLVED YET" in capsys.readouterr().out
    assert sorted({reference(p, 2, 1, 1) for p in range(16)}) == [-6, -4, -3, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert check_decode_float(decode) is decode
    assert check_decode_float(reference) is reference


@pytest.mark.parametrize("mistake", [dict(subnormals=False), dict(subnormal_exponent=0), dict(signed=False)],
                         ids=["no subnormals", "subnormal exponent -bias", "sign ignored"])
def test_the_decoder_rejects_a_decoder_with_one_mistake(mistake):
    with pytest.raises(ExerciseFailed):
        check_decode_float(lambda *fields: decode(*fields, **mistake))


def test_a_decoder_that_only_knows_e2m1_is_rejected():
    e2m1 = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    with pytest.raises(ExerciseFailed):
        check_decode_float(lambda p, *fields: (-1 if p >> 3 & 1 else 1) * e2m1[p & 7])


def nf4(offset=1 - 0.5 * (1 / 30 + 1 / 32), positive=8, negative=7, zero=True, normalise=True):
    """QLoRA's NF4 levels, with one deliberate mistake switched on by each keyword."""
    quantile = NormalDist().inv_cdf
    levels = [quantile(0.5 + k * (offset - 0.5) / positive) for k in range(1, positive + 1)]
    levels += [-quantile(0.5 + k * (offset - 0.5) / negative) for k in range(1, negative + 1)]
    levels += [0.0] if zero else []
    largest = max(abs(v) for v in levels) if normalise else 1.0
    return [v / largest for v in levels]


def test_the_nf4_grid_falls_back_on_its_reference_and_accepts_the_definition(capsys):
    reference = check_nf4_levels(...)
    assert "NOT SOLVED YET" in capsys.readouterr().out and reference.numel() == 16
    assert check_nf4_levels(nf4()) is not None
    assert check_nf4_levels(torch.tensor(nf4())) is not None


@pytest.mark.parametrize("mistake", [dict(negative=8, zero=False), dict(normalise=False), dict(offset=0.99)],
                         ids=["8 + 8 levels without zero", "not normalised", "another top probability"])
def test_the_nf4_grid_rejects_a_grid_with_one_mistake(mistake):
    with pytest.raises(ExerciseFailed):
        check_nf4_levels(nf4(**mistake))


@pytest.fixture(scope="module")
def weight():
    return torch.randn(96, 192, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 3, 192)


def grid_fake_quant(w, grid, group_size, rounding="nearest", per_tensor=False, absmax=True):
    """Absmax fake quantization onto a grid, with one deliberate mistake switched on by each keyword."""
    groups = w.reshape(1, -1) if per_tensor else w.reshape(w.shape[0], -1) if group_size is None else w.reshape(-1, group_size)
    peak = groups.abs().amax(1, keepdim=True) if absmax else groups.amax(1, keepdim=True)
    x = groups / (peak / grid.abs().max())
    if rounding == "nearest":
        index = (x[..., None] - grid).abs().argmin(-1)
    else:   # the grid value at or below
        index = (torch.searchsorted(grid, x.contiguous(), right=True) - 1).clamp(min=0)
    return (grid[index] * peak / grid.abs().max()).reshape(w.shape)


def test_the_grid_fake_quant_falls_back_on_its_reference_and_accepts_a_right_one(weight, capsys):
    reference = check_grid_fake_quant(unsolved_function, weight)
    assert "NOT SOLVED YET" in capsys.readouterr().out
    assert check_grid_fake_quant(reference, weight) is reference
    assert check_grid_fake_quant(grid_fake_quant, weight) is grid_fake_quant


@pytest.mark.parametrize("mistake", [dict(rounding="down"), dict(per_tensor=True), dict(absmax=False)],
                         ids=["rounded down", "one scale per tensor", "max instead of max |w|"])
def test_the_grid_fake_quant_rejects_one_with_a_mistake(weight, mistake):
    with pytest.raises(ExerciseFailed):
        check_grid_fake_quant(lambda w, grid, g: grid_fake_quant(w, grid, g, **mistake), weight)


def test_the_grid_fake_quant_rejects_groups_that_run_down_the_columns(weight):
    transposed = lambda w, grid, g: grid_fake_quant(w.T.contiguous(), grid, g).T  # noqa: E731
    with pytest.raises(ExerciseFailed):
        check_grid_fake_quant(transposed, weight)


def outlier_share(w, top=0.05, by_magnitude=True):
    n_top = round(top * w.shape[1])
    key = w.abs() if by_magnitude else w
    inlier = key < key.topk(n_top, dim=1).values[:, -1:]
    inlier_range = torch.where(inlier, w, -torch.inf).amax(1) - torch.where(inlier, w, torch.inf).amin(1)
    return (1 - inlier_range / (w.amax(1) - w.amin(1))).mean().item()


def test_the_outlier_share_falls_back_on_its_reference_and_rejects_outliers_by_value(weight, capsys):
    reference = check_outlier_fraction(unsolved_function, weight)
    assert "NOT SOLVED YET" in capsys.readouterr().out
    assert check_outlier_fraction(reference, weight) is reference
    assert check_outlier_fraction(outlier_share, weight) is outlier_share
    with pytest.raises(ExerciseFailed):   # the largest values, not the largest magnitudes
        check_outlier_fraction(lambda w: outlier_share(w, by_magnitude=False), weight)


def test_the_grid_fake_quant_accepts_either_level_of_an_exact_tie():
    # Weights on a discrete grid (as this model's Q4_1 weights are) put many values exactly between two
    # levels: rounding them down (argmin's first index) and to even (torch.round) are both right.
    w = torch.randint(-14, 15, (96, 192), generator=torch.Generator().manual_seed(2)).float() / 2
    w[:, ::64] = 7.0     # every group's max |w| is 7: scale 1 on the INT4 grid, so x.5 values are ties
    assert check_grid_fake_quant(grid_fake_quant, w) is grid_fake_quant
