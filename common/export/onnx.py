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
on a CPU (it dequantizes), which is how the numerics are checked here.

What TensorRT cannot take is refused before anything is written: INT4 with zero points (asymmetric),
NF4 (no ONNX type), INT8 activations quantized per token at run time, and opsets below 21.
"""
import copy
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import torch
from torch import nn

from ..errors import WorkshopError
from ..quant.formats import static_codes

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


def check_exportable(model, opset: int = OPSET) -> dict:
    """{module name: QuantLinear} of a packed model, after checking that TensorRT takes every layer."""
    from ..quant.qlinear import QuantLinear
    if opset < OPSET:
        raise WorkshopError(f"opset {opset} has no blocked DequantizeLinear or INT4 type.",
                            f"Export with opset {OPSET} or later (TensorRT 10 parses it).")
    if any(hasattr(m, "weight_format") for m in model.modules()):
        raise WorkshopError("The model is fake-quantized, not packed: its codes are not stored yet.",
                            "Pack it first (common.quant.qlinear.pack_quantized), or quantize with --out.")
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    for name, layer in layers.items():
        if layer.fmt == "nf4":
            raise WorkshopError(f"{name} is NF4, which has no ONNX type and no TensorRT kernel.",
                                "Quantize with INT4 (symmetric) for TensorRT; NF4 is for bitsandbytes-style runtimes.")
        if layer.fmt == "int4" and not layer.int4_symmetric():
            raise WorkshopError(f"{name} is INT4 with zero points (an asymmetric grid); TensorRT takes zero point 0 only.",
                                "Quantize with a symmetric grid (e.g. --symmetric, RTNConfig(symmetric=True)).")
        if layer.activations == "int8_per_token":
            raise WorkshopError(f"{name} quantizes its activations per token at run time; TensorRT's explicit "
                                "quantization takes static per-tensor activation scales.",
                                "Quantize with SmoothQuantConfig(activation_scales='static') (--static-activations), "
                                "or export INT8/INT4 weight-only or FP8.")
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
    onnx.checker.check_model(exported)
    partial = path.with_name(path.name + ".partial")
    onnx.save(exported, partial)
    partial.replace(path)   # written aside, then renamed: an interrupted export leaves no half-written file
    return path


def node_counts(path) -> dict:
    """{op type: count} of the graph in `path`."""
    import collections
    import onnx
    return dict(collections.Counter(node.op_type for node in onnx.load(path).graph.node))


def onnxruntime_logits(path, input_ids: torch.Tensor, fuse_quantized: bool = False) -> torch.Tensor:
    """The logits onnxruntime (CPU) computes for `input_ids` with the graph in `path`.

    By default the graph runs as written (basic optimizations only): DequantizeLinear -> MatMul, which
    is what the PyTorch model computes. `fuse_quantized` lets onnxruntime fuse those pairs into its own
    integer kernels, which also quantize the activations at run time (8 bits, per tensor): faster on
    a CPU, and no longer the same function."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3   # no warnings about nodes it cannot constant-fold
    if not fuse_quantized:
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(["logits"], {"input_ids": input_ids.numpy()})[0])


@dataclass
class QuantizedInput:
    """One activation quantizer: where PyTorch rounds a linear layer's input, and the graph tensor that
    holds onnxruntime's rounded value of the same input."""
    module: nn.Module        # ours: the QuantLinear (its input is replaced); modelopt: its input_quantizer (output replaced)
    tensor: str              # the DequantizeLinear output in the graph
    scale: torch.Tensor      # one code step
    fmt: str                 # "int8" or "fp8"
    replaces_input: bool
    pre_scale: torch.Tensor | None = None   # modelopt SmoothQuant: the quantizer multiplies its input first

    def _on_grid(self, values: torch.Tensor) -> torch.Tensor:
        """values / scale rounded as the quantizer rounds: integer-valued floats (INT8) or float8 (FP8)."""
        return static_codes(values, self.scale, "int8" if self.fmt == "int8" else "fp8_e4m3")

    def codes(self, values: torch.Tensor) -> torch.Tensor:
        """Codes as integers that count steps: INT8 codes, or FP8 bit patterns signed by the value's sign."""
        grid = self._on_grid(values)
        if self.fmt == "int8":
            return grid.to(torch.int64)
        # the bit pattern, not abs(): torch's vectorized abs of float8 treats the byte as an int8
        bits = grid.view(torch.uint8).to(torch.int64)
        return torch.where(bits >= 128, 128 - bits, bits)   # sign bit set: minus the magnitude (-0 is 0)

    def rounded(self, values: torch.Tensor) -> torch.Tensor:
        """`values` on the grid, in units of the scale."""
        return self._on_grid(values).float()


def quantized_inputs(model, graph) -> list:
    """Every activation quantizer of `model` (our packed layers with static scales, or modelopt's
    enabled input quantizers) with the graph tensor of its rounded value."""
    from ..quant.qlinear import QuantLinear
    outputs = {node.name: node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    points = []
    for name, module in model.named_modules():
        if isinstance(module, QuantLinear) and module.activations in STATIC_ACTIVATION_TYPES:
            points.append(QuantizedInput(module, f"{name}.input_dq", module.input_scale.float(),
                                         module.activations.split("_")[0], replaces_input=True))
        quantizer = getattr(module, "input_quantizer", None)
        if quantizer is not None and getattr(quantizer, "is_enabled", False) and quantizer.num_bits in (8, (4, 3)):
            # modelopt's TorchScript export names a node after its module path, dots as "/"
            scope = f"/model/{name.replace('.', '/')}/input_quantizer/"
            found = [out for node, out in outputs.items() if node.replace(".", "/").startswith(scope)]
            if len(found) != 1:
                raise WorkshopError(f"The graph has no single DequantizeLinear for {name}'s input quantizer.",
                                    "Check the file was exported from this model (export_modelopt_onnx).")
            pre_scale = quantizer.pre_quant_scale if getattr(quantizer, "_enable_pre_quant_scale", False) else None
            points.append(QuantizedInput(quantizer, found[0], (quantizer.amax.float() / quantizer.maxbound),
                                         "int8" if quantizer.num_bits == 8 else "fp8", replaces_input=False,
                                         pre_scale=None if pre_scale is None else pre_scale.float()))
    return points


def activation_code_check(model, path, input_ids: torch.Tensor) -> dict:
    """For a graph with quantized activations: how much of its difference from PyTorch is the engine's
    arithmetic, and how much is rounding that went the other way at a tie.

    onnxruntime runs `path` on `input_ids` and reports every activation it quantized (each layer's
    input after QuantizeLinear -> DequantizeLinear). PyTorch (a float32 CPU copy of `model`, ours or
    modelopt's) then runs with onnxruntime's values in place of its own rounded inputs, so both compute
    every later layer from the same codes. At each quantizer PyTorch also rounds its own input and
    compares codes with onnxruntime's: the two inputs differ only by summation order, so a code can
    differ only where they lie next to the point half-way between two codes. Returns
        max_abs_logit_difference_same_codes: PyTorch fed onnxruntime's codes vs onnxruntime's logits;
        activation_codes, codes_flipped: activations quantized, and how many PyTorch rounds otherwise;
        largest_flip_steps: the largest such difference in code steps (1: the neighbouring code);
        largest_flip_offset_from_tie: for the flipped ones, the largest distance of the input from the
            point half-way between the two codes, as a fraction of the step between them.
    """
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper
    model = copy.deepcopy(model).cpu().eval()
    proto = onnx.load(path)
    points = quantized_inputs(model, proto.graph)
    if not points:
        raise WorkshopError("The model quantizes no activations with static scales: there are no codes to compare.",
                            "Use this check for INT8 SmoothQuant (static) or FP8 W8A8 exports.")
    proto.graph.output.extend(helper.make_tensor_value_info(point.tensor, TensorProto.FLOAT, None) for point in points)
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = onnxruntime.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    engine_logits, *engine_inputs = session.run(["logits"] + [point.tensor for point in points],
                                                {"input_ids": input_ids.numpy()})
    totals = {"activation_codes": 0, "codes_flipped": 0, "largest_flip_steps": 0, "largest_flip_offset_from_tie": 0.0}

    def compare(point, x, engine_values):
        """Count the codes PyTorch's rounding of x puts elsewhere than onnxruntime's."""
        if point.pre_scale is not None:
            x = x.float() * point.pre_scale
        ours, theirs = point.codes(x), point.codes(engine_values)
        flipped = ours != theirs
        totals["activation_codes"] += ours.numel()
        totals["codes_flipped"] += int(flipped.sum())
        if flipped.any():
            totals["largest_flip_steps"] = max(totals["largest_flip_steps"], int((ours - theirs).abs().max()))
            mine, other = point.rounded(x)[flipped], point.rounded(engine_values)[flipped]
            offset = (x.float()[flipped] / point.scale - (mine + other) / 2).abs() / (mine - other).abs()
            totals["largest_flip_offset_from_tie"] = max(totals["largest_flip_offset_from_tie"], float(offset.max()))

    def hook(point, engine_values):
        if point.replaces_input:   # QuantLinear rounds the substituted input again: it is on the grid already
            def replace_input(module, args):
                compare(point, args[0], engine_values)
                return (engine_values.to(args[0].dtype),)
            return point.module.register_forward_pre_hook(replace_input)

        def replace_output(module, args, output):
            compare(point, args[0], engine_values)
            return engine_values.to(output.dtype)
        return point.module.register_forward_hook(replace_output)

    handles = [hook(point, torch.from_numpy(values)) for point, values in zip(points, engine_inputs)]
    try:
        with torch.no_grad():
            logits = model(input_ids).logits.float()
    finally:
        for handle in handles:
            handle.remove()
    return {"max_abs_logit_difference_same_codes": float((logits - torch.from_numpy(engine_logits)).abs().max())} | totals


def code_check_text(check: dict) -> str:
    """One sentence from activation_code_check's result."""
    return (f"PyTorch fed onnxruntime's activation codes: largest logit difference "
            f"{check['max_abs_logit_difference_same_codes']:.2e}; PyTorch's own rounding differs at "
            f"{check['codes_flipped']:,} of {check['activation_codes']:,} activation codes, by at most "
            f"{check['largest_flip_steps']} step, each input within {check['largest_flip_offset_from_tie']:.1e} of a step "
            "of the half-way point")


def logit_agreement(reference: torch.Tensor, candidate: torch.Tensor, input_ids: torch.Tensor) -> dict:
    """How close an engine's logits are to the PyTorch model's on `input_ids` [batch, tokens]: the largest
    absolute difference, the relative difference of the next-token loss, and the share of positions
    whose most likely next token is the same. With quantized activations the first can be large (an
    input within float rounding of a rounding boundary goes to the neighbouring code in one of the two,
    and a whole step moves) while the other two show whether the engine computes the same model."""
    import torch.nn.functional as F
    reference, candidate = reference.float().cpu(), candidate.float().cpu()
    targets = input_ids[:, 1:].reshape(-1).cpu()

    def loss(logits):
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), targets).item()
    return {"max_abs_logit_difference": float((candidate - reference).abs().max()),
            "loss_relative_difference": abs(loss(candidate) / loss(reference) - 1),
            "top1_agreement": float((candidate.argmax(-1) == reference.argmax(-1)).float().mean())}
