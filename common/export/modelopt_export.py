"""Export a model fake-quantized by NVIDIA modelopt: ONNX with Q/DQ (TensorRT) and the unified HF checkpoint.

`common.quant.modelopt_ptq.quantize_modelopt` leaves a model whose linear layers carry modelopt
TensorQuantizers (fake quantization: the model still computes in float). Two ways out, both modelopt's:

ONNX. modelopt's quantizers are autograd Functions with an ONNX `symbolic`, so only the TorchScript
exporter (torch.onnx.export(dynamo=False)) turns them into quantization nodes; the dynamo exporter
meets modelopt's `tensorrt::quantize_op` custom op instead. What the TorchScript export writes:
  INT8   QuantizeLinear -> DequantizeLinear (standard ONNX) on inputs and on the float weights;
  FP8    trt::TRT_FP8QuantizeLinear -> trt::TRT_FP8DequantizeLinear, TensorRT custom ops that
         onnxruntime does not know (standard FP8 Q/DQ arrive in opset 19);
  INT4   trt::DequantizeLinear(float weight, scale, block_size) on the weight only (standard blocked
         INT4 DequantizeLinear arrives in opset 21).
modelopt rewrites that graph afterwards (modelopt.onnx.export, behind modelopt.torch._deploy's
get_onnx_bytes_and_metadata), but that needs its `[onnx]` extra (onnx_graphsurgeon,
onnxconverter_common), which is not installed here. So the rewrite is done here, the same way:
  every quantized linear's weight becomes its codes (FP8 E4M3 / INT8 / INT4) stored [in, out] as the
  MatMul reads them, with one standard DequantizeLinear; the Q on the weight, the Reshape and Transpose
  go. The codes come from modelopt's own quantizer (its fake-quantized weight divided by its scale),
  so DequantizeLinear gives back the weight the PyTorch model uses;
  activation Q/DQ stay, the FP8 ones renamed to standard QuantizeLinear/DequantizeLinear;
  a tied lm_head reads the embedding through a Transpose instead of a folded second copy.
(The TorchScript exporter writes no per-node stack traces, so there is nothing to strip.)
onnxruntime then computes what the PyTorch model computes, with one exception: its QuantizeLinear
divides by the scale where modelopt multiplies by 1 / scale, so about one activation in 10^6 that
lies within an ulp of a rounding boundary takes the neighbouring code; in a deep model that
difference grows like any other quantization difference.

HF. modelopt.torch.export.export_hf_checkpoint writes safetensors with low-precision weights plus
hf_quant_config.json (and quantization_config in config.json): what TensorRT-LLM, vLLM and SGLang load.
It runs on a CPU. It changes the model it is given (packs its weights, and for INT8 SmoothQuant and
AWQ averages the smoothing scales of layers that share an input and folds AWQ's into the norms), so it
is given a copy. `check_modelopt_hf` reads the files back and compares each dequantized weight with the
weight modelopt's fake quantizer produces after that same re-smoothing.
"""
import copy
import io
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import WorkshopError
from ..quant.modelopt_ptq import quiet_modelopt
from .onnx import OPSET, Logits   # one opset for every format: blocked INT4 needs 21

MIN_OPSET = {"int8": 13, "fp8": 19, "int4": 21}    # per-axis Q/DQ: 13; FP8 types: 19; INT4 and block_size: 21
HOW_TO_QUANTIZE = ("Quantize it first: common.quant.modelopt_ptq.quantize_modelopt(model, ModeloptConfig('FP8_DEFAULT_CFG'), "
                   "calib_ids) (or INT8_SMOOTHQUANT_CFG, INT4_AWQ_CFG, INT4_BLOCKWISE_G64).")


def _format(quantizer) -> str | None:
    """'fp8', 'int8', 'int4', 'w4a8' (INT4 codes whose scales are quantized again to FP8), 'dynamic'
    (scales computed at run time: NVFP4, MXFP8), another num_bits as text, or None when disabled."""
    if quantizer is None or not getattr(quantizer, "is_enabled", False):
        return None
    if isinstance(quantizer, nn.Sequential):   # modelopt's SequentialQuantizer
        return "w4a8"
    if (quantizer.block_sizes or {}).get("type") == "dynamic":
        return "dynamic"
    return {(4, 3): "fp8", 8: "int8", 4: "int4"}.get(quantizer.num_bits, str(quantizer.num_bits))


def quantized_linears(model) -> dict:
    """{module name: (linear, weight format, input format or None)} of every linear modelopt quantized."""
    layers = {}
    for name, module in model.named_modules():
        weight_fmt = _format(getattr(module, "weight_quantizer", None))
        if weight_fmt is not None:
            layers[name] = (module, weight_fmt, _format(getattr(module, "input_quantizer", None)))
    if not layers:
        hint = (" It holds our own packed layers: use common.export.onnx.export_onnx for those."
                if any(type(m).__name__ == "QuantLinear" and hasattr(m, "fmt") for m in model.modules()) else "")
        raise WorkshopError("The model has no enabled modelopt quantizers, so there is nothing to export as "
                            "quantized." + hint, HOW_TO_QUANTIZE)
    return layers


# ---------------------------------------------------------------------------------------------
# ONNX
# ---------------------------------------------------------------------------------------------
def _check_onnx_exportable(layers: dict, opset: int) -> None:
    for name, (module, weight_fmt, input_fmt) in layers.items():
        for fmt in (weight_fmt, input_fmt):
            if fmt == "w4a8":
                raise WorkshopError(f"{name} has a two-level weight quantizer (W4A8_AWQ_BETA_CFG), which modelopt "
                                    "writes as TensorRT custom ops, not standard Q/DQ.",
                                    "Export it with export_modelopt_hf (TensorRT-LLM reads W4A8), or use INT4_AWQ_CFG.")
            if fmt and fmt not in MIN_OPSET:
                raise WorkshopError(f"{name} is quantized as {fmt} (NVFP4, MXFP8 or another format), which modelopt "
                                    "writes as TensorRT custom ops that no other runtime runs.",
                                    "Export FP8_DEFAULT_CFG, INT8_SMOOTHQUANT_CFG or an INT4 configuration.")
            if fmt and opset < MIN_OPSET[fmt]:
                raise WorkshopError(f"{name} is {fmt.upper()}, which ONNX has only from opset {MIN_OPSET[fmt]}.",
                                    f"Export with opset {OPSET} (TensorRT 10 parses it).")
        if input_fmt == "int4":
            raise WorkshopError(f"{name} quantizes its inputs to INT4; TensorRT takes INT4 for weights only.",
                                "Use a weight-only INT4 configuration (INT4_AWQ_CFG, INT4_BLOCKWISE_G64).")
        if module.weight_quantizer.amax is None or (input_fmt and module.input_quantizer.amax is None):
            raise WorkshopError(f"{name}'s quantizers were never calibrated (no amax).", HOW_TO_QUANTIZE)
        if input_fmt and module.input_quantizer.amax.numel() != 1:
            raise WorkshopError(f"{name}'s input scale is not one number; TensorRT's Q/DQ take per-tensor "
                                "activation scales.", "Use a configuration with per-tensor input scales.")
        if weight_fmt == "fp8" and module.weight_quantizer.amax.numel() != 1:
            raise WorkshopError(f"{name} has FP8 weight scales per channel; modelopt exports FP8 per tensor only.",
                                "Use FP8_DEFAULT_CFG (per-tensor scales).")
        block = (module.weight_quantizer.block_sizes or {}).get(-1)
        if weight_fmt == "int4" and (not block or module.in_features % block):
            raise WorkshopError(f"{name} has {module.in_features} inputs, not a multiple of its INT4 block "
                                f"({block}); modelopt pads the last block, which DequantizeLinear cannot express.",
                                "Quantize with INT4_BLOCKWISE_G64 (64 divides SmolLM2's 576 and 1536).")


def _weight_codes(module, fmt: str):
    """(codes [in, out] as a numpy array of the ONNX element type, float32 scale, DequantizeLinear
    attributes) of one linear, taken from modelopt's quantizer: its fake-quantized weight divided by
    its scale, so codes * scale is the weight the PyTorch model computes with."""
    import ml_dtypes
    quantizer = module.weight_quantizer
    with torch.no_grad():
        fake = quantizer(module.weight.float()).float().T                        # [in, out]
    # modelopt divides by maxbound / amax; the reciprocal in float32 is the scale DequantizeLinear multiplies by
    scale = 1.0 / (quantizer.maxbound / quantizer.amax.float())
    scale[scale == 0] = 1.0   # an all-zero channel: modelopt's weight is 0 there, any scale will do
    if fmt == "fp8":
        scale = scale.reshape(())
        codes = (fake / scale).to(torch.float8_e4m3fn).view(torch.uint8).numpy().view(ml_dtypes.float8_e4m3fn)
        return codes, scale.numpy(), {}
    if fmt == "int8":
        scale = scale.flatten()                                                   # one per output channel
        return (fake / scale).round().to(torch.int8).numpy(), scale.numpy(), {"axis": 1}
    block = quantizer.block_sizes[-1]
    scale = scale.reshape(module.out_features, -1).T.contiguous()                 # [in / block, out]
    codes = (fake / scale.repeat_interleave(block, dim=0)).round().to(torch.int8).numpy()
    return codes.astype(ml_dtypes.int4), scale.numpy(), {"axis": 0, "block_size": block}


def _rewrite_graph(graph, layers: dict) -> None:
    """Weights to codes + one DequantizeLinear feeding the MatMul; TensorRT's FP8 activation ops to
    standard ones; then drop whatever no longer feeds the logits."""
    import ml_dtypes
    from onnx import helper, numpy_helper
    consumers = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    # node names carry the module path, "/model/model/layers.0/self_attn/q_proj/weight_quantizer/..."
    # (Logits.model, then the module's name, its dots kept inside a ModuleList's child): compare with / for .
    weight_quantizer_nodes = {}
    for node in graph.node:
        scope, found, _ = node.name.replace(".", "/").partition("/weight_quantizer/")
        if found:
            weight_quantizer_nodes.setdefault(scope, []).append(node)
    insert_before = {}   # MatMul node name -> the DequantizeLinear that now feeds it
    for name, (module, fmt, _) in layers.items():
        quantizer_nodes = weight_quantizer_nodes.get("/model/" + name.replace(".", "/"))
        if not quantizer_nodes:
            raise WorkshopError(f"The exported graph has no weight quantizer for {name}.",
                                "Report this with your torch and modelopt versions; the exporter's naming changed.")
        # follow the weight from its last quantizer node through Reshape/Transpose to the MatMul that reads it
        tensor = quantizer_nodes[-1].output[0]
        while len(consumers.get(tensor, [])) == 1 and consumers[tensor][0].op_type in ("Reshape", "Transpose"):
            tensor = consumers[tensor][0].output[0]
        readers = consumers.get(tensor, [])
        if len(readers) != 1 or readers[0].op_type != "MatMul" or readers[0].input[1] != tensor:
            raise WorkshopError(f"The exported graph does not feed {name}'s weight to one MatMul.",
                                "Report this with your torch and modelopt versions; the exporter's layout changed.")
        codes, scale, attributes = _weight_codes(module, fmt)
        weight = f"{name}.weight"
        graph.initializer.extend([numpy_helper.from_array(codes, f"{weight}.codes"),
                                  numpy_helper.from_array(np.asarray(scale, dtype=np.float32), f"{weight}.scale")])
        insert_before[readers[0].name] = helper.make_node("DequantizeLinear", [f"{weight}.codes", f"{weight}.scale"],
                                                          [f"{weight}.dq"], name=f"{name}.weight_dq", **attributes)
        readers[0].input[1] = f"{weight}.dq"   # the old quantizer, Reshape and Transpose now feed nothing
    nodes = [n for node in graph.node for n in [insert_before.get(node.name), node] if n is not None]
    # FP8 activations: TensorRT's custom ops become the standard ones, with the FP8 zero point that gives
    # the quantized tensor its type
    graph.initializer.append(numpy_helper.from_array(np.zeros((), dtype=ml_dtypes.float8_e4m3fn), "fp8_zero"))
    for node in nodes:
        if node.domain == "trt" and node.op_type in ("TRT_FP8QuantizeLinear", "TRT_FP8DequantizeLinear"):
            node.domain, node.op_type = "", node.op_type.removeprefix("TRT_FP8")
            node.input.append("fp8_zero")
    # keep only what the logits depend on (walking back from the outputs), in the original order
    needed = {output.name for output in graph.output}
    for node in reversed(nodes):
        if any(name in needed for name in node.output):
            needed.update(node.input)
    del graph.node[:]
    graph.node.extend(node for node in nodes if any(name in needed for name in node.output))
    for initializer in [init for init in graph.initializer if init.name not in needed]:
        graph.initializer.remove(initializer)
    # value_info is only a hint of types and shapes, and the exporter's records the FP8 codes as uint8
    del graph.value_info[:]


def _share_tied_embedding(graph, model) -> None:
    """A tied lm_head multiplies by the embedding transposed, and the exporter folds that Transpose into
    a second, transposed copy of the embedding (a third of SmolLM2's file): read the one embedding
    through a Transpose node instead (TensorRT folds it when it builds the engine)."""
    from onnx import helper, numpy_helper
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is None or head.weight is not embedding.weight:
        return
    table = embedding.weight.detach().numpy()
    copies = [init for init in graph.initializer if tuple(init.dims) == table.shape[::-1]
              and np.array_equal(numpy_helper.to_array(init), table.T)]
    name = "model." + next(n for n, p in model.named_parameters() if p is embedding.weight)   # as Logits names it
    if len(copies) != 1 or name not in {init.name for init in graph.initializer}:
        return
    graph.initializer.remove(copies[0])
    nodes = [helper.make_node("Transpose", [name], [copies[0].name], perm=[1, 0], name="tied_lm_head_transpose"),
             *graph.node]
    del graph.node[:]
    graph.node.extend(nodes)


def export_modelopt_onnx(model, path, opset: int = OPSET) -> Path:
    """Write the logits of a modelopt-quantized causal LM as ONNX with Q/DQ to `path`; returns the path.
    The graph takes input_ids [batch, tokens] (int64, both dynamic) and returns float32 logits
    [batch, tokens, vocab]."""
    import onnx
    layers = quantized_linears(model)
    _check_onnx_exportable(layers, opset)
    path = Path(path)
    if path.is_dir():
        raise WorkshopError(f"{path} is a folder.", "Give a file path ending in .onnx.")
    if not path.parent.is_dir():
        raise WorkshopError(f"The folder of {path} does not exist.", "Create it first, or give another path.")
    if sum(p.numel() for p in model.parameters()) * 4 >= 2**31:
        raise WorkshopError("The float32 graph would pass protobuf's 2 GB limit before its weights are compressed.",
                            "Export a smaller model here, or use modelopt's own exporter (external data).")
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in model.parameters()):
        # traced on the CPU in float32 (onnxruntime's CPU kernels); TensorRT takes its precisions from the Q/DQ
        model = copy.deepcopy(model).float().cpu()
        layers = quantized_linears(model)
    ids = torch.zeros(2, 16, dtype=torch.long)
    buffer = io.BytesIO()
    with quiet_modelopt(), torch.no_grad():
        torch.onnx.export(Logits(model).eval(), (ids,), buffer, dynamo=False, opset_version=opset,
                          input_names=["input_ids"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "batch", 1: "tokens"}, "logits": {0: "batch", 1: "tokens"}})
    exported = onnx.load_from_string(buffer.getvalue())
    _rewrite_graph(exported.graph, layers)
    _share_tied_embedding(exported.graph, model)
    if not any(node.domain == "trt" for node in exported.graph.node):
        for entry in [entry for entry in exported.opset_import if entry.domain == "trt"]:
            exported.opset_import.remove(entry)
    onnx.checker.check_model(exported)
    partial = path.with_name(path.name + ".partial")
    try:   # written aside, then renamed: an interrupted export leaves no half-written file
        onnx.save(exported, partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


# ---------------------------------------------------------------------------------------------
# Hugging Face: modelopt's unified checkpoint
# ---------------------------------------------------------------------------------------------
# quant_algo in hf_quant_config.json -> (stored weight dtype, how its weight_scale is laid out)
HF_FORMATS = {
    "FP8": (torch.float8_e4m3fn, "per tensor"),
    "W8A8_SQ_PER_CHANNEL": (torch.int8, "per output channel"),
    "W4A16_AWQ": (torch.uint8, "per block of group_size inputs, two INT4 codes a byte"),
}


def _hf_ready_copy(model):
    """A copy for modelopt's HF exporter, which packs the weights of what it is given. It also asks
    config.architectures whether the model is multimodal: a model built from a config has none."""
    model = copy.deepcopy(model)
    if not model.config.architectures:
        model.config.architectures = [type(model).__name__]
    return model


def export_modelopt_hf(model, tokenizer, out_dir) -> Path:
    """Write modelopt's unified Hugging Face checkpoint of the modelopt-quantized `model` (safetensors
    with FP8 / INT8 / packed INT4 weights and their scales, hf_quant_config.json, quantization_config
    in config.json) and the tokenizer to the new folder `out_dir`; returns the folder."""
    from ..paths import written_aside
    for name, (module, fmt, _) in quantized_linears(model).items():
        block = (module.weight_quantizer.block_sizes or {}).get(-1)
        if fmt == "int4" and module.in_features % block:   # modelopt raises NotImplementedError, after work
            raise WorkshopError(f"{name} has {module.in_features} inputs, not a multiple of its INT4 block ({block}): "
                                "modelopt's checkpoint packs whole blocks only.",
                                "Quantize with INT4_BLOCKWISE_G64 (64 divides SmolLM2's 576 and 1536).")
    target = Path(out_dir).expanduser().resolve()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise WorkshopError(f"--out {target} exists and is not empty.", "Give a new folder, or remove it first.")
    with quiet_modelopt():
        from modelopt.torch.export import export_hf_checkpoint
        with written_aside(target, folder=True) as tmp:
            try:
                export_hf_checkpoint(_hf_ready_copy(model), export_dir=tmp)
            except (NotImplementedError, ValueError, AssertionError) as e:
                raise WorkshopError(f"modelopt could not write this model's checkpoint: {e}",
                                    "Export FP8_DEFAULT_CFG, INT8_SMOOTHQUANT_CFG or INT4_AWQ_CFG of a "
                                    "transformers causal LM.") from e
            tokenizer.save_pretrained(tmp)
    return target


def _unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """modelopt's INT4 packing undone: [out / 2, in] bytes, the low nibble row 2i, the high 2i + 1
    (two's complement) -> [out, in] int8 codes in [-8, 7]."""
    low, high = (packed & 0x0F).to(torch.int8), (packed >> 4).to(torch.int8)
    codes = torch.stack([low, high], dim=1).reshape(-1, packed.shape[1])
    return torch.where(codes > 7, codes - 16, codes)


def read_modelopt_hf(out_dir) -> dict:
    """The checkpoint in `out_dir` read back: {"quant_algo", "group_size", "layers": {name: {"dtype",
    "weight" (dequantized, float32 [out, in]), "scales" (the scale of each weight, [out, in]),
    "weight_scale", "input_scale", "pre_quant_scale"}}},
    after checking that every quantized weight is stored in its format's dtype with a scale of the
    right shape."""
    from safetensors.torch import load_file
    folder = Path(out_dir)
    if not (folder / "hf_quant_config.json").is_file():
        raise WorkshopError(f"{folder} has no hf_quant_config.json: not a modelopt checkpoint.",
                            "Write one with export_modelopt_hf.")
    quantization = json.loads((folder / "hf_quant_config.json").read_text())["quantization"]
    algo, group = quantization["quant_algo"], quantization.get("group_size")
    if algo not in HF_FORMATS:
        raise WorkshopError(f"quant_algo {algo} is not one read back here.", f"Check one of {', '.join(HF_FORMATS)}.")
    config = json.loads((folder / "config.json").read_text())
    if config.get("quantization_config", {}).get("quant_algo") != algo:
        raise WorkshopError("config.json's quantization_config does not match hf_quant_config.json.",
                            "Export again; the folder was changed after it was written.")
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state |= load_file(file)
    dtype, _ = HF_FORMATS[algo]
    layers = {}
    for key in sorted(k for k in state if k.endswith(".weight_scale")):
        name = key.removesuffix(".weight_scale")
        weight, scale = state[f"{name}.weight"], state[key].float()
        if weight.dtype != dtype:
            raise WorkshopError(f"{name}.weight is stored as {weight.dtype}, not {dtype} as {algo} says.",
                                "Export again with export_modelopt_hf.")
        # each code times the scale it is stored with: [out, in], like the weight
        if algo == "FP8":
            expected, codes, scales = (), weight.float(), scale.expand(weight.shape)
        elif algo == "W8A8_SQ_PER_CHANNEL":
            expected, codes, scales = (weight.shape[0],), weight.float(), scale[:, None].expand(weight.shape)
        else:
            codes = _unpack_int4(weight).float()
            expected, scales = (codes.shape[0], codes.shape[1] // group), scale.repeat_interleave(group, dim=1)
        if scale.shape != expected:
            raise WorkshopError(f"{key} has shape {tuple(scale.shape)}, not {expected} as {algo} says "
                                f"({HF_FORMATS[algo][1]}).", "Export again with export_modelopt_hf.")
        layers[name] = {"dtype": str(weight.dtype).removeprefix("torch."), "weight": codes * scales,
                        "scales": scales, "weight_scale": scale,
                        "input_scale": state.get(f"{name}.input_scale"),
                        "pre_quant_scale": state.get(f"{name}.pre_quant_scale")}
    if not layers:
        raise WorkshopError(f"{folder}'s safetensors hold no quantized weights.",
                            "Export again with export_modelopt_hf.")
    return {"quant_algo": algo, "group_size": group, "layers": layers}


def check_modelopt_hf(out_dir, model, input_ids: torch.Tensor | None = None) -> dict:
    """Compare the checkpoint in `out_dir` with the modelopt-quantized `model` it was written from.

    The exporter first re-smooths layers that share an input (INT8 SmoothQuant, AWQ: their smoothing
    scales averaged, AWQ's folded into the norm, the weights requantized); the checkpoint stores that
    re-smoothed model's weights. So the reference is modelopt's fake-quantized weight after the same
    step, done here on a copy: "max_abs_weight_difference" is the largest difference between a stored
    weight, dequantized, and it; "weights_on_another_code" counts those stored on another code, and
    "ties_on_another_code" those of them one code away whose unrounded value sits halfway between two codes.
    Those are ties: the exporter divides by amax / maxbound where the fake quantizer multiplies by
    maxbound / amax, so a weight exactly halfway between two codes can round the other way (rare in a
    trained model, common in one dequantized from a GGUF grid, like the embedded model). With
    `input_ids`, "max_abs_logit_difference" is how far the re-smoothed model's logits are from
    `model`'s (0 where nothing is re-smoothed)."""
    from modelopt.torch.export.unified_export_hf import requantize_resmooth_fused_llm_layers
    stored = read_modelopt_hf(out_dir)
    reference = _hf_ready_copy(model)
    with quiet_modelopt(), torch.no_grad():
        requantize_resmooth_fused_llm_layers(reference)
    layers = quantized_linears(reference)
    if set(layers) != set(stored["layers"]):
        unmatched = sorted(set(layers) ^ set(stored["layers"]))
        raise WorkshopError(f"{out_dir} quantizes other layers than the model: {unmatched[:4]}.",
                            "Check it against the model it was exported from.")
    difference, differing, ties, total = 0.0, 0, 0, 0
    with torch.no_grad():
        for name, (module, _, _) in layers.items():
            fake = module.weight_quantizer(module.weight.float()).float().cpu()   # the checkpoint is read onto the CPU
            scales = stored["layers"][name]["scales"]
            gap = (stored["layers"][name]["weight"] - fake).abs()
            difference = max(difference, float(gap.max()))
            # float rounding moves a weight by ~1e-7 of its scale; a code one step away moves it by >= 2^-9 of it
            other = gap > 1e-3 * scales
            # a tie: one code step apart, and the unrounded weight / scale within 1e-3 of halfway between codes
            ratio = module.weight.float().cpu() / scales
            halfway = ((ratio - ratio.floor()) - 0.5).abs() < 1e-3
            differing += int(other.sum())
            ties += int((other & halfway & ((gap - scales).abs() <= 1e-3 * scales)).sum())
            total += gap.numel()
    result = {"quant_algo": stored["quant_algo"], "layers": len(layers), "max_abs_weight_difference": difference,
              "weights_on_another_code": differing, "ties_on_another_code": ties, "weights": total}
    if input_ids is not None:
        with torch.no_grad():
            logits = reference(input_ids).logits - model(input_ids).logits
        result["max_abs_logit_difference"] = float(logits.abs().max())
    return result
