"""Export of modelopt-quantized models (lab 07): ONNX Q/DQ checked by onnxruntime, and modelopt's unified
HF checkpoint read back and checked against modelopt's own fake quantizer."""
import copy
import json

import onnx
import pytest
from onnx import numpy_helper
import torch

from common.errors import WorkshopError
from common.export.modelopt_export import (check_modelopt_hf, export_modelopt_hf, export_modelopt_onnx,
                                           quantized_linears, read_modelopt_hf)
from common.export.onnx_check import activation_code_check, node_counts, onnxruntime_logits
from common.models import load_model
from common.quant.modelopt_ptq import ModeloptConfig, quantize_modelopt

W8A8 = ("FP8_DEFAULT_CFG", "INT8_SMOOTHQUANT_CFG")
CODES = {"FP8_DEFAULT_CFG": onnx.TensorProto.FLOAT8E4M3FN, "INT8_SMOOTHQUANT_CFG": onnx.TensorProto.INT8,
         "INT4_BLOCKWISE_G64": onnx.TensorProto.INT4}


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random", device="cpu")


@pytest.fixture(scope="module")
def quantized(tiny):
    """modelopt's quantization of tiny-random by each configuration, made once."""
    model, _ = tiny
    calib = torch.randint(0, model.config.vocab_size, (2, 32), generator=torch.Generator().manual_seed(0))
    cache = {}

    def get(config):
        if config not in cache:   # AWQ's search runs the layers once per candidate scale: one sequence is enough here
            cache[config] = quantize_modelopt(copy.deepcopy(model), ModeloptConfig(config), calib[:1] if "AWQ" in config else calib,
                                              progress=False)
        return cache[config]
    return get


def ids(model, shape=(2, 24)):   # not the (2, 16) traced: both axes are dynamic
    return torch.randint(0, model.config.vocab_size, shape, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("config", CODES)
def test_onnx_computes_what_the_modelopt_model_computes(quantized, config, tmp_path):
    model = quantized(config)
    layers = len(quantized_linears(model))
    path = export_modelopt_onnx(model, tmp_path / "model.onnx")
    graph = onnx.load(path).graph
    onnx.checker.check_model(str(path))
    assert not list(tmp_path.glob("*.partial"))
    counts = node_counts(path)
    # one DequantizeLinear per weight, reading its codes and feeding its MatMul; W8A8 adds Q -> DQ on each input
    assert counts["DequantizeLinear"] == layers * (2 if config in W8A8 else 1)
    assert counts.get("QuantizeLinear", 0) == (layers if config in W8A8 else 0)
    assert all(node.domain == "" for node in graph.node)   # no TensorRT custom op left
    codes = {init.name: init.data_type for init in graph.initializer if init.name.endswith(".weight.codes")}
    assert len(codes) == layers and set(codes.values()) == {CODES[config]}
    readers = {name: node.op_type for node in graph.node for name in node.input}
    assert all(readers[f"{name[:-len('.codes')]}.dq"] == "MatMul" for name in codes)
    table = model.config.vocab_size * model.config.hidden_size   # the tied embedding, stored once
    assert sum(numpy_helper.to_array(init).size == table for init in graph.initializer) == 1
    with torch.no_grad():
        reference = model(ids(model)).logits
    # weights only: the same numbers up to summation order. W8A8: onnxruntime quantizes x / scale where
    # modelopt computes x * (1 / scale), so an input within an ulp of a rounding boundary (~1 in 10^6)
    # can land on the other code; none does for this input
    assert (onnxruntime_logits(path, ids(model)) - reference).abs().max() < (1e-2 if config in W8A8 else 1e-4)


@pytest.mark.parametrize("config", W8A8)
def test_with_the_engines_activation_codes_pytorch_computes_modelopts_logits(quantized, config, tmp_path):
    model = quantized(config)
    path = export_modelopt_onnx(model, tmp_path / "model.onnx")
    check = activation_code_check(model, path, ids(model))
    assert check["activation_codes"] == sum(ids(model).numel() * linear.in_features
                                            for linear, _, _ in quantized_linears(model).values())
    assert check["max_abs_logit_difference_same_codes"] < 1e-4
    assert check["largest_flip_steps"] <= 1 and check["largest_flip_offset_from_tie"] < 0.05


def test_onnx_refuses_what_it_cannot_write(tiny, quantized, tmp_path):
    model, _ = tiny
    with pytest.raises(WorkshopError, match="no enabled modelopt quantizers") as info:
        export_modelopt_onnx(model, tmp_path / "plain.onnx")
    assert "quantize_modelopt" in info.value.fix
    with pytest.raises(WorkshopError, match="opset 19"):
        export_modelopt_onnx(quantized("FP8_DEFAULT_CFG"), tmp_path / "old.onnx", opset=17)
    with pytest.raises(WorkshopError, match="folder"):
        export_modelopt_onnx(quantized("FP8_DEFAULT_CFG"), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_int4_blocks_must_divide_the_inputs(tmp_path):
    """SmolLM2's 576 inputs and modelopt's INT4 blocks of 128: refused by both exporters, with the fix."""
    import modelopt.torch.quantization as mtq
    from transformers import LlamaConfig, LlamaForCausalLM

    from common.models import byte_level_tokenizer
    config = LlamaConfig(vocab_size=384, hidden_size=576, intermediate_size=1536, num_hidden_layers=1,
                         num_attention_heads=9, num_key_value_heads=3, head_dim=64)
    calib = torch.randint(0, config.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():   # INT4_AWQ_CFG's blocks of 128, without its (slow) search
        model = mtq.quantize(LlamaForCausalLM(config), mtq.INT4_BLOCKWISE_WEIGHT_ONLY_CFG, lambda m: m(calib))
    with pytest.raises(WorkshopError, match="not a multiple of its INT4 block") as info:
        export_modelopt_onnx(model, tmp_path / "m.onnx")
    assert "INT4_BLOCKWISE_G64" in info.value.fix
    with pytest.raises(WorkshopError, match="not a multiple of its INT4 block"):
        export_modelopt_hf(model, byte_level_tokenizer(), tmp_path / "hf")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("config, dtype", [("FP8_DEFAULT_CFG", "float8_e4m3fn"), ("INT4_AWQ_CFG", "uint8"),
                                           ("INT8_SMOOTHQUANT_CFG", "int8")])
def test_hf_checkpoint_stores_modelopt_codes(tiny, quantized, config, dtype, tmp_path):
    _, tokenizer = tiny
    model = quantized(config)
    with torch.no_grad():
        before = model(ids(model)).logits
    out = export_modelopt_hf(model, tokenizer, tmp_path / "hf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]   # written aside, renamed
    algo = json.loads((out / "hf_quant_config.json").read_text())["quantization"]["quant_algo"]
    assert json.loads((out / "config.json").read_text())["quantization_config"]["quant_algo"] == algo
    stored = read_modelopt_hf(out)
    layers = stored["layers"]
    assert len(layers) == len(quantized_linears(model)) and {layer["dtype"] for layer in layers.values()} == {dtype}
    if config in W8A8:   # static activation scales travel with the weights
        assert all(layer["input_scale"] is not None and layer["input_scale"].numel() == 1 for layer in layers.values())
    result = check_modelopt_hf(out, model, ids(model))
    # every stored weight, dequantized, is modelopt's fake-quantized weight (after its export-time re-smoothing),
    # except exact ties, which the exporter's division and the quantizer's multiplication may round apart
    # (seen on an AMD EPYC CPU: 2 INT8 SmoothQuant weights, each halfway between two codes)
    assert result["weights_on_another_code"] == result["ties_on_another_code"]
    assert result["weights_on_another_code"] <= 1e-4 * result["weights"]
    if result["weights_on_another_code"] == 0:
        assert result["max_abs_weight_difference"] < 1e-6
    if config == "FP8_DEFAULT_CFG":
        assert result["max_abs_logit_difference"] == 0   # FP8 re-smooths nothing: the checkpoint is the model
    with torch.no_grad():   # the exporter packed a copy: the model still computes what it did
        assert torch.equal(model(ids(model)).logits, before)


def test_hf_refuses_bad_input(tiny, quantized, tmp_path):
    model, tokenizer = tiny
    with pytest.raises(WorkshopError, match="no enabled modelopt quantizers"):
        export_modelopt_hf(model, tokenizer, tmp_path / "plain")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file").write_text("x")
    with pytest.raises(WorkshopError, match="exists"):
        export_modelopt_hf(quantized("FP8_DEFAULT_CFG"), tokenizer, tmp_path / "taken")
    with pytest.raises(WorkshopError, match="not a modelopt checkpoint"):
        read_modelopt_hf(tmp_path / "taken")


@pytest.mark.parametrize("fmt", ["onnx", "hf"])
def test_cli_exports_modelopt_models(fmt, tmp_path, capsys):
    from common.cli import main
    out = tmp_path / ("fp8.onnx" if fmt == "onnx" else "fp8-hf")
    assert main(["export", "--model", "tiny-random", "--method", "modelopt:FP8_DEFAULT_CFG", "--format", fmt,
                 "--out", str(out), "--seqlen", "32", "--calib-samples", "2", "--calib-seqlen", "32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert out.exists() and result["file_bytes"] > 0
    if fmt == "onnx":
        assert result["quantize_nodes"] == 14 and result["dequantize_nodes"] == 28 and result["top1_agreement"] > 0.9
    else:
        assert result["quant_algo"] == "FP8" and result["weights_on_another_code"] == 0
