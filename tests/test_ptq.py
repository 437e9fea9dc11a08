import copy
import math

import pytest
import torch

from common.data import calibration_batch
from common.errors import WorkshopError
from common.eval import perplexity
from common.sizes import stored_bytes
from common.quant.awq import AWQConfig, awq_layer, fold_scales, quantize_awq, scaling_groups
from common.calibration import (decoder_layers, first_layer_inputs, hessian, linear_input_hessians, linear_layers,
                                record_linear_inputs, run_layer)
from common.prune.sparsegpt import SparseGPTConfig, sparsegpt_layer, sparsegpt_weight
from common.quant.storage import true_bytes
from common.cli import build_parser, main
from common.quant.presets import method_and_config
from common.quant.formats import fake_quant_int, relative_error
from common.quant.fp8 import FP8Config, quantize_fp8
from common.quant.gptq import GPTQConfig, gptq_layer, gptq_quantize_weight, quantize_gptq
from common.quant.nf4 import NF4Config, quantize_nf4
from common.quant.layer_study import eval_text_windows
from common.quant.rtn import RTNConfig, quantize_rtn, rtn_into
from common.quant.smoothquant import (SmoothQuantConfig, quantize_smoothquant, smoothing_groups, smoothing_scale,
                                      smoothquant_layer)


@pytest.fixture(scope="module")
def calib(tiny):
    return calibration_batch(tiny[1], 4, 64)


LAYER = 3   # of the embedded model: the inputs of its attention have activation outliers (checked below)


@pytest.fixture(scope="module")
def embedded_layer(embedded):
    """Decoder layer LAYER of the embedded model and the hidden states it receives (through the float
    layers before it) on calibration text and on held-out evaluation text: (layer, calib, held_out), each
    of the two a (hidden states, layer keyword arguments) pair."""
    model, tokenizer = embedded

    def inputs_of(batch):
        hidden, kwargs = first_layer_inputs(model, batch)
        for layer in decoder_layers(model)[:LAYER]:
            hidden = run_layer(layer, hidden, kwargs)
        return hidden, kwargs
    return (decoder_layers(model)[LAYER], inputs_of(calibration_batch(tokenizer, 4, 128)),
            inputs_of(eval_text_windows(tokenizer, "wiki", 128, 4)))


def layer_error(layer, quantized, held_out) -> float:
    """||what the quantized layer adds to the residual stream - what the float layer adds||^2 / ||what the
    float layer adds||^2, on the held-out hidden states."""
    hidden, kwargs = held_out
    added = run_layer(layer, hidden, kwargs) - hidden
    return float(((run_layer(quantized, hidden, kwargs) - hidden - added) ** 2).sum() / (added ** 2).sum())


def test_awq_layer_error_below_rtn_on_held_out_text(embedded_layer):
    """AWQ's scales (searched on calibration text) must carry over: on text it never saw, the quantized
    layer's error is well below round-to-nearest's on the same W4 g64 grid."""
    layer, calib, held_out = embedded_layer
    awq, rtn = copy.deepcopy(layer), copy.deepcopy(layer)
    awq_layer(awq, *calib, AWQConfig(bits=4, group_size=64, search_tokens=128))
    for linear in linear_layers(rtn).values():
        rtn_into(linear, linear.weight.data, 4, 64, symmetric=False)
    assert layer_error(layer, awq, held_out) < 0.75 * layer_error(layer, rtn, held_out)


def test_smoothquant_w8a8_error_below_unsmoothed_where_activations_have_outliers(embedded_layer):
    """Per-token INT8 activations lose the small channels to a few huge ones; SmoothQuant moves that range
    into the weights, so on held-out text its W8A8 layer errs well below plain W8A8."""
    layer, calib, held_out = embedded_layer
    channel_max = record_linear_inputs(layer, *held_out, names=["self_attn.q_proj"])["self_attn.q_proj"].abs().amax(0)
    assert channel_max.max() > 5 * channel_max.median()   # a few input channels far above the rest
    smoothed, plain = copy.deepcopy(layer), copy.deepcopy(layer)
    smoothquant_layer(smoothed, *calib, SmoothQuantConfig())
    smoothquant_layer(plain, *calib, SmoothQuantConfig(smooth=False))
    assert layer_error(layer, smoothed, held_out) < 0.75 * layer_error(layer, plain, held_out)


def correlated_inputs(tokens=2048, width=128, rank=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(tokens, rank, generator=g) @ torch.randn(rank, width, generator=g) \
        + 0.05 * torch.randn(tokens, width, generator=g)


@pytest.mark.parametrize("bits, group_size, act_order", [(4, None, False), (3, 32, False), (3, 32, True)])
def test_gptq_output_error_below_rtn_on_correlated_inputs(bits, group_size, act_order):
    x = correlated_inputs()
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    config = GPTQConfig(bits=bits, group_size=group_size, act_order=act_order, block_size=32)
    gptq, scales, zeros = gptq_quantize_weight(w, hessian(x), config)
    rtn = fake_quant_int(w, bits, group_size, symmetric=False)
    # the returned grid is the one the weights sit on: codes (w / scale + zero) are integers in range
    group = group_size or 128
    codes = gptq / scales.repeat_interleave(group, 1) + zeros.repeat_interleave(group, 1)
    assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.min() > -0.5 and codes.max() < 2 ** bits - 0.5
    output_error = lambda q: ((x @ (w - q).T) ** 2).mean()
    assert output_error(gptq) < 0.5 * output_error(rtn)
    # every row of every group still lies on a grid of 2^bits levels
    groups = gptq.reshape(-1, group_size or 128)
    assert max(len(row.unique()) for row in groups) <= 2 ** bits


def test_hessian_is_the_second_derivative_of_the_output_error():
    """GPTQ's H is the curvature of the mean squared output error of one row of weights, whatever the
    formula: autograd's Hessian of that error says so, H is symmetric positive semi-definite, and a
    step along an input direction the data never takes costs nothing."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    x[:, 5] = x[:, 0] - x[:, 1]          # inputs confined to a 5-dimensional subspace
    w0 = torch.randn(6, generator=g, dtype=torch.float64)
    error = lambda w: ((x @ (w - w0)) ** 2).mean()   # noqa: E731 (one output's squared error, per token)
    H = hessian(x).double()
    assert torch.allclose(H, torch.autograd.functional.hessian(error, w0), atol=1e-5)
    assert torch.allclose(H, H.T) and torch.linalg.eigvalsh(H).min() > -1e-4
    flat = torch.tensor([1.0, -1.0, 0, 0, 0, -1.0], dtype=torch.float64)   # x @ flat = 0 for every token
    assert float(flat @ H @ flat) == pytest.approx(0, abs=1e-4)


def test_the_layer_walk_accumulates_the_hessian_of_all_calibration_inputs(tiny, calib):
    """GPTQ and SparseGPT read H from one accumulator, chunk by chunk over the calibration batch: it is
    `hessian` of every input the linear receives, taken at once."""
    layer = decoder_layers(tiny[0])[0]
    hidden, kwargs = first_layer_inputs(tiny[0], calib)
    accumulated = linear_input_hessians(layer, torch.cat([hidden] * 3), kwargs)   # 12 sequences: two chunks
    inputs = record_linear_inputs(layer, torch.cat([hidden] * 3), kwargs)
    assert accumulated.keys() == inputs.keys() == linear_layers(layer).keys()
    for name, x in inputs.items():
        assert torch.allclose(accumulated[name], hessian(x), rtol=1e-4, atol=1e-6), name


@pytest.mark.parametrize("factor", [1e-6, 1e-3, 1e3, 1e6])
def test_gptq_and_sparsegpt_do_not_depend_on_the_scale_of_h(factor):
    """Both damp H by a fraction of its own mean diagonal, so H and any positive multiple of it (X^T X,
    X^T X / n, 2 X^T X / n: the conventions in the literature) give the same weights, up to float32
    rounding. An absolute damping would not: SparseGPT with H x factor + 0.01 I moves the weights by 12 to
    26% (relative error) over these factors."""
    x = correlated_inputs()
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    config = GPTQConfig(bits=3, group_size=32, block_size=32)
    gptq, scaled = (gptq_quantize_weight(w, h, config)[0] for h in (hessian(x), factor * hessian(x)))
    assert torch.equal(gptq, scaled)
    pruned, scaled = (sparsegpt_weight(w, h, 0.5) for h in (hessian(x), factor * hessian(x)))
    assert torch.equal(pruned == 0, scaled == 0) and relative_error(pruned, scaled) < 1e-4


@pytest.mark.parametrize("method", ["gptq", "sparsegpt"])
def test_true_sequential_fits_each_group_to_the_inputs_it_will_get(embedded_layer, method):
    """In true-sequential order (the reference code's --true-sequential), o_proj's H is measured after
    q/k/v are edited and down_proj's after gate/up, so each group is fitted to the inputs it will get:
    the edited layer's output errs less on the calibration text than when every H comes from the float
    layer. On held-out text the difference needs more calibration tokens than these 4 x 128 (where it is
    noise of either sign): at quick mode's 16 x 512, GPTQ W3 and W4 layers erred 1-5% less there."""
    layer, calib, _ = embedded_layer
    errors = []
    for true_sequential in (False, True):
        edited = copy.deepcopy(layer)
        if method == "gptq":
            gptq_layer(edited, *calib, GPTQConfig(bits=3, group_size=64, true_sequential=true_sequential))
        else:
            sparsegpt_layer(edited, *calib, SparseGPTConfig(sparsity=0.5, true_sequential=true_sequential), 0.5)
        errors.append(layer_error(layer, edited, calib))
    one_pass, true_sequential = errors
    assert true_sequential < 0.98 * one_pass


@pytest.mark.parametrize("command, method", [("quantize", "gptq"), ("prune", "sparsegpt")])
def test_true_sequential_from_the_command_line(command, method, monkeypatch):
    import common.budgets
    small = common.budgets.get_budget(calib_samples=2, calib_seqlen=32)
    monkeypatch.setattr(common.budgets, "get_budget", lambda *a, **k: small)
    for flag in ([], ["--true-sequential"]):
        args = build_parser().parse_args([command, "--model", "tiny-random", "--method", method, "--json", *flag])
        config = args.run(args).result["config"]
        if command == "prune":   # the pruner's config as a dict, the quantizer's as its repr
            assert config["true_sequential"] is bool(flag)
        else:
            assert f"true_sequential={bool(flag)}" in config


def test_true_sequential_is_checked_when_the_config_is_made():
    for make in (GPTQConfig, SparseGPTConfig):
        with pytest.raises(WorkshopError, match=r"\(true_sequential='yes'\) is not True or False"):
            make(true_sequential="yes")


def _outputs(model, ids):
    with torch.no_grad():
        return model(ids).logits


def test_smoothing_alone_keeps_outputs(tiny, calib):
    model = copy.deepcopy(tiny[0])
    reference = _outputs(model, calib)
    for layer in decoder_layers(model):
        groups = smoothing_groups(layer, down_proj=True)
        assert [names for _, names in groups][-1] == ["mlp.down_proj"] and len(smoothing_groups(layer)) == 2
        for producer, names in groups:
            linears = [layer.get_submodule(n) for n in names]
            act_absmax = torch.rand(linears[0].in_features) * 20 + 0.1
            s = smoothing_scale(act_absmax, [lin.weight for lin in linears], alpha=0.5)
            assert s.min() > 0 and not torch.allclose(s, torch.ones_like(s))
            fold_scales(producer, linears, s)
    assert torch.allclose(_outputs(model, calib), reference, atol=1e-4, rtol=1e-4)


def test_static_int8_activations_sit_on_one_grid_per_tensor(tiny, calib):
    model = quantize_smoothquant(copy.deepcopy(tiny[0]), SmoothQuantConfig(activation_scales="static",
                                                                             smooth_down_proj=True), calib, progress=False)
    captured = {}
    for name, linear in model.named_modules():
        if hasattr(linear, "weight_format"):   # after the quantizing hook: what the matmul reads
            linear.register_forward_hook(lambda m, args, out, name=name: captured.update({name: args[0]}))
    _outputs(model, calib)
    assert captured and all(model.get_submodule(n).weight_format.activations == "int8_static" for n in captured)
    for name, x in captured.items():
        scale = model.get_submodule(name).weight_format.input_amax / 127
        codes = x / scale
        assert torch.allclose(codes, codes.round(), atol=1e-3) and codes.abs().max() <= 128
    with pytest.raises(WorkshopError, match="INT8 W8A8 only"):
        SmoothQuantConfig(activation_scales="static", act_bits=4)


def test_awq_scale_folding_alone_keeps_outputs(tiny, calib):
    model = copy.deepcopy(tiny[0])
    reference = _outputs(model, calib)
    g = torch.Generator().manual_seed(0)
    for layer in decoder_layers(model):
        for previous, names in scaling_groups(layer):
            linears = [layer.get_submodule(n) for n in names]
            fold_scales(previous, linears, torch.rand(linears[0].in_features, generator=g) * 3 + 0.2)
    assert torch.allclose(_outputs(model, calib), reference, atol=1e-4, rtol=1e-4)


METHODS = [(quantize_rtn, RTNConfig(bits=4, group_size=128), 4.5),
           (quantize_gptq, GPTQConfig(bits=4, group_size=128), 4.5),
           (quantize_awq, AWQConfig(bits=4, group_size=128, alpha_points=5, search_tokens=128), 4.5),
           (quantize_smoothquant, SmoothQuantConfig(), 8.5),
           (quantize_fp8, FP8Config(), 8.5),
           (quantize_fp8, FP8Config(weight_group_size=-1, quantize_activations=False), 8.5),
           (quantize_nf4, NF4Config(), 4.5)]


@pytest.mark.parametrize("quantize, config, max_bits", METHODS, ids=lambda v: getattr(v, "__name__", ""))
def test_each_method_stores_its_bits_on_tiny_random(tiny, calib, quantize, config, max_bits):
    """Every method runs end to end, stores what its bits say, and changes the weights; whether it does
    better than the baseline it is meant to beat is judged on the embedded model (below)."""
    model, tokenizer = tiny
    quantized = quantize(copy.deepcopy(model), config, calib, progress=False)
    assert math.isfinite(perplexity(quantized, tokenizer, seqlen=64, max_windows=2, progress=False).ppl)
    # decoder linears are counted packed: (bits + scales) per weight, embedding and norms as stored
    linear_params = sum(m.weight.numel() for m in quantized.model.layers.modules() if isinstance(m, torch.nn.Linear))
    other = stored_bytes(model) - 4 * linear_params
    assert other + linear_params * 4 / 8 <= true_bytes(quantized) <= other + linear_params * max_bits / 8
    assert not torch.equal(quantized.model.layers[0].mlp.up_proj.weight, model.model.layers[0].mlp.up_proj.weight)


def test_rtn_weights_sit_on_the_grid(tiny):
    model = quantize_rtn(copy.deepcopy(tiny[0]), RTNConfig(bits=3, group_size=64))
    groups = model.model.layers[1].self_attn.o_proj.weight.reshape(-1, 64)
    assert max(len(row.unique()) for row in groups) <= 8


@pytest.mark.parametrize("argv, message", [
    (["--method", "smoothquant", "--bits", "4"], "does not support 4 bits"),
    (["--method", "nf4", "--bits", "3"], "does not support 3 bits"),
    (["--method", "gptq", "--bits", "1"], "does not support 1 bits"),
    (["--method", "rtn", "--group-size", "100"], "does not divide"),
    (["--method", "fp8", "--group-size", "64"], "does not apply"),
    (["--method", "hqq"], "Unknown method"),
    (["--method", "modelopt:NOPE_CFG"], "not a modelopt configuration"),
])
def test_quantize_bad_input_is_a_workshop_error(argv, message):
    args = build_parser().parse_args(["quantize", "--model", "tiny-random", *argv])
    with pytest.raises(WorkshopError, match=message) as info:
        args.run(args)
    assert info.value.fix


def test_quantize_command_evaluates_and_saves(tmp_path, capsys, monkeypatch):

    import common.budgets
    small = common.budgets.get_budget(eval_max_windows=1, eval_seqlen=128, calib_samples=2, calib_seqlen=64)
    monkeypatch.setattr(common.budgets, "get_budget", lambda *a, **k: small)
    out = tmp_path / "q"
    args = build_parser().parse_args(["quantize", "--model", "tiny-random", "--method", "rtn", "--bits", "4",
                                          "--group-size", "64", "--eval", "--out", str(out), "--json"])
    result = args.run(args).result
    assert result["bytes_after"] < result["bytes_before"] / 4 and set(result["ppl_after"]) == {"wiki", "python-docs"}
    assert all(r["ppl"] > 1 and "seqlen=128, windows=1" in r["protocol"] for r in result["ppl_after"].values())
    assert (out / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial directory left
    from common.models import load_model
    from common.quant.qlinear import QuantLinear
    loaded, _ = load_model(str(out), dtype="float32", device="cpu")   # packed: real 4-bit layers
    assert isinstance(loaded.model.layers[0].mlp.down_proj, QuantLinear) and "packed" in result["saved"]


def test_workshop_quantize_bad_input_exits_2(capsys):
    assert main(["quantize", "--model", "tiny-random", "--method", "smoothquant", "--bits", "4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "does not support 4 bits" in err and "Traceback" not in err


@pytest.mark.parametrize("quantize, config, max_bits", METHODS, ids=lambda v: getattr(v, "__name__", ""))
def test_packing_stores_the_counted_bytes_and_computes_the_same(tiny, calib, quantize, config, max_bits, tmp_path):
    from common.models import load_model, save_pretrained_atomic
    from common.quant.packing import pack_quantized
    from common.quant.qlinear import QuantLinear
    model, tokenizer = tiny
    quantized = quantize(copy.deepcopy(model), config, calib, progress=False)
    packed = pack_quantized(copy.deepcopy(quantized), progress=False)
    assert all(isinstance(m, QuantLinear) for layer in decoder_layers(packed) for m in layer.modules()
               if isinstance(m, (torch.nn.Linear, QuantLinear)))
    assert stored_bytes(packed) == true_bytes(quantized)
    assert torch.equal(_outputs(packed, calib), _outputs(quantized, calib))
    # and back from disk with load_model, as `workshop quantize --out` writes it
    save_pretrained_atomic(packed, tokenizer, tmp_path / "packed")
    loaded, _ = load_model(str(tmp_path / "packed"), dtype="float32", device="cpu")
    assert torch.equal(_outputs(loaded, calib), _outputs(packed, calib))


def test_packing_refuses_weights_moved_off_the_grid(tiny):
    from common.quant.packing import pack_quantized
    model = quantize_rtn(copy.deepcopy(tiny[0]), RTNConfig(bits=4, group_size=64))
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.add_(0.3 * model.model.layers[0].mlp.up_proj.weight.std())
    with pytest.raises(WorkshopError, match="no longer on the grid"):
        pack_quantized(model, progress=False)


def test_formats_without_a_packed_layout_stay_fake_quantized(tiny):
    from common.quant.packing import pack_quantized
    model = quantize_rtn(copy.deepcopy(tiny[0]), RTNConfig(bits=3, group_size=64))
    with pytest.warns(UserWarning, match="stay fake-quantized"):
        pack_quantized(model, progress=False)
    with pytest.raises(WorkshopError, match="no quantized linear layers"):
        pack_quantized(copy.deepcopy(tiny[0]), progress=False)


def _lab02_run_calls() -> dict:
    """{name: (function name, config, bits)} of every run("name", function, Config(...), bits) in lab 02."""
    from common.quant import awq, fp8, gptq, nf4, rtn, smoothquant
    from conftest import lab_run_calls
    return lab_run_calls("solutions/02_post_training_quantization.ipynb", (awq, fp8, gptq, nf4, rtn, smoothquant,))


def test_cli_table_is_the_labs_own_list():
    from common.quant.presets import lab02_table
    calls = _lab02_run_calls()
    table = {name: (quantize.__name__, config, bits) for name, quantize, config, bits in lab02_table("full")}
    assert table == calls
    assert [row[0] for row in lab02_table("quick")] == [name for name in calls if name != "GPTQ W2 g64"]


def test_cli_table_runs_every_row(capsys, monkeypatch):

    import common.budgets
    small = common.budgets.get_budget("quick", sweep_eval_windows=1, eval_seqlen=64, calib_samples=2, calib_seqlen=64)
    monkeypatch.setattr(common.budgets, "get_budget", lambda *a, **k: small)
    args = build_parser().parse_args(["quantize", "--model", "tiny-random", "--table", "lab02", "--json"])
    result = args.run(args).result
    names = [row["method"] for row in result["rows"]]
    assert names[0].startswith("baseline") and "GPTQ W3 g64" in names and "modelopt INT8_SMOOTHQUANT_CFG" in names
    assert all(min(row["ppl"].values()) > 1 and row["bytes"] > 0 for row in result["rows"])
    assert list(result["protocol"]) == ["wiki", "python-docs"]  # both texts in every row
    assert all("seqlen=64, windows=1" in protocol for protocol in result["protocol"].values())


def test_group_size_check_on_576_wide_layers():
    """The embedded model's widths (576, 1536): 128 does not divide them, per channel and 64 do."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from common.quant.presets import default_group_size
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=576, intermediate_size=1536, num_hidden_layers=1,
                                         num_attention_heads=9, num_key_value_heads=3, head_dim=64))
    for method, group in (("gptq", 0), ("rtn", 0), ("awq", 64), ("nf4", 64)):
        method_and_config(method, None, group, model=model)   # no error
    assert default_group_size(model) == 64                      # 128 does not divide 576
    assert method_and_config("rtn", None, None, model=model)[1].group_size == 64
    for method in ("gptq", "nf4"):
        with pytest.raises(WorkshopError, match="does not divide"):
            method_and_config(method, None, 128, model=model)
    with pytest.raises(WorkshopError, match="group_size=-4"):
        from common.quant.rtn import RTNConfig
        RTNConfig(group_size=-4)                                # configs check themselves


def test_calibration_table_takes_over_measured_cells_and_runs_the_rest(tiny):
    """Cells a notebook measured already (same model, calibration size and windows) are not run again,
    and a run cell equals what the table computes without them."""
    from common.protocol import DataProtocol
    from common.tables import calibration_table
    model, tokenizer = tiny
    protocol = DataProtocol.for_budget(calib_samples=2, calib_seqlen=32, seqlen=64, max_windows=1)
    rtn = ("RTN W4", lambda m, c: quantize_rtn(m, RTNConfig(bits=4, group_size=None), c))
    gptq = ("GPTQ W4", lambda m, c: quantize_gptq(m, GPTQConfig(bits=4, group_size=None), c, progress=False))
    full = calibration_table(model, tokenizer, protocol, ["wiki"], [gptq], [rtn], progress=False)

    def must_not_run(m, c):
        raise AssertionError("a measured cell was run again")

    fake = {"wiki": 1.5, "python-docs": 2.5}
    reused = calibration_table(model, tokenizer, protocol, ["wiki"], [("GPTQ W4", must_not_run)],
                               [("RTN W4", must_not_run)], progress=False, baseline=fake,
                               measured={("RTN W4", None): fake, ("GPTQ W4", "wiki"): fake})
    assert reused["baseline"] == fake
    assert [(r["method"], r["calib"], r["ppl"]) for r in reused["rows"][:2]] == [("RTN W4", None, fake), ("GPTQ W4", "wiki", fake)]
    with pytest.raises(AssertionError, match="run again"):   # python-docs was not measured: it runs
        calibration_table(model, tokenizer, protocol, ["python-docs"], [("GPTQ W4", must_not_run)], progress=False,
                          measured={("GPTQ W4", "wiki"): fake})
    again = calibration_table(model, tokenizer, protocol, ["wiki"], [gptq], [rtn], progress=False,
                              measured={("RTN W4", None): full["rows"][0]["ppl"]})
    assert again["rows"] == full["rows"] and again["baseline"] == full["baseline"]


def test_modelopt_block_size_variants_change_only_the_weight_block():
    """INT4_AWQ_G64 is modelopt's INT4_AWQ_CFG with blocks of 64 (ours), for a comparison on equal footing."""
    mtq = pytest.importorskip("modelopt.torch.quantization")
    from common.quant.modelopt_ptq import modelopt_config

    def weight_blocks(config):
        return [e["cfg"]["block_sizes"][-1] for e in config["quant_cfg"] if e.get("quantizer_name") == "*weight_quantizer"]
    variant = modelopt_config(mtq, "INT4_AWQ_G64")
    assert weight_blocks(variant) == [64] and weight_blocks(mtq.INT4_AWQ_CFG) == [128]   # the preset is left as it was
    assert variant["algorithm"] == mtq.INT4_AWQ_CFG["algorithm"]
