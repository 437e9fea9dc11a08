"""The W4A16 Triton kernel against the dequantize-then-matmul reference (Triton's interpreter on a CPU)."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must be set before triton compiles anything

from common.errors import WorkshopError  # noqa: E402
from common.quant.layout import dequantize_int4, pack_int4  # noqa: E402
from common.quant.kernel_paths import uses_triton_w4a16  # noqa: E402
from common.quant.qlinear import QuantLinear  # noqa: E402
from kernels.gemm_paths import quantize_int8_rows, quantize_rows  # noqa: E402
from kernels.w4a16 import GEMM_CONFIGS, GEMV_CONFIGS, SMALL_M_CONFIGS, _run, candidate_configs, w4a16_matmul  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def random_w4(n, k, group, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, 16, (n, k), generator=g)
    scales = (torch.rand(n, k // group, generator=g) * 0.02 + 0.001).to(dtype)
    zeros = torch.randint(0, 16, (n, k // group), generator=g).to(dtype)
    return codes, pack_int4(codes).to(DEVICE), scales.to(DEVICE), zeros.to(DEVICE)


def test_quant_linear_uses_the_kernel_where_it_can():
    linear = torch.nn.Linear(256, 64, bias=True).to(DEVICE)
    layer = QuantLinear.from_linear(linear.half(), "int4", group_size=128)
    x = torch.randn(3, 256).half().to(DEVICE)
    assert uses_triton_w4a16(layer, x) == (DEVICE == "cuda")
    reference = x.float() @ layer.dequantized_weight().T + layer.bias.float()
    assert ((layer(x).float() - reference).norm() / reference.norm()) < 1e-2


@pytest.mark.parametrize("m, n, k, group", [(1, 64, 256, 128), (1, 40, 576, 64), (3, 64, 256, 128),
                                            (16, 72, 576, 64), (17, 96, 576, 64)])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_kernel_matches_reference(m, n, k, group, dtype):
    if DEVICE == "cpu" and dtype == torch.bfloat16 and m > 1:
        pytest.skip("Triton's interpreter has no bf16 tl.dot (numpy lacks bf16); this case runs on a GPU")
    _, qweight, scales, zeros = random_w4(n, k, group, dtype, seed=m + n)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(1)).to(dtype).to(DEVICE)
    reference = x.float() @ dequantize_int4(qweight, scales, zeros, group).float().T
    out = torch.full((m, n), float("nan"), dtype=dtype, device=DEVICE)  # poisoned: every element must be written
    out = w4a16_matmul(x, qweight, scales, zeros, group)
    assert out.dtype == dtype and out.shape == (m, n) and not out.isnan().any()
    error = (out.float() - reference).norm() / reference.norm()
    assert error < 1e-2, error


@pytest.mark.parametrize("m", [1, 5])
def test_every_split_k_and_steps_config_of_the_gemv_and_small_m_kernels(m):
    _, qweight, scales, zeros = random_w4(40, 768, 32, torch.float16)  # 24 groups
    x = torch.randn(m, 768).half().to(DEVICE)
    reference = x.float() @ dequantize_int4(qweight, scales, zeros, 32).float().T
    # a narrow and a wide row block (the interpreter is slow), with every SPLIT_K and steps value
    configs = [c for c in candidate_configs(m, 768, 32) if c["BLOCK_N"] in (8, 64)]
    for key in ("SPLIT_K", "GROUPS_PER_STEP", "num_stages"):
        every = {c[key] for c in (GEMV_CONFIGS if m == 1 else SMALL_M_CONFIGS) if key in c}
        assert every == {c[key] for c in configs if key in c}
    for config in configs:
        out = _run(x, qweight, scales, zeros, 32, config)
        assert ((out.float() - reference).norm() / reference.norm()) < 1e-2, config


def test_configs_that_would_split_a_group_are_not_candidates():
    # K = 576 with groups of 64 is 9 groups: SPLIT_K 2, 4 or 8 would leave programs a partial share
    assert all(9 % (c["SPLIT_K"] * c.get("GROUPS_PER_STEP", 1)) == 0
               for m in (1, 4) for c in candidate_configs(m, 576, 64))


@pytest.mark.parametrize("config", [c for c in GEMM_CONFIGS if c["SPLIT_K"] > 1] + [GEMM_CONFIGS[-1]])
def test_gemm_configs_with_split_k_tail(config):
    _, qweight, scales, zeros = random_w4(64, 576, 64, torch.float16)  # K = 4.5 x 128: the last K block is half empty
    x = torch.randn(20, 576).half().to(DEVICE)
    reference = x.float() @ dequantize_int4(qweight, scales, zeros, 64).float().T
    out = _run(x, qweight, scales, zeros, 64, config)
    assert ((out.float() - reference).norm() / reference.norm()) < 1e-2


def test_unsupported_shapes_say_what_to_do():
    _, qweight, scales, zeros = random_w4(16, 256, 128, torch.float16)
    with pytest.raises(WorkshopError, match="power-of-two group size"):
        w4a16_matmul(torch.randn(1, 256).half().to(DEVICE), qweight, scales, zeros, group_size=96)
    with pytest.raises(WorkshopError, match="fp16/bf16"):
        w4a16_matmul(torch.randn(1, 256).to(DEVICE), qweight, scales, zeros)


def test_scales_may_be_fp16_for_bf16_activations():
    """QuantLinear stores fp16 scales; the kernel converts them in registers instead of a copy per call."""
    _, qweight, scales, zeros = random_w4(48, 256, 64, torch.float16)
    x = torch.randn(1, 256).to(torch.bfloat16).to(DEVICE)
    reference = x.float() @ dequantize_int4(qweight, scales, zeros, 64).float().T
    out = w4a16_matmul(x, qweight, scales, zeros, 64)
    assert out.dtype == torch.bfloat16 and ((out.float() - reference).norm() / reference.norm()) < 1e-2


@pytest.mark.parametrize("m", [1, 2])
def test_every_nibble_position_meets_its_input(m):
    """One code set at a time: output row n must be (code - zero) * scale * x[k] for exactly that k
    (M = 1: the GEMV's shift-and-mask per word; M = 2: the small-M kernel's byte unpacking)."""
    n, k, group = 8, 128, 128
    codes = torch.zeros(n, k, dtype=torch.long)
    for row in range(n):
        codes[row, 8 * row + row] = 15  # row r: nibble r of word r
    x = (torch.arange(1, k + 1, dtype=torch.float16) / 64).repeat(m, 1)
    scales, zeros = torch.ones(n, 1, dtype=torch.float16), torch.zeros(n, 1, dtype=torch.float16)
    out = w4a16_matmul(x.to(DEVICE), pack_int4(codes).to(DEVICE), scales.to(DEVICE), zeros.to(DEVICE), group)
    assert torch.equal(out.float().cpu(), torch.tensor([[15 * x[0, 9 * r].item() for r in range(n)]] * m))


def test_one_pass_int8_quantizer_matches_the_reference():
    x = (torch.randn(5, 300, generator=torch.Generator().manual_seed(2)) * 3).to(torch.bfloat16).to(DEVICE)
    codes, scale = quantize_rows(x, torch.int8)
    ref_codes, ref_scale = quantize_int8_rows(x)
    assert torch.equal(scale, ref_scale) and torch.equal(codes, ref_codes)
    static_codes, _ = quantize_rows(x, torch.int8, torch.tensor(0.05, device=DEVICE))
    assert torch.equal(static_codes, torch.clamp(torch.round(x.float() / 0.05), -127, 127).to(torch.int8))
