"""`workshop export`: a compressed model out of the course, for an inference engine (lab 07).

    workshop export --model DIR --format onnx --out model.onnx              # a packed model from quantize --out
    workshop export --method rtn --bits 4 --group-size 64 --symmetric --format onnx --out int4.onnx
    workshop export --method gptq --bits 4 --group-size 64 --format compressed-tensors --out gptq-ct

onnx: explicit quantization (DequantizeLinear on packed codes; QuantizeLinear -> DequantizeLinear on
FP8 activations), in the form TensorRT's parser takes; checked by running the file in onnxruntime.
compressed-tensors: vLLM's checkpoint format (a Hugging Face folder); checked by reading it back
through the compressed-tensors library, weight for weight and logit for logit. Both checks use a
window of the first evaluation text.
"""
from . import Output, add_data_options, protocol_from
from ..errors import WorkshopError

HELP = ("Export a compressed model for an inference engine: ONNX with explicit quantization (TensorRT's form) or "
        "a compressed-tensors checkpoint (vLLM's).")
FORMATS = ("onnx", "compressed-tensors")


def add_arguments(p) -> None:
    from ..quant.presets import METHODS
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx: QuantizeLinear/DequantizeLinear, opset 21; "
                   "compressed-tensors: a Hugging Face folder vLLM loads")
    p.add_argument("--out", required=True, help="onnx: the file to write (e.g. model.onnx); compressed-tensors: a new "
                   "folder (both written aside, then renamed)")
    p.add_argument("--method", help=f"quantize --model first: {' | '.join(METHODS)} (default: export --model as it is, "
                   "e.g. a directory written by quantize --out)")
    p.add_argument("--bits", type=int, help="weight bits of --method")
    p.add_argument("--group-size", type=int, help="inputs per scale of --method (0: per channel)")
    p.add_argument("--symmetric", action="store_true", help="--method rtn/gptq/awq: a grid without zero points "
                   "(TensorRT's INT4 takes only this)")
    p.add_argument("--opset", type=int, default=21, help="ONNX opset (21 or later: blocked DequantizeLinear, INT4)")
    add_data_options(p)


def run(args) -> Output:
    import os
    from pathlib import Path

    import torch

    from ..data import eval_windows, token_ids
    from ..eval import stored_bytes
    from ..export.compressed_tensors import check_round_trip, save_compressed_tensors
    from ..export.onnx import OPSET, export_onnx, node_counts, onnxruntime_logits
    from ..models import load_model
    from ..quant.presets import method_and_config
    from ..quant.qlinear import pack_quantized
    onnx = args.format == "onnx"
    out = Path(args.out).expanduser()
    if (out.is_dir() if onnx else out.exists()) or not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise WorkshopError(f"--out {out} cannot be written: " + ("it exists." if out.exists() else
                            f"the folder {out.parent} does not exist or is not writable."),
                            "Give a new path in a writable folder, e.g. --out " + ("model.onnx." if onnx else "model-ct."))
    if onnx and args.opset < OPSET:
        raise WorkshopError(f"--opset {args.opset} has no blocked DequantizeLinear or INT4 type.",
                            f"Use --opset {OPSET} or later (TensorRT 10 parses it).")
    if args.method:
        if args.method.startswith("modelopt:"):
            raise WorkshopError("--method modelopt:... is exported through modelopt itself, not by this command.",
                                "Use one of our methods here (e.g. --method gptq --symmetric).")
        _, config = method_and_config(args.method, args.bits, args.group_size, symmetric=args.symmetric)  # fails early
        if args.method in ("nf4", "smoothquant"):
            raise WorkshopError(f"--method {args.method} has no {args.format} form here: " +
                                ("NF4 has no ONNX or compressed-tensors type." if args.method == "nf4" else
                                 "its INT8 activations are quantized per token at run time."),
                                "Export INT4 (rtn/gptq/awq), INT8 weights (--bits 8) or fp8.")
        if onnx and getattr(config, "bits", None) == 4 and not config.symmetric:
            raise WorkshopError(f"--method {args.method} makes INT4 with zero points; TensorRT takes zero point 0 only.",
                                "Export INT4 with a symmetric grid: --method rtn|gptq|awq --bits 4 --symmetric.")
    elif args.bits is not None or args.group_size is not None or args.symmetric:
        raise WorkshopError("--bits, --group-size and --symmetric describe a --method, and none was given.",
                            "Add --method (e.g. --method rtn), or leave them out to export --model as it is.")
    protocol = protocol_from(args)
    model, tokenizer = load_model(args.model, dtype="float32", device="cpu")   # the graph is exported in float32
    if args.method:
        quantize, config = method_and_config(args.method, args.bits, args.group_size, model=model,
                                             symmetric=args.symmetric)
        model = pack_quantized(quantize(model, config, protocol.calibration(tokenizer, model=model)), progress=False)
    window = eval_windows(token_ids(tokenizer, protocol.eval_data[0], "eval"), protocol.seqlen, 1)
    result = {"format": args.format, "model": args.model, "method": args.method, "stored_bytes": stored_bytes(model),
              "checked_on": f"{protocol.eval_data[0]}: 1 x {window.shape[1]} tokens"}
    if onnx:
        path = export_onnx(model, out, opset=args.opset)   # refuses what TensorRT cannot take before writing
        with torch.no_grad():
            reference = model(window).logits
        counts = node_counts(path)
        result |= {"out": str(path), "opset": args.opset, "file_bytes": path.stat().st_size,
                   "quantize_nodes": counts.get("QuantizeLinear", 0),
                   "dequantize_nodes": counts.get("DequantizeLinear", 0),
                   "max_abs_logit_difference": float((onnxruntime_logits(path, window) - reference).abs().max())}
        lines = [f"QuantizeLinear {result['quantize_nodes']}, DequantizeLinear {result['dequantize_nodes']} "
                 f"(opset {args.opset})", f"onnxruntime vs PyTorch on {result['checked_on']}: largest logit difference "
                 f"{result['max_abs_logit_difference']:.2e}"]
    else:
        path = save_compressed_tensors(model, tokenizer, out)
        result |= {"out": str(path), "file_bytes": sum(f.stat().st_size for f in path.iterdir())} | \
            check_round_trip(model, path, window)
        lines = [f"read back through compressed-tensors on {result['checked_on']}: largest weight difference "
                 f"{result['max_abs_weight_difference']:.2e}, largest logit difference {result['max_abs_logit_difference']:.2e}"]
    text = "\n".join([f"wrote {path} ({result['file_bytes']:,} bytes; the packed float32 model stores "
                      f"{result['stored_bytes']:,})"] + lines)
    return Output(result, text)
