"""ONNX export with explicit quantization (lab 07): TensorRT's Q/DQ form, checked by onnxruntime."""
import copy
import json

import onnx
import pytest
import torch

from common.cli import main
from common.errors import WorkshopError
from common.sizes import stored_bytes
from common.export.compressed_tensors import (SPARSE_FORMATS, check_round_trip, is_2_4, pack_int4_words,
                                             save_compressed_tensors, sparsity_summary)
from common.export.onnx import export_onnx
from common.export.onnx_check import activation_code_check, node_counts, onnxruntime_logits
from common.models import load_model
from common.prune.magnitude import MagnitudeConfig, prune_magnitude
from common.quant.fp8 import FP8Config, quantize_fp8
from common.quant.nf4 import NF4Config, quantize_nf4
from common.quant.packing import pack_quantized
from common.quant.qlinear import QuantLinear
from common.quant.rtn import RTNConfig, quantize_rtn
from common.quant.smoothquant import SmoothQuantConfig, quantize_smoothquant


@pytest.fixture(scope="module")
def tiny():
    model, _ = load_model("tiny-random", device="cpu")
    return model


def packed(model, quantize):
    calib = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    return pack_quantized(quantize(copy.deepcopy(model), calib), progress=False)


FORMATS = {
    "int4": lambda m, c: quantize_rtn(m, RTNConfig(bits=4, group_size=32, symmetric=True)),
    "int8": lambda m, c: quantize_rtn(m, RTNConfig(bits=8, group_size=None, symmetric=True)),
    "fp8": lambda m, c: quantize_fp8(m, FP8Config(), c, progress=False),
    "int8 static": lambda m, c: quantize_smoothquant(m, SmoothQuantConfig(activation_scales="static",
                                                                          smooth_down_proj=True), c, progress=False),
}
STATIC_ACTIVATIONS = ("fp8", "int8 static")


@pytest.mark.parametrize("fmt", FORMATS)
def test_onnx_computes_what_the_packed_model_computes(tiny, fmt, tmp_path):
    model = packed(tiny, FORMATS[fmt])
    layers = sum(isinstance(m, QuantLinear) for m in model.modules())
    path = export_onnx(model, tmp_path / f"{fmt}.onnx")
    onnx.checker.check_model(str(path))
    counts = node_counts(path)
    # one DequantizeLinear per weight; static activation scales add Q -> DQ on every layer's input
    activations = fmt in STATIC_ACTIVATIONS
    assert counts["DequantizeLinear"] == layers * (2 if activations else 1)
    assert counts.get("QuantizeLinear", 0) == (layers if activations else 0)
    ids = torch.randint(0, tiny.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))  # axes are dynamic
    with torch.no_grad():
        reference = model(ids).logits
    # weights only: the same numbers up to summation order; quantized activations: an input that lands next to
    # a rounding boundary can round the other way in onnxruntime, so the 1e-2 applies
    assert (onnxruntime_logits(path, ids) - reference).abs().max() < (1e-2 if activations else 1e-4)


@pytest.mark.parametrize("fmt", STATIC_ACTIVATIONS)
def test_with_the_engines_activation_codes_pytorch_computes_its_logits(tiny, fmt, tmp_path):
    model = packed(tiny, FORMATS[fmt])
    path = export_onnx(model, tmp_path / "w8a8.onnx")
    ids = torch.randint(0, tiny.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    check = activation_code_check(model, path, ids)
    layers = [m for m in model.modules() if isinstance(m, QuantLinear)]
    assert check["activation_codes"] == sum(ids.numel() * m.in_features for m in layers)
    assert check["max_abs_logit_difference_same_codes"] < 1e-4
    # whatever rounds the other way is a neighbouring code, for an input next to the tie between the two
    assert check["codes_flipped"] <= check["activation_codes"] * 1e-3
    assert check["largest_flip_steps"] <= 1 and check["largest_flip_offset_from_tie"] < 0.05


def test_the_code_check_sees_a_graph_that_rounds_otherwise(tiny, tmp_path):
    """An engine whose QuantizeLinear used another scale puts most codes elsewhere: the check must say so."""
    import numpy as np
    from onnx import numpy_helper
    model = packed(tiny, FORMATS["int8 static"])
    path = export_onnx(model, tmp_path / "w8a8.onnx")
    proto = onnx.load(path)
    for init in proto.graph.initializer:
        if init.name.endswith(".input_scale"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.5), init.name))
    onnx.save(proto, path)
    ids = torch.randint(0, tiny.config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(3))
    check = activation_code_check(model, path, ids)
    assert check["codes_flipped"] > check["activation_codes"] * 0.1 and check["largest_flip_steps"] > 1


def test_the_code_check_needs_quantized_activations(tiny, tmp_path):
    model = packed(tiny, FORMATS["int4"])
    with pytest.raises(WorkshopError, match="no activations"):
        activation_code_check(model, export_onnx(model, tmp_path / "int4.onnx"), torch.zeros(1, 4, dtype=torch.long))


def test_int4_is_stored_as_int4_blocks_and_stays_small(tiny, tmp_path):
    model = packed(tiny, FORMATS["int4"])
    path = export_onnx(model, tmp_path / "int4.onnx")
    graph = onnx.load(path).graph
    codes = [i for i in graph.initializer if i.name.endswith(".codes")]
    assert codes and all(i.data_type == onnx.TensorProto.INT4 for i in codes)
    blocks = {a.i for n in graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "block_size"}
    assert blocks == {32}
    assert path.stat().st_size <= 1.15 * stored_bytes(model)


def test_the_file_declares_the_ir_version_its_opset_needs(tiny, tmp_path):
    # onnx 1.23 writes IR 14 by default, which onnxruntime 1.30 refuses ("max supported IR version: 13");
    # opset 21 with INT4 initializers needs IR 10, and a runtime of that generation reads the file
    model = onnx.load(export_onnx(packed(tiny, FORMATS["int4"]), tmp_path / "int4.onnx"))
    assert model.ir_version == 10 < onnx.IR_VERSION


@pytest.mark.parametrize("quantize, message", [
    (lambda m, c: quantize_rtn(m, RTNConfig(bits=4, group_size=32)), "zero points"),
    (lambda m, c: quantize_nf4(m, NF4Config(group_size=32)), "no ONNX type"),
    (lambda m, c: quantize_smoothquant(m, SmoothQuantConfig(), c, progress=False), "per token"),
])
def test_what_tensorrt_cannot_take_is_refused_before_writing(tiny, quantize, message, tmp_path):
    with pytest.raises(WorkshopError, match=message):
        export_onnx(packed(tiny, quantize), tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())


def test_unpacked_models_and_old_opsets_are_refused(tiny, tmp_path):
    with pytest.raises(WorkshopError, match="not packed"):
        export_onnx(quantize_rtn(copy.deepcopy(tiny), RTNConfig(bits=4, group_size=32, symmetric=True)), tmp_path / "x.onnx")
    with pytest.raises(WorkshopError, match="opset 20"):
        export_onnx(tiny, tmp_path / "x.onnx", opset=20)
    assert not list(tmp_path.iterdir())


def test_cli_exports_and_checks(tmp_path, capsys):
    out = tmp_path / "int4.onnx"
    assert main(["export", "--model", "tiny-random", "--method", "rtn", "--bits", "4", "--group-size", "32",
                 "--symmetric", "--format", "onnx", "--out", str(out), "--seqlen", "32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert out.is_file() and result["dequantize_nodes"] == 14 and result["quantize_nodes"] == 0
    assert result["max_abs_logit_difference"] < 1e-4 and result["file_bytes"] == out.stat().st_size


def test_cli_checks_quantized_activations_with_the_engines_codes(tmp_path, capsys):
    out = tmp_path / "w8a8.onnx"
    assert main(["export", "--model", "tiny-random", "--method", "smoothquant", "--static-activations",
                 "--format", "onnx", "--out", str(out), "--seqlen", "32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["quantize_nodes"] == 14 and result["max_abs_logit_difference_same_codes"] < 1e-4
    assert result["activation_codes"] > 0 and result["largest_flip_steps"] <= 1


@pytest.mark.parametrize("argv, message", [
    (["--method", "rtn", "--bits", "4"], "zero points"),
    (["--method", "nf4"], "NF4 has no ONNX type"),
    (["--method", "smoothquant"], "per token at run time"),
    (["--method", "rtn", "--static-activations"], "applies to smoothquant"),
    (["--static-activations"], "describe a --method"),
    (["--bits", "4"], "describe a --method"),
    (["--opset", "20"], "no blocked DequantizeLinear"),
    (["--format", "hf"], "written from a modelopt-quantized model"),
    (["--method", "modelopt:FP8_DEFAULT_CFG", "--format", "compressed-tensors"], "not from modelopt's quantizers"),
])
def test_cli_bad_input(argv, message, tmp_path, capsys):
    assert main(["export", "--model", "tiny-random", "--format", "onnx", "--out", str(tmp_path / "x.onnx"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "What to do" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


NF4_32 = lambda m, c: quantize_nf4(m, NF4Config(group_size=32))  # noqa: E731
PER_TOKEN = lambda m, c: quantize_smoothquant(m, SmoothQuantConfig(), c, progress=False)  # noqa: E731


@pytest.mark.parametrize("fmt, method, quantize", [
    ("onnx", ["--method", "nf4", "--group-size", "32"], NF4_32),
    ("onnx", ["--method", "rtn", "--bits", "4", "--group-size", "32"],
     lambda m, c: quantize_rtn(m, RTNConfig(bits=4, group_size=32))),
    ("onnx", ["--method", "smoothquant"], PER_TOKEN),
    ("compressed-tensors", ["--method", "nf4", "--group-size", "32"], NF4_32),
    ("compressed-tensors", ["--method", "smoothquant"], PER_TOKEN),
])
def test_a_refused_export_says_what_the_exporter_says_once_and_writes_nothing(fmt, method, quantize, tiny, tmp_path,
                                                                                capsys, monkeypatch):
    """One list of what a format cannot hold: the command refuses the layers a --method would make with the
    exporter's own words for such a packed layer, before any model loads, with exit code 2."""
    with pytest.raises(WorkshopError) as exporter:
        if fmt == "onnx":
            export_onnx(packed(tiny, quantize), tmp_path / "x.onnx")
        else:
            save_compressed_tensors(packed(tiny, quantize), load_model("tiny-random")[1], tmp_path / "ct")
    name, problem = exporter.value.problem.split(": ", 1)   # the exporter names the first layer it refuses
    assert name.startswith("model.layers.0.")
    import common.models
    monkeypatch.setattr(common.models, "load_model", lambda *a, **k: pytest.fail("loaded a model it then refused"))
    out = tmp_path / ("x.onnx" if fmt == "onnx" else "ct")
    assert main(["export", "--model", "tiny-random", *method, "--format", fmt, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("error: ") == 1 and err.count("What to do") == 1
    assert problem in err and exporter.value.fix in err
    assert not list(tmp_path.iterdir())


def test_cli_refuses_an_unwritable_out(tmp_path, capsys):
    assert main(["export", "--model", "tiny-random", "--format", "onnx", "--out", str(tmp_path / "no" / "x.onnx")]) == 2
    assert "the folder" in capsys.readouterr().err and not (tmp_path / "no").exists()


CT_FORMATS = FORMATS | {"int4 asymmetric": lambda m, c: quantize_rtn(m, RTNConfig(bits=4, group_size=32))}


@pytest.mark.parametrize("fmt", CT_FORMATS)
def test_compressed_tensors_reads_back_identical_weights_and_logits(tiny, fmt, tmp_path):
    _, tokenizer = load_model("tiny-random", device="cpu")
    model = packed(tiny, CT_FORMATS[fmt])
    path = save_compressed_tensors(model, tokenizer, tmp_path / "ct")
    config = json.loads((path / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and "workshop_packed" not in json.loads(
        (path / "config.json").read_text())
    ids = torch.randint(0, tiny.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(2))
    assert check_round_trip(model, path, ids) == {"max_abs_weight_difference": 0.0, "max_abs_logit_difference": 0.0}


def test_int4_words_are_packed_as_the_library_packs_them():
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32
    codes = torch.randint(-8, 8, (16, 64), generator=torch.Generator().manual_seed(3))
    assert torch.equal(pack_int4_words(codes), pack_to_int32(codes.to(torch.int8), 4))
    assert torch.equal(pack_int4_words(codes, dim=0), pack_to_int32(codes.to(torch.int8), 4, packed_dim=0))


def test_compressed_tensors_refusals(tiny, tmp_path):
    _, tokenizer = load_model("tiny-random", device="cpu")
    with pytest.raises(WorkshopError, match="no packed layers"):
        save_compressed_tensors(tiny, tokenizer, tmp_path / "a")
    with pytest.raises(WorkshopError, match="NF4 has no compressed-tensors type"):
        save_compressed_tensors(packed(tiny, lambda m, c: quantize_nf4(m, NF4Config(group_size=32))), tokenizer, tmp_path / "b")
    assert not list(tmp_path.iterdir())
    (tmp_path / "c").mkdir()
    with pytest.raises(WorkshopError, match="exists"):
        save_compressed_tensors(packed(tiny, FORMATS["int8"]), tokenizer, tmp_path / "c")


def test_cli_writes_compressed_tensors(tmp_path, capsys):
    out = tmp_path / "gptq-ct"
    assert main(["export", "--model", "tiny-random", "--method", "gptq", "--bits", "4", "--group-size", "32",
                 "--format", "compressed-tensors", "--out", str(out), "--seqlen", "32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (out / "model.safetensors").is_file()
    assert out.stat().st_mode & 0o777 == 0o755 and {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}
    assert result["max_abs_weight_difference"] == 0.0 and result["max_abs_logit_difference"] == 0.0


# 2:4 sparsity: compressed-tensors 0.20.1 has no 2:4 compressor (removed in 0.15), so sparse models are
# written dense, zeros kept, and asking for the library's 2:4 storage is refused
def pruned(model, pattern=None, **kwargs):
    return prune_magnitude(copy.deepcopy(model), MagnitudeConfig(pattern=pattern, **kwargs), progress=False)


def test_2_4_is_detected_per_group_of_four_inputs(tiny):
    assert is_2_4(torch.tensor([[0.0, 1, 0, 2, 3, 0, 0, 0]]))
    assert not is_2_4(torch.tensor([[0.0, 1, 0, 2, 3, 0, 1, 1]]))      # the second group keeps three
    assert not is_2_4(torch.tensor([[1.0, 0, 0, 2, 3, 0]]))              # no whole groups of four
    layers = tiny.config.num_hidden_layers
    summaries = {name: sparsity_summary(m) for name, m in [
        ("dense", tiny), ("2:4", pruned(tiny, "2:4")), ("unstructured", pruned(tiny, sparsity=0.5)),
        ("partly", pruned(tiny, "2:4", layer_sparsities=(0.5,) + (0.0,) * (layers - 1)))]}
    assert [s["sparsity"] for s in summaries.values()] == ["none", "2:4", "none", "partly 2:4"]
    linears = 7 * layers   # q, k, v, o, gate, up, down per decoder layer
    assert summaries["2:4"]["layers_2_4"] == f"{linears} of {linears}"
    assert summaries["partly"]["layers_2_4"] == f"7 of {linears}"
    assert abs(summaries["unstructured"]["zero_fraction"] - 0.5) < 0.01 and summaries["dense"]["zero_fraction"] == 0.0
    assert all(s["written"] == "dense" and "written as dense" in s["note"] for s in summaries.values())


@pytest.mark.parametrize("pattern, fmt", [("2:4", "int8"), ("2:4", "fp8"), ("2:4", "int4"), (None, "int8")])
def test_sparse_quantized_models_are_written_dense_and_read_back_identical(tiny, pattern, fmt, tmp_path):
    _, tokenizer = load_model("tiny-random", device="cpu")
    model = packed(pruned(tiny, pattern), FORMATS[fmt])
    assert sparsity_summary(model)["sparsity"] == ("2:4" if pattern else "none")   # quantizing keeps the zeros
    path = save_compressed_tensors(model, tokenizer, tmp_path / "ct")
    config = json.loads((path / "config.json").read_text())["quantization_config"]
    assert config["quant_method"] == "compressed-tensors" and "sparsity_config" not in config
    ids = torch.randint(0, tiny.config.vocab_size, (1, 24), generator=torch.Generator().manual_seed(2))
    # identical weights: the zeros come back where they were, so the loaded model is as 2:4 as ours
    assert check_round_trip(model, path, ids) == {"max_abs_weight_difference": 0.0, "max_abs_logit_difference": 0.0}


def test_2_4_storage_is_refused_because_the_library_cannot_read_it(tiny, tmp_path):
    from compressed_tensors.compressors import BaseCompressor
    for name in SPARSE_FORMATS:   # if the library gets a 2:4 compressor back, revisit the writer
        with pytest.raises(KeyError):
            BaseCompressor.get_value_from_registry(name)
    _, tokenizer = load_model("tiny-random", device="cpu")
    sparse = pruned(tiny, "2:4")
    int8 = packed(sparse, FORMATS["int8"])
    for model, name in [(int8, "sparse-24-bitmask"), (int8, "marlin-24"), (sparse, "sparse-24-bitmask")]:
        with pytest.raises(WorkshopError, match="no compressor"):
            save_compressed_tensors(model, tokenizer, tmp_path / "x", sparse_format=name)
    with pytest.raises(WorkshopError, match="Unknown sparse format"):
        save_compressed_tensors(int8, tokenizer, tmp_path / "x", sparse_format="2:4")
    with pytest.raises(WorkshopError, match="no packed layers.*2:4"):   # a float 2:4 model has no form of its own
        save_compressed_tensors(sparse, tokenizer, tmp_path / "x")
    assert not list(tmp_path.iterdir())


def test_tensorrt_is_optional_and_says_why_it_skips(tmp_path):
    import importlib.util

    from common.export.tensorrt import build_engine, skip_reason, tensorrt_version
    if importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available():
        pytest.skip("TensorRT and a GPU are here: lab 07 builds engines")
    assert tensorrt_version() is None
    installed = importlib.util.find_spec("tensorrt") is not None
    assert ("no CUDA GPU" if installed else "not installed") in skip_reason()
    with pytest.raises(WorkshopError, match="No TensorRT engine"):
        build_engine(tmp_path / "x.onnx", tmp_path / "x.engine")
    with pytest.raises(WorkshopError, match="no valid shape profile"):   # bad sizes are refused first, anywhere
        build_engine(tmp_path / "x.onnx", tmp_path / "x.engine", max_tokens=64, opt_tokens=128)
    assert not list(tmp_path.iterdir())


def test_the_engine_plan_is_what_tensorrt_is_asked_for():
    from common.export.tensorrt import engine_plan
    assert engine_plan() == {"flags": ("FP16",), "input_ids": ((1, 1), (1, 128), (8, 2048))}
    assert engine_plan(2, 512, 64, sparse_weights=True) == {"flags": ("FP16", "SPARSE_WEIGHTS"),
                                                             "input_ids": ((1, 1), (1, 64), (2, 512))}
    for sizes in [(0, 2048, 128), (8, 2048, 0), (8, 64, 128)]:
        with pytest.raises(WorkshopError, match="no valid shape profile"):
            engine_plan(*sizes)


def test_the_engine_timing_helper_times_any_engine_beside_the_model_on_its_device(tiny):
    from common.export.tensorrt import time_against_pytorch
    model = tiny
    calls = []

    def engine(ids):   # stands in for a TensorRT Engine: input_ids in, logits out
        calls.append(tuple(ids.shape))
        return model(ids, use_cache=False).logits

    rows = time_against_pytorch(engine, model, shapes=((1, 1), (2, 8)), repeats=3)
    assert [(r["batch"], r["tokens"]) for r in rows] == [(1, 1), (2, 8)]
    assert all(r["tensorrt_ms"] > 0 and r["pytorch_ms"] > 0 for r in rows)
    assert calls.count((2, 8)) == 3 + 2   # the timed runs and two warm-up runs
