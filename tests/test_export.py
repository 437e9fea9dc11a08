"""ONNX export with explicit quantization (lab 07): TensorRT's Q/DQ form, checked by onnxruntime."""
import copy
import json

import onnx
import pytest
import torch

from common.cli import main
from common.errors import WorkshopError
from common.eval import stored_bytes
from common.export.compressed_tensors import check_round_trip, pack_int4_words, save_compressed_tensors
from common.export.onnx import export_onnx, node_counts, onnxruntime_logits
from common.models import load_model
from common.quant.fp8 import FP8Config, quantize_fp8
from common.quant.nf4 import NF4Config, quantize_nf4
from common.quant.qlinear import QuantLinear, pack_quantized
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
}


@pytest.mark.parametrize("fmt", FORMATS)
def test_onnx_computes_what_the_packed_model_computes(tiny, fmt, tmp_path):
    model = packed(tiny, FORMATS[fmt])
    layers = sum(isinstance(m, QuantLinear) for m in model.modules())
    path = export_onnx(model, tmp_path / f"{fmt}.onnx")
    onnx.checker.check_model(str(path))
    counts = node_counts(path)
    # one DequantizeLinear per weight; FP8 adds Q -> DQ on every layer's input; no Transpose left on a weight
    assert counts["DequantizeLinear"] == layers * (2 if fmt == "fp8" else 1)
    assert counts.get("QuantizeLinear", 0) == (layers if fmt == "fp8" else 0)
    ids = torch.randint(0, tiny.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))  # axes are dynamic
    with torch.no_grad():
        reference = model(ids).logits
    # weights only: the same numbers up to summation order; FP8 activations: an input that lands next to a
    # rounding boundary can round the other way in onnxruntime, so the 1e-2 applies
    assert (onnxruntime_logits(path, ids) - reference).abs().max() < (1e-2 if fmt == "fp8" else 1e-4)


def test_int4_is_stored_as_int4_blocks_and_stays_small(tiny, tmp_path):
    model = packed(tiny, FORMATS["int4"])
    path = export_onnx(model, tmp_path / "int4.onnx")
    graph = onnx.load(path).graph
    codes = [i for i in graph.initializer if i.name.endswith(".codes")]
    assert codes and all(i.data_type == onnx.TensorProto.INT4 for i in codes)
    blocks = {a.i for n in graph.node if n.op_type == "DequantizeLinear" for a in n.attribute if a.name == "block_size"}
    assert blocks == {32}
    assert path.stat().st_size <= 1.15 * stored_bytes(model)


@pytest.mark.parametrize("quantize, message", [
    (lambda m, c: quantize_rtn(m, RTNConfig(bits=4, group_size=32)), "zero points"),
    (lambda m, c: quantize_nf4(m, NF4Config(block_size=32)), "no ONNX type"),
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


@pytest.mark.parametrize("argv, message", [
    (["--method", "rtn", "--bits", "4"], "zero points"),
    (["--method", "nf4"], "no onnx form"),
    (["--bits", "4"], "describe a --method"),
    (["--opset", "20"], "no blocked DequantizeLinear"),
    (["--method", "modelopt:FP8_DEFAULT_CFG"], "through modelopt itself"),
])
def test_cli_bad_input(argv, message, tmp_path, capsys):
    assert main(["export", "--model", "tiny-random", "--format", "onnx", "--out", str(tmp_path / "x.onnx"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "What to do" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


def test_cli_refuses_an_unwritable_out(tmp_path, capsys):
    assert main(["export", "--model", "tiny-random", "--format", "onnx", "--out", str(tmp_path / "no" / "x.onnx")]) == 2
    assert "cannot be written" in capsys.readouterr().err


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
    with pytest.raises(WorkshopError, match="nf4"):
        save_compressed_tensors(packed(tiny, lambda m, c: quantize_nf4(m, NF4Config(block_size=32))), tokenizer, tmp_path / "b")
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
