"""ONNX with explicit quantization (QuantizeLinear / DequantizeLinear), in the form TensorRT's parser takes.

A packed model (`common.quant.qlinear.QuantLinear` layers) is exported in three moves:
  1. every QuantLinear is swapped for a float nn.Linear holding its dequantized weight, and the model's
     logits for a fixed-length window are exported with torch.onnx (dynamo, opset 21, unoptimized, so
     each weight stays a named initializer read through a Transpose into its MatMul);
  2. each of those weights is replaced by its codes, stored [in, out] as the MatMul reads them, and a
     DequantizeLinear node that restores the float weight; the Transpose goes. The codes and scales are
     the packed layer's own, so the graph computes what the PyTorch model computes:
       INT4 weight-only: INT4 codes, zero point 0, `block_size` along the input (opset 21);
       INT8 weights: per output channel; FP8 E4M3 weights: per tensor or per channel;
  3. layers with static activation scales (SmoothQuant's INT8 W8A8 with activation_scales="static",
     FP8 W8A8) also get QuantizeLinear -> DequantizeLinear on their input (per tensor, zero point 0,
     as TensorRT's explicit quantization wants).
TensorRT fuses DequantizeLinear -> MatMul into a low-precision GEMM; onnxruntime runs the same graph
on a CPU (it dequantizes), which is how `common.export.onnx_check` checks the numerics.

What TensorRT cannot take is refused before anything is written: INT4 with zero points (asymmetric),
NF4 (no ONNX type), INT8 activations quantized per token at run time, and opsets below 21.
"""
import copy
from pathlib import Path

import ml_dtypes
import numpy as np
import torch
from torch import nn

from ..errors import WorkshopError
from ..paths import written_aside

OPSET = 21  # DequantizeLinear's block_size and the INT4 type arrive in opset 21
# Static activation scales become QuantizeLinear -> DequantizeLinear to this element type.
STATIC_ACTIVATION_TYPES = {"int8_static": np.int8, "fp8_static": ml_dtypes.float8_e4m3fn}


class Logits(nn.Module):
    """The causal LM's logits for `input_ids` [batch, tokens], without a KV cache. An all-ones attention
    mask is passed because without one transformers looks for packed sequences with torch.diff, which
    the TorchScript exporter (modelopt's path) cannot write; with it the graph builds the causal mask
    from the shapes."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids), use_cache=False).logits


def check_opset(opset: int) -> None:
    if opset < OPSET:
        raise WorkshopError(f"opset {opset} has no blocked DequantizeLinear or INT4 type.",
                            f"Export with opset {OPSET} or later (--opset {OPSET}; TensorRT 10 parses it).")


def tensorrt_refusal(fmt: str, symmetric: bool = True, activations: str | None = None) -> tuple | None:
    """What TensorRT's explicit quantization cannot take, the one list of it: (what is wrong, what to do)
    for a layer stored as QuantLinear stores it (`fmt` "int4", "int8", "fp8" or "nf4"; zero points unless
    `symmetric`; `activations` None, "int8_static", "fp8_static" or "int8_per_token"), None if it can.
    check_exportable asks it of every packed layer; `workshop export` asks it of the layers its --method
    will make, before any model loads (quant.presets.packed_form)."""
    if fmt == "nf4":
        return ("NF4 has no ONNX type and no TensorRT kernel",
                "Quantize with INT4 (symmetric) for TensorRT: --method rtn|gptq|awq --bits 4 --symmetric "
                "(RTNConfig(bits=4, symmetric=True)); NF4 is for bitsandbytes-style runtimes.")
    if fmt == "int4" and not symmetric:
        return ("INT4 with zero points (an asymmetric grid); TensorRT takes zero point 0 only",
                "Quantize INT4 with a symmetric grid: --method rtn|gptq|awq --bits 4 --symmetric "
                "(RTNConfig(bits=4, symmetric=True)).")
    if activations == "int8_per_token":
        return ("INT8 activations quantized per token at run time; TensorRT's explicit quantization takes static "
                "per-tensor activation scales",
                "Quantize with static activation scales: --method smoothquant --static-activations "
                "(SmoothQuantConfig(activation_scales='static')), or export INT8/INT4 weight-only or FP8.")
    return None


def check_exportable(model, opset: int = OPSET) -> dict:
    """{module name: QuantLinear} of a packed model, after checking that TensorRT takes every layer."""
    from ..quant.qlinear import QuantLinear
    check_opset(opset)
    if any(hasattr(m, "weight_format") for m in model.modules()):
        raise WorkshopError("The model is fake-quantized, not packed: its codes are not stored yet.",
                            "Pack it first (common.quant.packing.pack_quantized), or quantize with --out.")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    for name, layer in layers.items():
        refusal = tensorrt_refusal(layer.fmt, layer.fmt != "int4" or layer.int4_symmetric(), layer.activations)
        if refusal:
            raise WorkshopError(f"{name}: {refusal[0]}.", refusal[1])
    return layers


def _float_copy(model, layers: dict):
    """A float32 copy of `model` with every QuantLinear replaced by an nn.Linear of its dequantized weight."""
    plain = copy.deepcopy(model).float()
    for name, layer in layers.items():
        linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
        with torch.no_grad():
            linear.weight.copy_(layer.dequantized_weight(torch.float32))
            if layer.bias is not None:
                linear.bias.copy_(layer.bias.float())
        plain.set_submodule(name, linear)
    return plain.eval()


def _weight_codes(layer):
    """(codes [in, out] as a numpy array of the ONNX element type, float32 scale, DQ attributes)."""
    if layer.fmt == "int4":
        codes = layer.int4_signed_codes().T.numpy().astype(ml_dtypes.int4)
        scale = layer.scales.float().T.contiguous().numpy()                    # [in / group, out]
        return codes, scale, {"axis": 0, "block_size": layer.group_size}
    if layer.fmt == "int8":
        return layer.qweight.T.numpy(), layer.scales.float().flatten().numpy(), {"axis": 1}
    codes = layer.qweight.T.contiguous().view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)
    scale = layer.scales.float().flatten().numpy()
    return codes, (scale.reshape(()) if scale.size == 1 else scale), ({} if scale.size == 1 else {"axis": 1})


def _quantize_graph(graph, layers: dict, prefix: str) -> None:
    """Replace each layer's float weight (read through a Transpose) by codes + DequantizeLinear; add
    activation Q/DQ where the layer has a static input scale."""
    from onnx import helper, numpy_helper
    initializers = {init.name: init for init in graph.initializer}
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    new_nodes = {}   # Transpose node name -> the nodes that take its place
    for name, layer in layers.items():
        weight = f"{prefix}{name}.weight"
        readers = consumers.get(weight, [])
        if weight not in initializers or len(readers) != 1 or readers[0].op_type != "Transpose":
            raise WorkshopError(f"The exported graph does not read {weight} through one Transpose.",
                                "Report this with your torch and onnxscript versions; the exporter's layout changed.")
        transpose = readers[0]
        codes, scale, attributes = _weight_codes(layer)
        graph.initializer.remove(initializers[weight])
        graph.initializer.extend([numpy_helper.from_array(codes, f"{weight}.codes"),
                                  numpy_helper.from_array(np.asarray(scale, dtype=np.float32), f"{weight}.scale")])
        dq = helper.make_node("DequantizeLinear", [f"{weight}.codes", f"{weight}.scale"], [transpose.output[0]],
                              name=f"{name}.weight_dq", **attributes)
        replacement = [dq]
        if layer.activations in STATIC_ACTIVATION_TYPES:
            (matmul,) = consumers[transpose.output[0]]
            x = matmul.input[0]
            graph.initializer.extend([
                numpy_helper.from_array(layer.input_scale.float().reshape(()).numpy(), f"{name}.input_scale"),
                numpy_helper.from_array(np.zeros((), dtype=STATIC_ACTIVATION_TYPES[layer.activations]),
                                        f"{name}.input_zero")])   # the zero point's type is the codes' type
            replacement += [
                helper.make_node("QuantizeLinear", [x, f"{name}.input_scale", f"{name}.input_zero"],
                                 [f"{name}.input_q"], name=f"{name}.input_q"),
                helper.make_node("DequantizeLinear", [f"{name}.input_q", f"{name}.input_scale", f"{name}.input_zero"],
                                 [f"{name}.input_dq"], name=f"{name}.input_dq")]
            matmul.input[0] = f"{name}.input_dq"
        new_nodes[transpose.name] = replacement
    nodes = [n for node in graph.node for n in new_nodes.get(node.name, [node])]
    del graph.node[:]
    graph.node.extend(nodes)


def export_onnx(model, path, opset: int = OPSET) -> Path:
    """Write `model` (packed or plain) as ONNX with explicit quantization to `path`; returns the path.
    The graph takes input_ids [batch, tokens] (int64, both dimensions dynamic) and returns the logits
    [batch, tokens, vocab]."""
    import onnx
    if next(model.parameters()).device.type != "cpu":   # the graph is traced, and its codes read, on the CPU
        model = copy.deepcopy(model).cpu()
    layers = check_exportable(model, opset)
    path = Path(path)
    if path.exists() and path.is_dir():
        raise WorkshopError(f"{path} is a folder.", "Give a file path ending in .onnx.")
    if not path.parent.is_dir():
        raise WorkshopError(f"The folder of {path} does not exist.", "Create it first, or give another path.")
    plain = _float_copy(model, layers)
    ids = torch.zeros(2, 16, dtype=torch.long)
    tokens = torch.export.Dim("tokens", min=2, max=plain.config.max_position_embeddings)
    import contextlib
    import io
    import logging
    import warnings
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)   # "torchvision is not installed" notices: not ours to act on
    # the exporter narrates each stage on stdout, and torch.export warns about its own deprecations
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        program = torch.onnx.export(Logits(plain).eval(), (ids,), dynamo=True, optimize=False, opset_version=opset,
                                    input_names=["input_ids"], output_names=["logits"],
                                    dynamic_shapes={"input_ids": {0: torch.export.Dim("batch"), 1: tokens}})
    exporter_log.setLevel(level)
    exported = program.model_proto
    _quantize_graph(exported.graph, layers, prefix="model.")
    for node in exported.graph.node:   # the exporter's per-node stack traces: most of a small model's file
        del node.metadata_props[:]
        node.doc_string = ""
    # the lowest IR version the graph's opsets need, not the newest this onnx knows: a runtime reads IR versions
    # up to its own (onnx 1.23 writes 14 by default; onnxruntime 1.30 stops at 13, TensorRT 10 earlier still)
    exported.ir_version = onnx.helper.find_min_ir_version_for(list(exported.opset_import), ignore_unknown=True)
    onnx.checker.check_model(exported)
    with written_aside(path) as partial:   # an interrupted export leaves no half-written file
        onnx.save(exported, partial)
    return path
