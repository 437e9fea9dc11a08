"""`workshop export`: a compressed model out of the course, for an inference engine (lab 07).

    workshop export --model DIR --format onnx --out model.onnx              # a packed model from quantize --out
    workshop export --method rtn --bits 4 --group-size 64 --symmetric --format onnx --out int4.onnx
    workshop export --method gptq --bits 4 --group-size 64 --format compressed-tensors --out gptq-ct
    workshop export --method smoothquant --static-activations --format onnx --out w8a8.onnx
    workshop export --method modelopt:FP8_DEFAULT_CFG --format hf --out fp8-hf     # modelopt's unified checkpoint
    workshop export --method modelopt:INT8_SMOOTHQUANT_CFG --format onnx --out mo-int8.onnx

onnx: explicit quantization (DequantizeLinear on packed codes; QuantizeLinear -> DequantizeLinear on
static activations), in the form TensorRT's parser takes; ours or modelopt's quantization; checked by
running the file in onnxruntime.
hf: modelopt's unified checkpoint (export_hf_checkpoint), read back and compared with modelopt's model.
compressed-tensors: vLLM's checkpoint format (a Hugging Face folder); checked by reading it back
through the compressed-tensors library, weight for weight and logit for logit. Every check uses a
window of the first evaluation text.
"""
from . import Output, add_data_options, protocol_from
from ..errors import WorkshopError
from ..outputs import reported_write_errors

HELP = ("Export a compressed model for an inference engine: ONNX with explicit quantization (TensorRT's form), "
        "a compressed-tensors checkpoint (vLLM's) or modelopt's unified checkpoint.")
FORMATS = ("onnx", "compressed-tensors", "hf")


def add_arguments(p) -> None:
    from ..quant.presets import METHODS
    p.add_argument("--format", required=True, choices=FORMATS, help="onnx: QuantizeLinear/DequantizeLinear, opset 21; "
                   "compressed-tensors: a Hugging Face folder vLLM loads; hf: modelopt's unified checkpoint "
                   "(TensorRT-LLM, vLLM, SGLang; --method modelopt:... only)")
    p.add_argument("--out", required=True, help="onnx: the file to write (e.g. model.onnx); compressed-tensors, hf: a new "
                   "folder (all written aside, then renamed)")
    p.add_argument("--method", help=f"quantize --model first: {' | '.join(METHODS)} | modelopt:<CONFIG> (default: export "
                   "--model as it is, e.g. a directory written by quantize --out)")
    p.add_argument("--bits", type=int, help="weight bits of --method")
    p.add_argument("--group-size", type=int, help="inputs per scale of --method (0: per channel)")
    p.add_argument("--symmetric", action="store_true", help="--method rtn/gptq/awq: a grid without zero points "
                   "(TensorRT's INT4 takes only this)")
    p.add_argument("--static-activations", action="store_true", help="--method smoothquant: one calibrated INT8 scale "
                   "per activation tensor (TensorRT's explicit INT8; per-token scales have no ONNX form here)")
    p.add_argument("--opset", type=int, default=21, help="ONNX opset (21 or later: blocked DequantizeLinear, INT4)")
    add_data_options(p)


def run(args) -> Output:
    from pathlib import Path

    import torch

    from ..data import eval_windows, token_ids
    from ..sizes import stored_bytes
    from ..models import load_model
    from ..quant.presets import method_and_config
    from ..quant.packing import pack_quantized
    out = Path(args.out).expanduser()
    modelopt = bool(args.method and args.method.startswith("modelopt:"))
    check_request(args, out, modelopt)
    protocol = protocol_from(args)
    model, tokenizer = load_model(args.model, dtype="float32", device="cpu")   # the graph is exported in float32
    if args.method:
        quantize, config = method_and_config(args.method, args.bits, args.group_size, model=model,
                                             symmetric=args.symmetric, static_activations=args.static_activations)
        calib = protocol.calibration(tokenizer, model=model)
        model = quantize(model, config, calib, progress=False)
        model = model if modelopt else pack_quantized(model, progress=False)
    window = eval_windows(token_ids(tokenizer, protocol.eval_data[0], "eval"), protocol.seqlen, 1)
    result = {"format": args.format, "model": args.model, "method": args.method,
              "checked_on": f"{protocol.eval_data[0]}: 1 x {window.shape[1]} tokens"}
    if not modelopt:
        result["stored_bytes"] = stored_bytes(model)
    if args.format == "onnx":
        from ..export.modelopt_export import export_modelopt_onnx
        from ..export.onnx import export_onnx
        from ..export.onnx_check import (activation_code_check, code_check_text, logit_agreement, node_counts,
                                         onnxruntime_logits)
        # both refuse what TensorRT cannot take before anything is written
        with reported_write_errors(out):
            path = (export_modelopt_onnx if modelopt else export_onnx)(model, out, opset=args.opset)
        with torch.no_grad():
            reference = model(window).logits
        counts = node_counts(path)
        result |= {"out": str(path), "opset": args.opset, "file_bytes": path.stat().st_size,
                   "quantize_nodes": counts.get("QuantizeLinear", 0),
                   "dequantize_nodes": counts.get("DequantizeLinear", 0)} | \
            logit_agreement(reference, onnxruntime_logits(path, window), window)
        lines = [f"QuantizeLinear {result['quantize_nodes']}, DequantizeLinear {result['dequantize_nodes']} "
                 f"(opset {args.opset})", f"onnxruntime vs PyTorch on {result['checked_on']}: largest logit difference "
                 f"{result['max_abs_logit_difference']:.2e}, loss {result['loss_relative_difference']:.1e} apart "
                 f"(relative), same top token at {result['top1_agreement']:.1%} of positions"]
        if result["quantize_nodes"]:
            result |= activation_code_check(model, path, window)
            lines.append(code_check_text(result))
    elif args.format == "hf":
        from ..export.modelopt_export import check_modelopt_hf, export_modelopt_hf
        with reported_write_errors(out):
            path = export_modelopt_hf(model, tokenizer, out)
        result |= {"out": str(path), "file_bytes": sum(f.stat().st_size for f in path.iterdir())} | \
            check_modelopt_hf(path, model, window)
        lines = [f"{result['quant_algo']}: {result['layers']} quantized layers read back; stored weights vs modelopt's "
                 f"fake-quantized ones: largest difference {result['max_abs_weight_difference']:.2e} "
                 f"({result['weights_on_another_code']:,} of {result['weights']:,} on another code: ties rounded the "
                 "other way)", f"the exporter's re-smoothing moves the logits by {result['max_abs_logit_difference']:.2e} "
                 f"on {result['checked_on']}"]
    else:
        from ..export.compressed_tensors import check_round_trip, save_compressed_tensors, sparsity_summary
        with reported_write_errors(out):
            path = save_compressed_tensors(model, tokenizer, out)
        result |= {"out": str(path), "file_bytes": sum(f.stat().st_size for f in path.iterdir())} | \
            check_round_trip(model, path, window) | sparsity_summary(model)
        lines = [f"read back through compressed-tensors on {result['checked_on']}: largest weight difference "
                 f"{result['max_abs_weight_difference']:.2e}, largest logit difference {result['max_abs_logit_difference']:.2e}",
                 result["note"]]
    packed = f"; the packed float32 model stores {result['stored_bytes']:,}" if "stored_bytes" in result else ""
    return Output(result, "\n".join([f"wrote {path} ({result['file_bytes']:,} bytes{packed})"] + lines))


def check_request(args, out, modelopt: bool) -> None:
    """Every refusal that needs no model: a bad --out, an old opset, a method/format pair with no form.
    What a format cannot hold is the exporter's own list, asked about the layers --method will make."""
    from ..export.compressed_tensors import compressed_tensors_refusal
    from ..export.onnx import check_opset, tensorrt_refusal
    from ..outputs import check_new_output
    from ..quant.presets import method_and_config, packed_form
    onnx = args.format == "onnx"
    check_new_output(out, example="model.onnx" if onnx else "model-ct")
    if onnx:
        check_opset(args.opset)
    if args.format == "hf" and not modelopt:
        raise WorkshopError("--format hf is modelopt's unified checkpoint, written from a modelopt-quantized model.",
                            "Give --method modelopt:FP8_DEFAULT_CFG (or INT8_SMOOTHQUANT_CFG, INT4_BLOCKWISE_G64); for "
                            "our own methods use --format compressed-tensors.")
    if modelopt and args.format == "compressed-tensors":
        raise WorkshopError("compressed-tensors is written here from our packed layers, not from modelopt's quantizers.",
                            "Use --format hf for a modelopt configuration (vLLM loads that too).")
    if not args.method:
        if args.bits is not None or args.group_size is not None or args.symmetric or args.static_activations:
            raise WorkshopError("--bits, --group-size, --symmetric and --static-activations describe a --method, and "
                                "none was given.", "Add --method (e.g. --method rtn), or leave them out to export --model "
                                "as it is.")
        return
    _, config = method_and_config(args.method, args.bits, args.group_size, symmetric=args.symmetric,
                                  static_activations=args.static_activations)
    if modelopt:   # modelopt's exporters check its quantizers themselves
        return
    if getattr(config, "bits", None) == 8 and args.method in ("rtn", "gptq", "awq") and (
            config.group_size is not None or not config.symmetric):
        raise WorkshopError(f"--method {args.method} --bits 8 with {'groups' if config.group_size else 'zero points'} "
                            "has no packed INT8 form here: INT8 weights are stored per output channel, symmetric "
                            "(what TensorRT and vLLM's int-quantized take).",
                            f"Add --group-size 0 --symmetric (per channel, no zero points) to --method {args.method} "
                            "--bits 8.")
    fmt, symmetric, activations = packed_form(config)
    refusal = tensorrt_refusal(fmt, symmetric, activations) if onnx else compressed_tensors_refusal(fmt, activations)
    if refusal:
        raise WorkshopError(f"--method {args.method} ({args.format}): {refusal[0]}.", refusal[1])
