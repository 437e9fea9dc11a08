"""`workshop export`: a compressed model out of the course, for an inference engine (lab 07).

    workshop export --model gptq-w4 --format onnx --out model.onnx        # a packed model from quantize --out
    workshop export --method rtn --bits 4 --group-size 64 --symmetric --format onnx --out int4.onnx

The ONNX file holds explicit quantization (DequantizeLinear on packed codes; QuantizeLinear ->
DequantizeLinear on FP8 activations), in the form TensorRT's parser takes. After writing, the
command runs the file in onnxruntime on a window of the first evaluation text and reports the
largest difference from the PyTorch model's logits, the Q/DQ node counts and the sizes.
"""
from . import Output, add_data_options, protocol_from
from ..errors import WorkshopError

HELP = "Export a compressed model for an inference engine: ONNX with explicit quantization (TensorRT's form)."
FORMATS = ("onnx",)


def add_arguments(p) -> None:
    from ..quant.presets import METHODS
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx: QuantizeLinear/DequantizeLinear, opset 21")
    p.add_argument("--out", required=True, help="the file to write (e.g. model.onnx; written aside, then renamed)")
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
    from ..export.onnx import OPSET, check_exportable, export_onnx, node_counts, onnxruntime_logits
    from ..models import load_model
    from ..quant.presets import method_and_config
    from ..quant.qlinear import pack_quantized
    out = Path(args.out).expanduser()
    if out.is_dir() or not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise WorkshopError(f"--out {out} cannot be written: " + ("it is a folder." if out.is_dir() else
                            f"the folder {out.parent} does not exist or is not writable."),
                            "Give a file path in a writable folder, e.g. --out model.onnx.")
    if args.opset < OPSET:
        raise WorkshopError(f"--opset {args.opset} has no blocked DequantizeLinear or INT4 type.",
                            f"Use --opset {OPSET} or later (TensorRT 10 parses it).")
    if args.method:
        if args.method.startswith("modelopt:"):
            raise WorkshopError("--method modelopt:... is exported through modelopt itself, not by this command.",
                                "Use one of our methods here (e.g. --method gptq --symmetric).")
        _, config = method_and_config(args.method, args.bits, args.group_size, symmetric=args.symmetric)  # fails early
        if args.method == "nf4" or (getattr(config, "bits", None) == 4 and not config.symmetric):
            raise WorkshopError(f"--method {args.method} makes " + ("NF4, which has no ONNX type and no TensorRT kernel."
                                if args.method == "nf4" else "INT4 with zero points; TensorRT takes zero point 0 only."),
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
    check_exportable(model, args.opset)   # what TensorRT cannot take is refused before anything is written
    path = export_onnx(model, out, opset=args.opset)
    window = eval_windows(token_ids(tokenizer, protocol.eval_data[0], "eval"), protocol.seqlen, 1)
    with torch.no_grad():
        reference = model(window).logits
    difference = float((onnxruntime_logits(path, window) - reference).abs().max())
    counts = node_counts(path)
    result = {"format": args.format, "out": str(path), "model": args.model, "method": args.method,
              "opset": args.opset, "file_bytes": path.stat().st_size, "stored_bytes": stored_bytes(model),
              "quantize_nodes": counts.get("QuantizeLinear", 0), "dequantize_nodes": counts.get("DequantizeLinear", 0),
              "max_abs_logit_difference": difference, "checked_on": f"{protocol.eval_data[0]}: 1 x {window.shape[1]} tokens"}
    text = "\n".join([
        f"wrote {path} ({result['file_bytes']:,} bytes; the packed float32 model stores {result['stored_bytes']:,})",
        f"QuantizeLinear {result['quantize_nodes']}, DequantizeLinear {result['dequantize_nodes']} (opset {args.opset})",
        f"onnxruntime vs PyTorch on {result['checked_on']}: largest logit difference {difference:.2e}"])
    return Output(result, text)
