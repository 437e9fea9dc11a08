"""Checkers of lab 07 (Export and deployment)."""
import torch

from . import check, not_solved, unsolved


def check_node_counts(expected: dict, path):
    """{"QuantizeLinear": n, "DequantizeLinear": m} predicted from the model, against the file's graph."""
    from ..export.onnx import node_counts
    counts = node_counts(path)
    found = {op: counts.get(op, 0) for op in ("QuantizeLinear", "DequantizeLinear")}
    if unsolved(expected):
        return not_solved(f"Q/DQ nodes of {path.name}", found, str(found))
    check(f"Q/DQ nodes of {path.name}: {found}", {op: expected.get(op, 0) for op in found} == found,
          "one DequantizeLinear per quantized linear's weight; a layer with static activation scales adds a "
          "QuantizeLinear -> DequantizeLinear pair on its input; weight-only formats have no QuantizeLinear.")
    return expected


def check_qdq(qdq_int8):
    """The participant's INT8 QuantizeLinear -> DequantizeLinear against onnxruntime running the two nodes."""
    import numpy as np
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper
    scale = 0.5
    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"])],
        "qdq", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        [numpy_helper.from_array(np.array(scale, dtype=np.float32), "s"), numpy_helper.from_array(np.array(0, dtype=np.int8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    # half-way values (ties go to the even code), values past both ends of the range, ordinary values
    x = torch.tensor([0.25, 0.75, -0.25, -1.25, 1.25, 63.5, 63.75, -64.0, -64.5, -100.0, 100.0, 3.1, -7.9])
    expected = torch.from_numpy(session.run(["y"], {"x": x.numpy()})[0])
    name = "INT8 QuantizeLinear -> DequantizeLinear as onnxruntime computes it"
    try:
        answer = qdq_int8(x, torch.tensor(scale))
    except NotImplementedError:
        from ..quant.smoothquant import quantize_static_int8   # the package's own Q -> DQ
        return not_solved(name, quantize_static_int8)
    check(name, answer is not None and torch.equal(answer.float(), expected),
          "q = round(x / scale) with ties to even (torch.round does that), clamped to [-128, 127]; y = q * scale.")
    return qdq_int8


def check_unpacked_codes(codes, layer):
    """Signed INT4 codes unpacked from compressed-tensors' int32 words, against the packed layer's own."""
    expected = layer.int4_signed_codes().cpu()
    name = "INT4 codes unpacked from compressed-tensors' int32 words"
    if unsolved(codes):
        return not_solved(name, expected)
    check(name, codes is not None and codes.shape == expected.shape and torch.equal(codes.cpu().to(expected.dtype), expected),
          "word w of row n holds codes 8w..8w+7, the first in the lowest 4 bits: (word >> 4 * i) & 0xF, minus 8; "
          "the words are int32, so shift a 64-bit copy (or mask) to avoid sign trouble.")
    return codes
