"""`workshop quantize`: every PTQ method of lab 02 from the command line, or lab 02's whole table."""
import time
import warnings

from . import Output, add_data_options, perplexity_dict, perplexity_lines, protocol_from
from ..errors import WorkshopError
from ..outputs import check_new_output, reported_write_errors

HELP = ("Post-training quantization: RTN, GPTQ, AWQ, SmoothQuant, FP8, NF4, or a modelopt configuration; "
        "optionally with activations, a rotation first, or a quantized KV cache; evaluate and save packed; or lab "
        "02's whole table.")


def add_arguments(p) -> None:
    from ..quant.presets import METHODS
    p.add_argument("--method", help=f"{' | '.join(METHODS)} | modelopt:<CONFIG_NAME>")
    p.add_argument("--bits", type=int, help="weight bits (default: 4; smoothquant and fp8: 8)")
    p.add_argument("--group-size", type=int, help="inputs per scale (default: 128, or 64 where 128 does not divide the "
                   "layers; nf4: 64; 0: per channel)")
    p.add_argument("--symmetric", action="store_true", help="rtn/gptq/awq: a grid around zero without zero points "
                   "(TensorRT's INT4 takes only this; see workshop export)")
    p.add_argument("--true-sequential", action="store_true", help="gptq: quantize each decoder layer's linears "
                   "group by group (q/k/v, o, gate/up, down), each on the inputs the groups before it, already "
                   "quantized, produce (the reference code's --true-sequential)")
    p.add_argument("--static-activations", action="store_true", help="smoothquant: one calibrated INT8 scale per "
                   "activation tensor instead of one per token at run time (TensorRT's form; also smooths down_proj)")
    p.add_argument("--act-bits", type=int, help="rtn/gptq: also round every linear's input to integers of this many "
                   "bits, one scale per token, symmetric (W4A8: --bits 4 --act-bits 8; W4A4: --act-bits 4)")
    p.add_argument("--rotate", action="store_true", help="first rotate the residual stream and down_proj's input by "
                   "random orthogonal (Hadamard-based) matrices, the same function in float (QuaRot); with --kv-bits, "
                   "each head's keys and values too")
    p.add_argument("--kv-bits", type=int, help="evaluate with the KV cache rounded to 8, 4 or 2-bit integers (KIVI: "
                   "keys per channel, values per token); needs --eval; without --method the weights stay as they are")
    p.add_argument("--eval", action="store_true", help="perplexity before and after on each evaluation text")
    p.add_argument("--out", help="save the quantized model here, packed (INT4/INT8/FP8/NF4 layers; written atomically)")
    p.add_argument("--table", choices=["lab02"], help="run every method of lab 02 (ours and modelopt's) with the "
                   "lab's calibration and evaluation, and print its table")
    add_data_options(p)


def run(args) -> Output:
    if args.table:
        return table(args)
    if not args.method and args.kv_bits is None:
        raise WorkshopError("Nothing to do: no --method, no --kv-bits and no --table.",
                            "Give --method (e.g. --method gptq), --kv-bits 4 --eval (the KV cache alone), or --table "
                            "lab02 for lab 02's whole table.")
    from ..budgets import get_budget
    from ..models import load_model, save_pretrained_atomic
    from ..quant.kv_cache import quantized_kv_cache
    from ..quant.modelopt_ptq import quantize_modelopt
    from ..quant.presets import kv_config, method_and_config
    from ..quant.packing import pack_quantized
    from ..quant.rotation import RotationConfig, rotate
    from ..quant.storage import true_bytes
    protocol = protocol_from(args)
    check_run_time_options(args)
    if args.out:
        check_new_output(args.out, example=f"{args.method.replace(':', '-')}-model")
    options = dict(symmetric=args.symmetric, static_activations=args.static_activations,
                   true_sequential=args.true_sequential, act_bits=args.act_bits)
    kv = kv_config(args.kv_bits, args.rotate)
    rotation = RotationConfig() if args.rotate else None
    if args.method:
        method_and_config(args.method, args.bits, args.group_size, **options)  # fails before the model loads
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    quantize, config = (method_and_config(args.method, args.bits, args.group_size, model=model, **options) if args.method
                        else (None, None))
    calib = protocol.calibration(tokenizer, model=model) if config is not None and config.needs_calibration else None
    result = {"method": args.method, "config": repr(config), "rotation": repr(rotation), "kv_cache": repr(kv),
              "model": args.model, "mode": get_budget().mode,
              "calibration": protocol.calibration_label() if calib is not None else None}
    lines = []
    if args.eval:
        before = protocol.evaluate(model, tokenizer)
        result["ppl_before"] = perplexity_dict(before)
        lines += perplexity_lines(before, "PPL before")
    result["bytes_before"] = true_bytes(model)
    start = time.perf_counter()
    if rotation is not None:
        model = rotate(model, rotation)
    if quantize is not None:
        model = quantize(model, config, calib)
    seconds = time.perf_counter() - start
    result |= {"seconds": seconds, "bytes_after": true_bytes(model)}
    lines = ([f"rotated first: {result['rotation']}"] if rotation is not None else []) + \
            ([f"{args.method}: {result['config']}", f"quantized in {seconds:.1f} s " + (
                f"on {result['calibration']}" if calib is not None else
                "(no calibration: the weights alone decide the grid)")] if quantize is not None else []) + \
            ([f"KV cache during evaluation: {result['kv_cache']}"] if kv is not None else []) + \
            [f"bytes (quantized weights counted packed): {result['bytes_before']:,} -> {result['bytes_after']:,} "
             f"({result['bytes_before'] / result['bytes_after']:.2f}x smaller)"] + lines
    if args.eval:
        with quantized_kv_cache(model, kv):
            after = protocol.evaluate(model, tokenizer)
        result["ppl_after"] = perplexity_dict(after)
        lines += perplexity_lines(after, "PPL after ")
    if args.out:
        if quantize is quantize_modelopt:
            note = "modelopt's fake-quantized weights, dequantized; export them with modelopt for real storage"
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = pack_quantized(model)
            note = "; ".join(str(w.message) for w in caught) or "packed low-bit layers; load it with load_model"
        with reported_write_errors(args.out):
            result["out"] = str(save_pretrained_atomic(model, tokenizer, args.out))
        result["saved"] = note
        lines.append(f"saved to {result['out']} ({note})")
    return Output(result, "\n".join(lines))


def check_run_time_options(args) -> None:
    """--rotate, --act-bits and --kv-bits change what runs, not only the stored weights: refuse what a
    saved checkpoint could not carry, and a simulated cache that nothing evaluates."""
    run_time = [flag for flag, given in (("--rotate", args.rotate), ("--act-bits", args.act_bits is not None),
                                         ("--kv-bits", args.kv_bits is not None)) if given]
    if args.out and run_time:
        raise WorkshopError(f"{' and '.join(run_time)} change{'s' * (len(run_time) == 1)} what runs (hooks on the layers, "
                            "a rotation of down_proj's input, a simulated cache), and a saved checkpoint does not "
                            "carry that.",
                            f"Leave out --out to measure them with --eval, or leave out {' and '.join(run_time)} to save.")
    if args.kv_bits is not None and not args.eval:
        raise WorkshopError("--kv-bits simulates the KV cache while the model is evaluated, and nothing is evaluated.",
                            "Add --eval.")


def table(args) -> Output:
    """Every row of lab 02's table (ours, then modelopt's): `workshop quantize --table lab02 [--json]`."""
    import torch
    from ..budgets import get_budget
    from ..models import load_model
    from ..quant.modelopt_ptq import CONFIGS, ModeloptConfig, quantize_modelopt
    from ..quant.presets import lab02_modelopt_configs, lab02_table
    from ..quant.storage import true_bytes
    from ..tables import run_lab_table, table_text
    if (args.method or args.bits is not None or args.group_size is not None or args.out or args.true_sequential or
            args.act_bits is not None or args.rotate or args.kv_bits is not None):
        raise WorkshopError("--table runs a fixed list of methods; it takes no --method, --bits, --group-size, "
                            "--true-sequential, --act-bits, --rotate, --kv-bits or --out.",
                            "Leave those out, or quantize one method without --table.")
    protocol = protocol_from(args, sweep=True)
    mode = get_budget().mode
    bits = {name: b for name, _, _, b in lab02_table(mode)} | {f"modelopt {n}": CONFIGS[n][0] for n in CONFIGS}
    jobs = [(name, lambda model, calib, q=quantize, c=config: (q(model, c, calib, progress=False), None))
            for name, quantize, config, _ in lab02_table(mode)]
    jobs += [(f"modelopt {name}", lambda model, calib, name=name: (quantize_modelopt(model, ModeloptConfig(name), calib, progress=False),
                                                                    None))
             for name in lab02_modelopt_configs(mode)]
    columns = [("bits", "bits", 4, "d", lambda name, m: bits.get(name, 16 if m.dtype == torch.bfloat16 else 32)),
               ("bytes", "MB", 8, ".1f", lambda name, m: true_bytes(m) / 1e6)]
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    result = run_lab_table(model, tokenizer, protocol, "lab02", jobs, columns, baseline_name="baseline")
    return Output(result | {"mode": mode}, table_text(result))
