import pytest
import torch

from common.errors import WorkshopError
from common.quant.formats import (FORMATS, FP8_DTYPES, grouped, bits_per_weight, fake_quant, fake_quant_fp8,
                                  fake_quant_int, format_grid, fp4_e2m1_values, int_scale_zero, nf4_levels,
                                  outlier_range_fraction, relative_error, round_to_grid)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def assert_nearest(values: torch.Tensor, candidates: torch.Tensor, got: torch.Tensor):
    """Brute force: every `got` is a candidate of its row, at the minimum distance (ties either way)."""
    distance = (values[:, :, None] - candidates[:, None, :]).abs()
    best = distance.min(dim=2).values
    chosen = (values - got).abs()
    on_grid = (got[:, :, None] - candidates[:, None, :]).abs().min(dim=2).values
    assert torch.all(on_grid <= 1e-6 * candidates.abs().amax(dim=1, keepdim=True))
    assert torch.all(chosen <= best + 1e-6 * values.abs().amax(dim=1, keepdim=True))


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("group_size", [-1, None, 32])
def test_int_is_nearest_grid_point(bits, symmetric, group_size):
    w = torch.randn(8, 64) * torch.linspace(0.1, 3, 64)
    groups = grouped(w, group_size)
    scale, zero = int_scale_zero(groups, bits, symmetric)
    codes = torch.arange(-(2 ** (bits - 1) - 1), 2 ** (bits - 1)) if symmetric else torch.arange(2 ** bits)
    candidates = (codes[None, :] - zero) * scale  # every value each group can represent
    assert_nearest(groups, candidates, grouped(fake_quant_int(w, bits, group_size, symmetric), group_size))


@pytest.mark.parametrize("fmt,grid_max,group_size", [("nf4", 1.0, 64), ("fp4", 6.0, 32), ("fp4", 6.0, None),
                                                     ("fp8_e4m3", 448.0, -1), ("fp8_e5m2", 57344.0, None)])
def test_absmax_formats_are_nearest_grid_point(fmt, grid_max, group_size):
    w = torch.randn(16, 128) * 0.02
    groups = grouped(w, group_size)
    scale = groups.abs().amax(dim=1, keepdim=True) / grid_max
    candidates = format_grid(fmt)[None, :] * scale
    assert_nearest(groups, candidates, grouped(fake_quant(w, fmt, group_size), group_size))


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
@pytest.mark.parametrize("group_size", [-1, None])
def test_fp8_is_bit_exact_with_torch_cast(fmt, group_size):
    w = torch.randn(32, 256) * torch.logspace(-3, 1, 256)
    groups = grouped(w, group_size)
    scale = groups.abs().amax(dim=1, keepdim=True) / torch.finfo(FP8_DTYPES[fmt]).max
    expected = ((groups / scale).to(FP8_DTYPES[fmt]).float() * scale).reshape(w.shape)
    assert torch.equal(fake_quant_fp8(w, fmt, group_size), expected)


def test_nf4_levels():
    levels = nf4_levels()
    assert levels.numel() == 16 and levels.unique().numel() == 16
    assert (levels == 0).sum() == 1 and levels.min() == -1 and levels.max() == 1
    assert (levels > 0).sum() == 8 and (levels < 0).sum() == 7
    # symmetric-ish: mirrored, the 7 negative levels fall between consecutive positive ones; both ends at 1
    positive, negative = levels[levels > 0], -levels[levels < 0].flip(0)
    assert torch.all(positive[:-2] < negative[:-1]) and torch.all(negative[:-1] < positive[1:-1])
    # equal-probability bins of a normal distribution: denser near zero
    gaps = levels.diff()
    assert gaps[7] < gaps[0] and gaps[8] < gaps[-1]


def test_fp4_and_fp8_grids():
    assert torch.equal(fp4_e2m1_values().abs().unique(), torch.tensor([0, 0.5, 1, 1.5, 2, 3, 4, 6]))
    e4m3 = format_grid("fp8_e4m3")
    assert e4m3.max() == 448 and e4m3.numel() == 253  # 256 patterns, 2 NaNs, -0 == 0
    assert format_grid("fp8_e5m2").max() == 57344
    assert torch.equal(format_grid("int4"), torch.arange(-7, 8.0))


def test_round_to_grid_clamps_and_rounds():
    grid = torch.tensor([-1.0, 0.0, 2.0])
    assert torch.equal(round_to_grid(torch.tensor([-5.0, -0.4, 0.9, 1.1, 9.0]), grid),
                       torch.tensor([-1.0, 0.0, 0.0, 2.0, 2.0]))


def test_nvfp4_blocks_and_scales():
    w = torch.randn(4, 64) * torch.tensor([1e-3, 1e-2, 1.0, 10.0]).repeat_interleave(16)
    q = fake_quant(w, "nvfp4")
    blocks, q_blocks = w.reshape(-1, 16), q.reshape(-1, 16)
    tensor_scale = blocks.abs().max() / (6 * 448)
    block_scale = (blocks.abs().amax(1, keepdim=True) / 6 / tensor_scale).to(torch.float8_e4m3fn).float() * tensor_scale
    assert_nearest(blocks, fp4_e2m1_values()[None, :] * block_scale, q_blocks)
    # blocks 1000x smaller than the largest still keep their shape thanks to the per-block scale
    assert relative_error(w[:, :16], q[:, :16]) < 0.2


def test_mxfp4_power_of_two_scales():
    w = torch.randn(8, 64)
    q = fake_quant(w, "mxfp4").reshape(-1, 32)
    blocks = w.reshape(-1, 32)
    scale = 2.0 ** (torch.floor(torch.log2(blocks.abs().amax(1, keepdim=True))) - 2)
    assert_nearest(blocks, fp4_e2m1_values()[None, :] * scale, q)
    assert torch.all(((q / scale).abs()[:, :, None] == fp4_e2m1_values().abs()).any(-1))


def test_fewer_bits_more_error_and_formats_ranked():
    w = torch.randn(64, 256)
    errors = {fmt: relative_error(w, fake_quant(w, fmt, 64 if fmt in ("int4", "int3", "int2", "nf4", "fp4") else "default"))
              for fmt in FORMATS}
    assert errors["int8"] < errors["int4"] < errors["int3"] < errors["int2"]
    assert errors["fp8_e4m3"] < errors["fp8_e5m2"] < errors["nf4"]
    assert errors["nf4"] < errors["fp4"] < errors["int4"]  # QLoRA's ranking at equal bits, on normal weights


def test_bits_per_weight():
    assert bits_per_weight("int4", 128) == 4 + 16 / 128
    assert bits_per_weight("int4", 128, symmetric=False) == 4 + 32 / 128
    assert bits_per_weight("nvfp4") == 4.5 and bits_per_weight("mxfp4") == 4.25
    assert bits_per_weight("fp8_e4m3") == 8


def test_bad_input():
    w = torch.randn(4, 96)
    with pytest.raises(WorkshopError, match="does not divide"):
        fake_quant(w, "int4", 64)
    with pytest.raises(WorkshopError, match="not supported"):
        fake_quant_int(w, 9)
    with pytest.raises(WorkshopError, match="Unknown number format"):
        fake_quant(w, "int5")
    with pytest.raises(WorkshopError, match="blocks of 16"):
        fake_quant(w, "nvfp4", 32)


def test_outlier_range_fraction():
    row = torch.cat([torch.linspace(-1, 1, 95), torch.tensor([10.0, -10.0, 8.0, -8.0, 9.0])])
    w = torch.stack([row, row.flip(0) * 3])
    assert torch.allclose(outlier_range_fraction(w), torch.tensor([0.9, 0.9]))
    uniform = torch.linspace(-1, 1, 1001)[None]  # no outliers: the top 5% span about 5% of the range
    assert abs(outlier_range_fraction(uniform).item() - 0.05) < 0.002
