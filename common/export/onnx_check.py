"""Checking an exported ONNX graph against the PyTorch model it came from (ours or modelopt's), with
onnxruntime on the CPU: node counts, logits, and the activation codes the engine would compute.

`logit_agreement` compares logits; `activation_code_check` runs the graph and the model on the same
input and compares, for every statically quantized activation, the codes both compute: a difference
there is a rounding disagreement, not a numerical one.
"""
import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import WorkshopError
from ..quant.formats import static_codes
from .onnx import STATIC_ACTIVATION_TYPES


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
