"""`workshop prune`: every pruning method of the course behind one command.

--sparsity S is the fraction removed, for every method: of the decoder weights (magnitude, wanda,
sparsegpt), of the MLP channels (width; --heads-fraction for attention heads), of the decoder layers
(depth), of the targeted layers' parameters (svd). --pattern N:M asks for semi-structured sparsity
(magnitude, wanda, sparsegpt; modelopt is always 2:4). --table lab03 runs lab 03's main comparison.
"""
import time
from pathlib import Path

from ..errors import WorkshopError

METHODS = ("magnitude", "wanda", "sparsegpt", "width", "depth", "svd", "modelopt:sparse_magnitude",
           "modelopt:sparsegpt")
NEEDS_CALIBRATION = ("wanda", "sparsegpt", "width", "depth", "svd", "modelopt:sparsegpt")


def build_pruner(method: str, args, num_layers: int):
    """(function, config) for a method name and the command's arguments."""
    from .depth import DepthPruneConfig, prune_depth
    from .lowrank import LowRankConfig, prune_lowrank
    from .magnitude import MagnitudeConfig, prune_magnitude
    from .modelopt_sparsity import ModeloptSparsityConfig, prune_modelopt
    from .sparsegpt import SparseGPTConfig, prune_sparsegpt
    from .wanda import WandaConfig, prune_wanda
    from .width import WidthPruneConfig, prune_width
    if method not in METHODS:
        raise WorkshopError(f"Unknown pruning method {method!r}.", f"Use one of {', '.join(METHODS)}.")
    if args.pattern and method not in ("magnitude", "wanda", "sparsegpt"):
        raise WorkshopError(f"--pattern applies to magnitude, wanda and sparsegpt, not {method}.",
                            "Leave --pattern out (modelopt is always 2:4), or pick one of those methods.")
    sparsity = 0.5 if args.sparsity is None else args.sparsity
    if not 0 <= sparsity < 1:
        raise WorkshopError(f"--sparsity {sparsity} is outside [0, 1).", "Give the fraction removed, e.g. 0.5.")
    if method.startswith("modelopt:"):
        return prune_modelopt, ModeloptSparsityConfig(mode=method.split(":", 1)[1])
    if method in ("magnitude", "wanda", "sparsegpt"):
        function, config_type = {"magnitude": (prune_magnitude, MagnitudeConfig), "wanda": (prune_wanda, WandaConfig),
                                 "sparsegpt": (prune_sparsegpt, SparseGPTConfig)}[method]
        return function, config_type(sparsity=sparsity, pattern=args.pattern)
    if method == "width":
        return prune_width, WidthPruneConfig(mlp_fraction=sparsity, heads_fraction=args.heads_fraction,
                                             importance=args.importance)
    if method == "depth":
        return prune_depth, DepthPruneConfig(layers_removed=int(round(sparsity * num_layers)))
    if sparsity == 0:
        raise WorkshopError("--sparsity 0 with svd keeps every parameter: nothing to factorize.",
                            "Give the fraction of parameters removed, e.g. 0.3.")
    return prune_lowrank, LowRankConfig(param_fraction=1 - sparsity)


def lab03_table() -> list:
    """The rows of lab 03's main comparison, in its order: (name, prune function, config).
    The lab calls each of these itself; tests/test_prune.py checks that both say the same."""
    from .magnitude import MagnitudeConfig, prune_magnitude
    from .modelopt_sparsity import ModeloptSparsityConfig, prune_modelopt
    from .sparsegpt import SparseGPTConfig, prune_sparsegpt
    from .wanda import WandaConfig, prune_wanda
    return [("magnitude 50%", prune_magnitude, MagnitudeConfig(sparsity=0.5)),
            ("Wanda 50%", prune_wanda, WandaConfig(sparsity=0.5)),
            ("SparseGPT 50%", prune_sparsegpt, SparseGPTConfig(sparsity=0.5)),
            ("magnitude 2:4", prune_magnitude, MagnitudeConfig(pattern="2:4")),
            ("Wanda 2:4", prune_wanda, WandaConfig(pattern="2:4")),
            ("SparseGPT 2:4", prune_sparsegpt, SparseGPTConfig(pattern="2:4")),
            ("modelopt sparse_magnitude 2:4", prune_modelopt, ModeloptSparsityConfig(mode="sparse_magnitude")),
            ("modelopt sparsegpt 2:4", prune_modelopt, ModeloptSparsityConfig(mode="sparsegpt"))]


def prune_table(args) -> None:
    """Every row of lab 03's main table: `workshop prune --table lab03 [--json]`."""
    from ..tables import run_lab_table
    from .masks import sparsity_of
    given = [f"--{name.replace('_', '-')}" for name in ("method", "sparsity", "pattern", "out", "seqlen", "max_windows")
             if getattr(args, name) is not None]
    if given:
        raise WorkshopError(f"--table runs lab 03's fixed list of methods with the lab's evaluation; it takes no "
                            f"{', '.join(given)}.", "Leave those out, or prune with one --method without --table.")
    jobs = [(name, lambda model, calib, f=function, c=config: (f(model, c, calib, progress=False), None))
            for name, function, config in lab03_table()]
    run_lab_table(args, "lab03", jobs, [("zeros", "zeros", 6, ".1%", lambda name, m: sparsity_of(m))],
                  baseline_name="dense", note="; zeros among the decoder layers' weights")


def cmd_prune(args) -> None:
    if args.table:
        return prune_table(args)
    if not args.method:
        raise WorkshopError("Nothing to do: no --method and no --table.",
                            "Give --method (e.g. --method wanda), or --table lab03 for lab 03's main table.")
    from ..budgets import get_budget
    from ..data import calibration_batch
    from ..eval import parameter_breakdown, perplexity, stored_bytes
    from ..models import load_model, save_pretrained_atomic
    from .masks import sparsity_of
    budget = get_budget()
    if args.out and args.method == "svd":
        raise WorkshopError("An SVD-factorized model is not a standard transformers architecture, so "
                            "--out cannot write a checkpoint from_pretrained would load.",
                            "Use --eval to measure it, or a method that keeps the architecture (width, depth, wanda...).")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise WorkshopError(f"--out {args.out} exists and is not a directory.", "Give a directory path.")
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    function, config = build_pruner(args.method, args, model.config.num_hidden_layers)
    calib = (calibration_batch(tokenizer, budget.calib_samples, budget.calib_seqlen)
             if args.method in NEEDS_CALIBRATION else None)
    seqlen = args.seqlen or budget.eval_seqlen
    max_windows = args.max_windows if args.max_windows is not None else budget.eval_max_windows
    result = {"method": args.method, "config": dict(vars(config)), "mode": budget.mode,
              "parameters_before": parameter_breakdown(model)["total"], "stored_bytes_before": stored_bytes(model)}
    lines = []
    if args.eval:
        before = perplexity(model, tokenizer, seqlen=seqlen, max_windows=max_windows)
        result["ppl_before"] = before.ppl
        lines.append(f"before: {before}")
    start = time.perf_counter()
    model = function(model, config, calib)
    result["seconds"] = time.perf_counter() - start
    result |= {"parameters_after": parameter_breakdown(model)["total"], "stored_bytes_after": stored_bytes(model),
               "decoder_weight_sparsity": sparsity_of(model), "config_after": {
                   k: getattr(model.config, k) for k in ("num_hidden_layers", "intermediate_size",
                                                         "num_attention_heads", "num_key_value_heads")}}
    lines.append(f"{args.method} {config} in {result['seconds']:.1f} s: parameters "
                 f"{result['parameters_before']:,} -> {result['parameters_after']:,}, decoder weights "
                 f"{result['decoder_weight_sparsity']:.1%} zeros, stored bytes {result['stored_bytes_after']:,}")
    if args.eval:
        after = perplexity(model, tokenizer, seqlen=seqlen, max_windows=max_windows)
        result["ppl_after"] = after.ppl
        result["protocol"] = after.protocol()
        lines.append(f"after:  {after}")
    if args.out:
        save_pretrained_atomic(model, tokenizer, args.out)
        result["out"] = str(Path(args.out).resolve())
        lines.append(f"saved to {result['out']}")
    from ..cli import _print
    _print(result, args.json, "\n".join(lines))


def add_commands(command) -> None:
    p = command("prune", cmd_prune, "Prune a model (unstructured, N:M, width, depth, low rank, or modelopt 2:4), "
                "or run lab 03's main table.")
    p.add_argument("--method", help=" | ".join(METHODS))
    p.add_argument("--sparsity", type=float, help="fraction removed (weights, MLP channels, layers or parameters; default 0.5)")
    p.add_argument("--pattern", help="N:M semi-structured sparsity, e.g. 2:4 (magnitude, wanda, sparsegpt)")
    p.add_argument("--heads-fraction", type=float, default=0.0, help="width: fraction of attention heads removed")
    p.add_argument("--importance", default="activation", help="width: activation (default) | magnitude")
    p.add_argument("--eval", action="store_true", help="perplexity before and after (embedded evaluation text)")
    p.add_argument("--seqlen", type=int, help="evaluation window (default: the mode's budget)")
    p.add_argument("--max-windows", type=int, help="evaluation windows (default: the mode's budget)")
    p.add_argument("--out", help="write the pruned checkpoint here (atomically)")
    p.add_argument("--table", choices=["lab03"], help="run lab 03's main comparison (ours and modelopt's, "
                   "50%% and 2:4) with the lab's calibration and evaluation, and print its table")
