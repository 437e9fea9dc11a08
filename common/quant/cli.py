"""`workshop quantize`: every PTQ method of lab 02 from the command line."""
import time
import warnings

import torch

from ..errors import WorkshopError

METHODS = ("rtn", "gptq", "awq", "smoothquant", "fp8", "nf4")
# Bits each method supports, and its default group size (None: per channel; 0 on the command line).
SUPPORTED_BITS = {"rtn": range(2, 9), "gptq": range(2, 9), "awq": range(2, 9), "smoothquant": (8,),
                  "fp8": (8,), "nf4": (4,)}
DEFAULT_BITS = {"rtn": 4, "gptq": 4, "awq": 4, "smoothquant": 8, "fp8": 8, "nf4": 4}
DEFAULT_GROUP = {"rtn": "auto", "gptq": "auto", "awq": "auto", "nf4": 64}  # auto: 128, or 64 if 128 does
# not divide every layer's input width (SmolLM2-135M's hidden size is 576 = 4.5 x 128)


def method_and_config(method: str, bits: int | None, group_size: int | None):
    """(quantize function, its config) for a --method string, or a WorkshopError saying what is wrong."""
    if method.startswith("modelopt:"):
        from .modelopt_ptq import CONFIGS
        name = method.split(":", 1)[1]
        if name not in CONFIGS:
            raise WorkshopError(f"--method {method}: {name!r} is not a modelopt configuration compared here.",
                                f"Use modelopt:<one of {', '.join(CONFIGS)}>.")
        if bits is not None or group_size is not None:
            raise WorkshopError(f"--method {method} fixes its own bits and block size.",
                                "Leave out --bits and --group-size with modelopt configurations.")
        return "modelopt", name
    if method not in METHODS:
        raise WorkshopError(f"Unknown method {method!r}.",
                            f"Use one of {', '.join(METHODS)}, or modelopt:<CONFIG_NAME>.")
    bits = DEFAULT_BITS[method] if bits is None else bits
    if bits not in SUPPORTED_BITS[method]:
        raise WorkshopError(f"--method {method} does not support {bits} bits.",
                            f"Use --bits {' or '.join(map(str, SUPPORTED_BITS[method]))[:40]} with {method}.")
    if group_size is not None and method not in DEFAULT_GROUP:
        raise WorkshopError(f"--method {method} quantizes per channel; --group-size does not apply.",
                            "Leave out --group-size.")
    if group_size is not None and group_size < 0:
        raise WorkshopError(f"--group-size {group_size} is negative.", "Give 0 (per channel) or a positive size.")
    group = DEFAULT_GROUP.get(method) if group_size is None else (group_size or None)
    if method == "rtn":
        from .rtn import RTNConfig, quantize_rtn
        return quantize_rtn, RTNConfig(bits=bits, group_size=group)
    if method == "gptq":
        from .gptq import GPTQConfig, quantize_gptq
        return quantize_gptq, GPTQConfig(bits=bits, group_size=group)
    if method == "awq":
        from .awq import AWQConfig, quantize_awq
        return quantize_awq, AWQConfig(bits=bits, group_size=group)
    if method == "smoothquant":
        from .smoothquant import SmoothQuantConfig, quantize_smoothquant
        return quantize_smoothquant, SmoothQuantConfig()
    if method == "fp8":
        from .fp8 import FP8Config, quantize_fp8
        return quantize_fp8, FP8Config()
    if group is None:
        raise WorkshopError("NF4 quantizes blocks; --group-size 0 (per channel) does not apply.",
                            "Give a block size such as 64.")
    from .nf4 import NF4Config, quantize_nf4
    return quantize_nf4, NF4Config(block_size=group)


def input_widths(model) -> list:
    from ..calibration import decoder_layers, linear_layers
    return sorted({lin.in_features for layer in decoder_layers(model) for lin in linear_layers(layer).values()})


def fit_group_size(model, config) -> None:
    """Resolve an "auto" group size for `model`, and check that the group size divides every input width."""
    from .nf4 import NF4Config
    widths = input_widths(model)
    if getattr(config, "group_size", None) == "auto":
        config.group_size = next((g for g in (128, 64, 32) if not any(w % g for w in widths)), None)
    # NF4's blocks play the part of groups (GPTQ's block_size is something else: columns per update)
    group = config.block_size if isinstance(config, NF4Config) else getattr(config, "group_size", None)
    if group and any(w % group for w in widths):
        raise WorkshopError(f"--group-size {group} does not divide the input widths of this model's "
                            f"linear layers ({', '.join(map(str, widths))}).",
                            "Use a size that divides all of them (64 or 128 for most models), or 0 for per channel.")


def lab02_table(mode: str) -> list:
    """The rows of lab 02's table, in its order: (name, quantize function, config, weight bits).
    The lab calls each of these itself; tests/test_ptq.py checks that both say the same."""
    from .awq import AWQConfig, quantize_awq
    from .fp8 import FP8Config, quantize_fp8
    from .gptq import GPTQConfig, quantize_gptq
    from .nf4 import NF4Config, quantize_nf4
    from .rtn import RTNConfig, quantize_rtn
    from .smoothquant import SmoothQuantConfig, quantize_smoothquant
    rows = [("RTN W4 per channel", quantize_rtn, RTNConfig(bits=4, group_size=None), 4),
            ("RTN W4 g64", quantize_rtn, RTNConfig(bits=4, group_size=64), 4),
            ("GPTQ W4 per channel", quantize_gptq, GPTQConfig(bits=4, group_size=None), 4),
            ("RTN W3 g64", quantize_rtn, RTNConfig(bits=3, group_size=64), 3),
            ("GPTQ W3 g64", quantize_gptq, GPTQConfig(bits=3, group_size=64), 3),
            ("AWQ W4 g64", quantize_awq, AWQConfig(bits=4, group_size=64), 4),
            ("W8A8 INT8, no smoothing", quantize_smoothquant, SmoothQuantConfig(smooth=False), 8),
            ("SmoothQuant W8A8 INT8", quantize_smoothquant, SmoothQuantConfig(alpha=0.5), 8),
            ("FP8 E4M3 W8A8", quantize_fp8, FP8Config(), 8),
            ("NF4 W4 block 64", quantize_nf4, NF4Config(block_size=64), 4),
            ("RTN W2 g64", quantize_rtn, RTNConfig(bits=2, group_size=64), 2)]
    if mode == "full":  # a third GPTQ run costs minutes on a CPU
        rows.append(("GPTQ W2 g64", quantize_gptq, GPTQConfig(bits=2, group_size=64), 2))
    return rows


def lab02_modelopt_configs(mode: str) -> list:
    """modelopt's configurations in lab 02: all that run here in full mode; the two 8-bit ones in quick
    mode (its AWQ search is far too slow on a CPU)."""
    from .modelopt_ptq import modelopt_configs
    return modelopt_configs() if mode == "full" else ["FP8_DEFAULT_CFG", "INT8_SMOOTHQUANT_CFG"]


def cmd_quantize(args) -> None:
    if args.table:
        return quantize_table(args)
    if not args.method:
        raise WorkshopError("Nothing to do: no --method and no --table.",
                            "Give --method (e.g. --method gptq), or --table lab02 for lab 02's whole table.")
    from ..budgets import get_budget
    from ..data import calibration_batch
    from ..eval import perplexity
    from ..models import load_model, save_pretrained_atomic
    from .qlinear import pack_quantized
    from .storage import true_bytes
    quantize, config = method_and_config(args.method, args.bits, args.group_size)
    budget = get_budget()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    if quantize != "modelopt":
        fit_group_size(model, config)
    calib = calibration_batch(tokenizer, budget.calib_samples, budget.calib_seqlen)
    result = {"method": args.method, "config": repr(config), "model": args.model, "mode": budget.mode,
              "calibration": f"{calib.shape[0]}x{calib.shape[1]} tokens of embedded:calib"}
    evaluate = lambda: perplexity(model, tokenizer, "embedded", seqlen=budget.eval_seqlen,
                                  max_windows=budget.eval_max_windows)
    if args.eval:
        before = evaluate()
        result |= {"ppl_before": before.ppl, "protocol": before.protocol()}
    result["bytes_before"] = true_bytes(model)
    start = time.perf_counter()
    if quantize == "modelopt":
        from .modelopt_ptq import quantize_modelopt
        model, seconds = quantize_modelopt(model, config, calib)
    else:
        model = quantize(model, config, calib)
        seconds = time.perf_counter() - start
    result |= {"seconds": seconds, "bytes_after": true_bytes(model)}
    if args.eval:
        result["ppl_after"] = evaluate().ppl
    lines = [f"{args.method}: {result['config']}", f"quantized in {seconds:.1f} s on {result['calibration']}",
             f"bytes (quantized weights counted packed): {result['bytes_before']:,} -> {result['bytes_after']:,} "
             f"({result['bytes_before'] / result['bytes_after']:.2f}x smaller)"]
    if args.eval:
        lines.append(f"PPL {result['ppl_before']:.3f} -> {result['ppl_after']:.3f}  [{result['protocol']}]")
    if args.out:
        if quantize == "modelopt":
            note = "modelopt's fake-quantized weights, dequantized; export them with modelopt for real storage"
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                model = pack_quantized(model)
            note = "; ".join(str(w.message) for w in caught) or "packed low-bit layers; load it with load_model"
        result["out"] = str(save_pretrained_atomic(model, tokenizer, args.out))
        result["saved"] = note
        lines.append(f"saved to {result['out']} ({note})")
    from ..cli import _print
    _print(result, args.json, "\n".join(lines))


def quantize_table(args) -> None:
    """Every row of lab 02's table (ours, then modelopt's): `workshop quantize --table lab02 [--json]`."""
    from ..budgets import get_budget
    from ..tables import run_lab_table
    from .modelopt_ptq import CONFIGS, quantize_modelopt
    from .storage import true_bytes
    if args.method or args.bits is not None or args.group_size is not None or args.out:
        raise WorkshopError("--table runs a fixed list of methods; it takes no --method, --bits, --group-size "
                            "or --out.", "Leave those out, or quantize one method without --table.")
    mode = get_budget().mode

    def ours(quantize, config):
        def method(model, calib):
            fit_group_size(model, config)
            return quantize(model, config, calib, progress=False), None
        return method

    bits = {name: b for name, _, _, b in lab02_table(mode)} | {f"modelopt {n}": CONFIGS[n][0] for n in CONFIGS}
    jobs = [(name, ours(quantize, config)) for name, quantize, config, _ in lab02_table(mode)]
    jobs += [(f"modelopt {name}", lambda model, calib, name=name: quantize_modelopt(model, name, calib, progress=False))
             for name in lab02_modelopt_configs(mode)]
    columns = [("bits", "bits", 4, "d", lambda name, m: bits.get(name, 16 if m.dtype == torch.bfloat16 else 32)),
               ("bytes", "MB", 8, ".1f", lambda name, m: true_bytes(m) / 1e6)]
    run_lab_table(args, "lab02", jobs, columns, baseline_name="baseline")


def add_commands(command) -> None:
    p = command("quantize", cmd_quantize, "Post-training quantization: RTN, GPTQ, AWQ, SmoothQuant, FP8, NF4, "
                "or a modelopt configuration; optionally evaluate and save packed; or lab 02's whole table.")
    p.add_argument("--method", help=f"{' | '.join(METHODS)} | modelopt:<CONFIG_NAME>")
    p.add_argument("--bits", type=int, help="weight bits (default: 4; smoothquant and fp8: 8)")
    p.add_argument("--group-size", type=int, help="inputs per scale (default: 128, or 64 where 128 does not divide the "
                   "layers; nf4: 64; 0: per channel)")
    p.add_argument("--eval", action="store_true", help="perplexity before and after, with the protocol")
    p.add_argument("--out", help="save the quantized model here, packed (INT4/INT8/FP8/NF4 layers; written atomically)")
    p.add_argument("--table", choices=["lab02"], help="run every method of lab 02 (ours and modelopt's) with the "
                   "lab's calibration and evaluation, and print its table")
