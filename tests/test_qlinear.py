import pytest
import torch
import torch.nn.functional as F

from common.errors import WorkshopError
from common.sizes import stored_bytes
from common.quant.formats import fake_quant_fp8, fake_quant_int, relative_error
from common.quant import kernel_paths
from common.quant.kernel_paths import MarlinCache, uses_low_precision_gemm
from common.quant.layout import pack_int4, unpack_int4
from common.quant.fp8 import FP8Config, quantize_fp8
from common.quant.nf4 import NF4Config, quantize_nf4
from common.quant.qlinear import QuantLinear, replace_linears
from common.quant.rtn import RTNConfig, quantize_rtn


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def linear(n=64, k=256, bias=False, dtype=torch.float32):
    torch.manual_seed(0)
    layer = torch.nn.Linear(k, n, bias=bias)
    return layer.to(dtype)


def test_pack_layout_and_round_trip():
    codes = torch.randint(0, 16, (8, 32))
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (8, 16)
    assert torch.equal(packed[:, 0], (codes[:, 0] | (codes[:, 1] << 4)).to(torch.uint8))  # k=0 low, k=1 high
    assert torch.equal(unpack_int4(packed), codes.to(torch.uint8))
    with pytest.raises(WorkshopError):
        pack_int4(torch.full((2, 4), 16))


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_matches_fake_quant_and_dequant_formula(symmetric):
    lin = linear(bias=True)
    q = QuantLinear.from_linear(lin, "int4", group_size=64, symmetric=symmetric)
    x = torch.randn(3, 5, 256)
    # exactly the documented dequantization of the stored buffers
    codes = unpack_int4(q.qweight).float()
    w = (codes - q.zeros.float().repeat_interleave(64, 1)) * q.scales.float().repeat_interleave(64, 1)
    assert torch.equal(q(x), F.linear(x, w, lin.bias))
    assert codes.min() >= 0 and codes.max() <= 15
    if symmetric:
        assert torch.all(q.zeros == 8)
    # and exactly the fake-quant weight, once its scales are rounded to the stored fp16 too
    fake = fake_quant_int(lin.weight.detach(), 4, 64, symmetric, scale_dtype=torch.float16)
    assert torch.equal(q(x), F.linear(x, fake, lin.bias))
    assert relative_error(fake_quant_int(lin.weight.detach(), 4, 64, symmetric), fake) < 1e-2


def test_int8_and_fp8_match_fake_quant():
    lin = linear()
    x = torch.randn(4, 256)
    q8 = QuantLinear.from_linear(lin, "int8")
    assert q8.qweight.dtype == torch.int8 and q8.scales.shape == (64, 1)
    assert torch.equal(q8(x), F.linear(x, fake_quant_int(lin.weight.detach(), 8, None, scale_dtype=torch.float16)))
    for group_size in (-1, None):
        qf = QuantLinear.from_linear(lin, "fp8", group_size)
        assert qf.qweight.dtype == torch.float8_e4m3fn
        assert torch.equal(qf.dequantized_weight(), fake_quant_fp8(lin.weight.detach(), "fp8_e4m3", group_size))


PACKABLE = [(quantize_rtn, RTNConfig(bits=4, group_size=64), "int4"),
            (quantize_rtn, RTNConfig(bits=4, group_size=64, symmetric=True), "int4"),
            (quantize_rtn, RTNConfig(bits=8, group_size=None, symmetric=True), "int8"),
            (quantize_fp8, FP8Config(quantize_activations=False), "fp8"),
            (quantize_fp8, FP8Config(weight_group_size=-1, quantize_activations=False), "fp8"),
            (quantize_nf4, NF4Config(), "nf4")]


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bit patterns of a float tensor, -0.0 written as +0.0 (an integer code has no sign of zero)."""
    return (t + 0.0).view({4: torch.int32, 2: torch.int16}[t.element_size()])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)  # fp16 and bf16 scales
@pytest.mark.parametrize("quantize, config, fmt", PACKABLE, ids=lambda v: repr(v) if not callable(v) else "")
def test_packed_weights_are_the_fake_quantized_ones_bit_for_bit(tiny, quantize, config, fmt, dtype):
    """Lab 02's quantizers fake-quantize on the grids of common.quant.formats, and QuantLinear stores codes
    on the same grids: packing the fake-quantized model gives back its weights bit for bit, in every dtype
    (16-bit scales are rounded before the codes are chosen, on both sides), and so does quantizing the
    float weights straight into a QuantLinear."""
    import copy
    from common.calibration import decoder_layers, linear_layers
    from common.data import calibration_batch
    from common.quant.packing import pack_quantized
    model = copy.deepcopy(tiny[0]).to(dtype)
    linears = {f"model.layers.{i}.{name}": lin for i, layer in enumerate(decoder_layers(model))
               for name, lin in linear_layers(layer).items()}
    floats = {name: copy.deepcopy(lin) for name, lin in linears.items()}
    quantize(model, config, calibration_batch(tiny[1], 2, 32), progress=False)
    fake = {name: lin.weight.detach().clone() for name, lin in linears.items()}
    assert not any(torch.equal(fake[name], floats[name].weight) for name in fake)
    packed = pack_quantized(model, progress=False)
    for name, weight in fake.items():
        layer = packed.get_submodule(name)
        assert isinstance(layer, QuantLinear) and layer.fmt == fmt
        assert torch.equal(bits(layer.dequantized_weight(dtype)), bits(weight)), name
        direct = QuantLinear.from_linear(floats[name], fmt, layer.group_size, symmetric=getattr(config, "symmetric", False))
        assert torch.equal(bits(direct.dequantized_weight(dtype)), bits(weight)), name


def test_codes_handed_over_by_an_algorithm():
    lin = linear()
    codes = torch.randint(0, 16, (64, 256))
    scales, zeros = torch.rand(64, 2) + 0.1, torch.randint(0, 16, (64, 2)).float()
    q = QuantLinear.from_linear(lin, "int4", 128, codes=codes, scales=scales, zeros=zeros)
    expected = (codes - zeros.half().float().repeat_interleave(128, 1)) * scales.half().float().repeat_interleave(128, 1)
    assert torch.equal(q.dequantized_weight(), expected)
    signed = QuantLinear.from_linear(lin, "int4", 128, codes=codes - 8, scales=scales, zeros=torch.zeros(64, 2))
    assert torch.equal(signed.qweight, pack_int4(codes)) and torch.all(signed.zeros == 8)
    with pytest.raises(WorkshopError, match="scales have shape"):
        QuantLinear.from_linear(lin, "int4", 128, codes=codes, scales=scales[:, :1], zeros=zeros)


def test_stored_bytes_and_state_dict_round_trip(tmp_path):
    n, k, g = 64, 256, 128
    q = QuantLinear.from_linear(linear(n, k), "int4", g)
    assert stored_bytes(q) == n * k // 2 + 2 * (n * k // g) * 2  # packed codes + fp16 scales + fp16 zeros
    assert stored_bytes(QuantLinear.from_linear(linear(n, k), "int8")) == n * k + 2 * n
    assert stored_bytes(QuantLinear.from_linear(linear(n, k), "fp8", -1)) == n * k + 4
    for fmt, group in (("int4", g), ("int8", None), ("fp8", None)):
        original = QuantLinear.from_linear(linear(n, k, bias=True, dtype=torch.bfloat16), fmt, group)
        torch.save(original.state_dict(), tmp_path / "q.pt")
        fresh = QuantLinear(k, n, fmt, group, bias=True, dtype=torch.bfloat16)
        fresh.load_state_dict(torch.load(tmp_path / "q.pt"))
        for name, t in original.state_dict().items():
            assert t.dtype == fresh.state_dict()[name].dtype
            assert torch.equal(t.view(torch.uint8), fresh.state_dict()[name].view(torch.uint8)), name
    assert original.scales.dtype == torch.float32 and fresh.bias.dtype == torch.bfloat16


def test_replace_linears(tiny):
    model, tokenizer = tiny
    import copy
    quantized = replace_linears(copy.deepcopy(model), "int4", 128, progress=False)
    layers = [m for m in quantized.modules() if isinstance(m, QuantLinear)]
    assert len(layers) == 7 * model.config.num_hidden_layers
    assert not isinstance(quantized.lm_head, QuantLinear)
    assert stored_bytes(quantized) < 0.6 * stored_bytes(model)
    ids = tokenizer("hello quantized world", return_tensors="pt").input_ids
    with torch.no_grad():
        reference = model(ids).logits
        errors = {fmt: relative_error(reference, replace_linears(copy.deepcopy(model), fmt, group, progress=False)(ids).logits)
                  for fmt, group in (("int8", None), ("fp8", -1))}
        errors["int4"] = relative_error(reference, quantized(ids).logits)
    assert errors["int8"] < errors["fp8"] < errors["int4"] < 0.2
    with pytest.raises(WorkshopError, match="does not divide"):
        replace_linears(copy.deepcopy(model), "int4", 96, progress=False)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="INT8/FP8 tensor-core paths need a GPU with FP8 (sm_89+)")
@pytest.mark.parametrize("fmt, group_size, activations", [("int8", None, "int8_per_token"),
                                                          ("fp8", None, "fp8_static"), ("fp8", -1, "fp8_static")])
@pytest.mark.parametrize("shape", [(2, 32), (1, 1), (1, 3)])  # prefill-like, and decode's rows padded to the kernels' M
def test_low_precision_gemm_paths_match_the_reference(fmt, group_size, activations, shape, monkeypatch):
    lin = linear(256, 512).cuda().to(torch.bfloat16)
    x = torch.randn(*shape, 512, device="cuda", dtype=torch.bfloat16)
    scale = torch.tensor([x.abs().max().item() / 448], device="cuda") if fmt == "fp8" else None
    q = QuantLinear.from_linear(lin, fmt, group_size, activations=activations, input_scale=scale)
    assert uses_low_precision_gemm(q)
    fast = q(x)
    assert fast.shape == (*shape, 256)
    monkeypatch.setattr(kernel_paths, "uses_low_precision_gemm", lambda layer: False)   # the dequantize-then-matmul reference
    assert relative_error(q(x).float(), fast.float()) < 1e-2


def test_marlin_cache_picks_the_slices_of_the_inputs_row_tile():
    cache = MarlinCache(key=(), packed=None, splits=(8, 6, 4, 2))  # one choice per 16-row tile of the kernel
    picked = {rows: cache.splits_for(torch.zeros(rows, 64)) for rows in (1, 16, 17, 32, 33, 48, 49, 64)}
    assert picked == {1: 8, 16: 8, 17: 6, 32: 6, 33: 4, 48: 4, 49: 2, 64: 2}
    assert cache.splits_for(torch.zeros(2, 3, 64)) == 8  # leading dimensions are rows too: 6 of them
    assert cache.splits_for(torch.zeros(2, 9, 64)) == 6  # 18 rows



@pytest.mark.parametrize("fmt, bits, group_size, symmetric", [("int4", 4, 64, False), ("int4", 4, 64, True),
                                                              ("int8", 8, None, True), ("nf4", 4, 64, True)])
def test_a_group_of_zeros_stays_zero_fake_and_packed(fmt, bits, group_size, symmetric):
    """An all-zero group has a scale below fp16's range: rounded to 0 it made 0/0 codes (NaN weights in
    the fake-quantized float32 model, zeros in the packed one). Both sides now give the same exact zeros."""
    from common.quant.formats import fake_quant_nf4
    lin = linear()
    zeros = (3, slice(0, group_size))   # one group, or a whole row per channel (group_size None)
    with torch.no_grad():
        lin.weight[zeros] = 0
    w = lin.weight.detach()
    fake = (fake_quant_nf4(w, group_size, scale_dtype=torch.float16) if fmt == "nf4" else
            fake_quant_int(w, bits, group_size, symmetric=symmetric, scale_dtype=torch.float16))
    assert torch.isfinite(fake).all() and (fake[zeros] == 0).all()
    packed = QuantLinear.from_linear(lin, fmt, group_size, symmetric=symmetric)
    assert torch.equal(packed.dequantized_weight(torch.float32) + 0.0, fake + 0.0), fmt
