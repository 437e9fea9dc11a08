"""A TensorRT engine from one of our ONNX files, where TensorRT is installed (NGC's PyTorch images ship it).

TensorRT reads the graph's QuantizeLinear/DequantizeLinear as explicit quantization: it fuses each
DequantizeLinear -> MatMul into a low-precision GEMM (INT4 weight-only, INT8 or FP8 W8A8) and never
calibrates anything itself. Its 2:4 kernels need no metadata either: with the SPARSE_WEIGHTS flag the
builder looks for two zeros in every four weights and uses sparse tensor cores where they are faster.

Written against TensorRT 10's Python API (create_network with explicit batch, set_input_shape,
set_tensor_address, execute_async_v3). Nothing in the course's tests needs TensorRT; lab 07 builds
and times engines only where `tensorrt_version()` finds it, and says why it skips otherwise.
"""
from pathlib import Path

import torch

from ..errors import WorkshopError


def tensorrt_version() -> str | None:
    """TensorRT's version where it can build here (the package, and a CUDA GPU), else None."""
    try:
        import tensorrt
    except ImportError:
        return None
    return tensorrt.__version__ if torch.cuda.is_available() else None


def skip_reason() -> str:
    """One line: why no engine is built on this machine, and what to run instead."""
    import importlib.util
    if importlib.util.find_spec("tensorrt") is None:
        return ("TensorRT is not installed here: run this lab in the course's Docker image (NGC PyTorch, which ships "
                "TensorRT), or `trtexec --onnx=FILE --stronglyTyped` on any machine that has it.")
    return "TensorRT is installed but there is no CUDA GPU here: TensorRT builds engines for a GPU only."


def engine_plan(max_batch: int = 8, max_tokens: int = 2048, opt_tokens: int = 128, sparse_weights: bool = False) -> dict:
    """What `build_engine` asks TensorRT for: the builder flags, and input_ids' (smallest, tuned-for,
    largest) [batch, tokens] shapes. Sizes that make no profile are refused here, before TensorRT is needed."""
    if min(max_batch, max_tokens, opt_tokens) < 1 or opt_tokens > max_tokens:
        raise WorkshopError(f"An engine for batch <= {max_batch} and tokens <= {max_tokens}, tuned for {opt_tokens} tokens, "
                            "has no valid shape profile.", "Give positive sizes with opt_tokens <= max_tokens.")
    # FP16: the float parts in 16 bits, the Q/DQ pairs fix the rest; SPARSE_WEIGHTS: 2:4 kernels where faster
    return {"flags": ("FP16", "SPARSE_WEIGHTS") if sparse_weights else ("FP16",),
            "input_ids": ((1, 1), (1, opt_tokens), (max_batch, max_tokens))}


def build_engine(onnx_path, engine_path, max_batch: int = 8, max_tokens: int = 2048, opt_tokens: int = 128,
                 sparse_weights: bool = False) -> Path:
    """Parse `onnx_path`, build an engine for input_ids up to [max_batch, max_tokens] (`engine_plan`) and
    write it to `engine_path`; returns that path. `sparse_weights` lets TensorRT use 2:4 sparse kernels."""
    plan = engine_plan(max_batch, max_tokens, opt_tokens, sparse_weights)
    if tensorrt_version() is None:
        raise WorkshopError("No TensorRT engine can be built here.", skip_reason())
    import tensorrt as trt
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)   # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise WorkshopError(f"TensorRT's ONNX parser refused {onnx_path}: {errors}",
                            "Export with workshop export --format onnx (opset 21, symmetric grids).")
    config = builder.create_builder_config()
    for flag in plan["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    profile = builder.create_optimization_profile()
    profile.set_shape("input_ids", *plan["input_ids"])
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise WorkshopError(f"TensorRT could not build an engine from {onnx_path} (its log above says why).",
                            "Check that every DequantizeLinear is symmetric with a block size that divides K.")
    engine_path = Path(engine_path)
    engine_path.write_bytes(bytes(serialized))
    return engine_path


class Engine:
    """A built engine that maps input_ids (a CUDA int64 tensor) to logits, on PyTorch's current stream."""

    def __init__(self, engine_path):
        import tensorrt as trt
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        self.context = self.engine.create_execution_context()

    def __call__(self, input_ids: torch.Tensor) -> torch.Tensor:
        self.context.set_input_shape("input_ids", tuple(input_ids.shape))
        logits = torch.empty(tuple(self.context.get_tensor_shape("logits")), dtype=torch.float32,
                             device=input_ids.device)
        self.context.set_tensor_address("input_ids", input_ids.data_ptr())
        self.context.set_tensor_address("logits", logits.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise WorkshopError("TensorRT failed to run the engine.", "Rebuild it on this GPU and TensorRT version.")
        return logits


def time_against_pytorch(engine, model, shapes=((1, 1), (1, 2048)), repeats: int = 10) -> list:
    """[{batch, tokens, tensorrt_ms, pytorch_ms}]: the median time of one forward pass (logits for every
    token, no KV cache) of the engine and of the PyTorch `model`, on the model's device, at batch 1
    decode-like and prefill shapes. `engine` maps input_ids to logits (an `Engine`)."""
    from ..hardware import median_seconds
    device = next(model.parameters()).device
    rows = []
    for batch, tokens in shapes:
        ids = torch.randint(0, model.config.vocab_size, (batch, tokens), device=device)
        with torch.no_grad():
            pytorch = median_seconds(lambda: model(ids, use_cache=False), device, repeats)
        rows.append({"batch": batch, "tokens": tokens, "pytorch_ms": 1e3 * pytorch,
                     "tensorrt_ms": 1e3 * median_seconds(lambda: engine(ids), device, repeats)})
    return rows
