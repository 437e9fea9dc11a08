"""Checkers of lab 07 (Export and deployment)."""
import torch

from . import check, not_solved


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
        from ..quant.formats import quantize_static   # the package's own Q -> DQ
        return not_solved(name, lambda x, scale: quantize_static(x, scale, "int8"))
    check(name, answer is not None and torch.equal(answer.float(), expected),
          "q = round(x / scale) with ties to even (torch.round does that), clamped to [-128, 127]; y = q * scale.")
    return qdq_int8


def _reference_unpack(words: torch.Tensor) -> torch.Tensor:
    """compressed-tensors' pack-quantized int32 words [rows, cols / 8] -> signed INT4 codes [rows, cols]."""
    nibbles = (words.to(torch.int64).unsqueeze(-1) >> (4 * torch.arange(8))) & 0xF
    return (nibbles - 8).reshape(words.shape[0], -1)


def check_unpack_int4(unpack_int4):
    """`unpack_int4(words)` on words packed here from known codes (every code, in every position of a word,
    including the top nibble that makes an int32 negative), and on a real layer's words."""
    from ..export.compressed_tensors import pack_int4_words
    name = "INT4 codes unpacked from compressed-tensors' int32 words"
    generator = torch.Generator().manual_seed(7)
    codes = torch.randint(-8, 8, (16, 64), generator=generator)
    codes[0, :16] = torch.arange(-8, 8)          # every code once, in the low and the high half of two words
    codes[1, :8] = 7                              # a word whose top nibble is 15: the int32 is negative
    words = pack_int4_words(codes)
    try:
        answer = unpack_int4(words)
    except NotImplementedError:
        return not_solved(name, _reference_unpack)
    ok = answer is not None and tuple(answer.shape) == tuple(codes.shape) and torch.equal(answer.to(torch.int64), codes)
    check(name, ok, "word w of row n holds codes 8w..8w+7, the first in the lowest 4 bits: (word >> 4 * i) & 0xF, "
          "minus 8 (codes are stored as signed value + 8); the result is [rows, 8 * words per row].")
    return unpack_int4
