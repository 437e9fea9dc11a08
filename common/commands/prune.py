"""`workshop prune`: every pruning method of the course behind one command, or lab 03's main table."""
import time
from pathlib import Path

from . import Output, add_data_options, perplexity_dict, perplexity_lines, protocol_from
from ..errors import WorkshopError
from ..outputs import check_new_output, reported_write_errors

HELP = ("Prune a model (unstructured, N:M, width, depth, low rank, or modelopt 2:4), "
        "or run lab 03's main table.")


def add_arguments(p) -> None:
    from ..prune.presets import METHODS
    p.add_argument("--method", help=" | ".join(METHODS))
    p.add_argument("--sparsity", type=float, help="fraction removed (weights, MLP channels, layers or parameters; "
                   "default 0.5)")
    p.add_argument("--pattern", help="N:M semi-structured sparsity, e.g. 2:4 (magnitude, wanda, sparsegpt)")
    p.add_argument("--heads-fraction", type=float, default=0.0, help="width: fraction of attention heads removed")
    p.add_argument("--importance", default="activation", help="width: activation (default) | magnitude | study | "
                   "taylor (|gradient x weight| of the model's own loss on the calibration text)")
    p.add_argument("--allocation", default="uniform", help="width: MLP channels per layer, uniform (default: the "
                   "same in every layer) | adaptive (importance taylor: the best-scored channels across layers, "
                   "same total)")
    p.add_argument("--true-sequential", action="store_true", help="sparsegpt: prune each decoder layer's linears "
                   "group by group (q/k/v, o, gate/up, down), each on the inputs the groups before it, already "
                   "pruned, produce (the reference code's --true-sequential)")
    p.add_argument("--eval", action="store_true", help="perplexity before and after on each evaluation text")
    p.add_argument("--out", help="write the pruned checkpoint here (atomically)")
    p.add_argument("--table", choices=["lab03"], help="run lab 03's main comparison (ours and modelopt's, "
                   "50%% and 2:4) with the lab's calibration and evaluation, and print its table")
    add_data_options(p)


def run(args) -> Output:
    from ..prune.masks import check_sparsity
    from ..prune.presets import build_pruner
    if args.sparsity is not None:
        check_sparsity(args.sparsity)
    if args.table:
        return table(args)
    if not args.method:
        raise WorkshopError("Nothing to do: no --method and no --table.",
                            "Give --method (e.g. --method wanda), or --table lab03 for lab 03's main table.")
    from ..budgets import get_budget
    from ..sizes import parameter_breakdown, stored_bytes
    from ..models import load_model, save_pretrained_atomic
    from ..prune.masks import sparsity_of
    protocol = protocol_from(args)
    if args.out and args.method == "svd":
        raise WorkshopError("An SVD-factorized model is not a standard transformers architecture, so "
                            "--out cannot write a checkpoint from_pretrained would load.",
                            "Use --eval to measure it, or a method that keeps the architecture (width, depth, wanda...).")
    if args.out:
        check_new_output(args.out, example="pruned")
    options = (args.sparsity, args.pattern, args.heads_fraction, args.importance, args.true_sequential, args.allocation)
    build_pruner(args.method, 1, *options)  # fail fast
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    function, config = build_pruner(args.method, model.config.num_hidden_layers, *options)
    calib = protocol.calibration(tokenizer, model=model) if config.needs_calibration else None
    result = {"method": args.method, "config": dict(vars(config)), "mode": get_budget().mode,
              "calibration": protocol.calibration_label() if calib is not None else None,
              "parameters_before": parameter_breakdown(model)["total"], "stored_bytes_before": stored_bytes(model)}
    lines = []
    if args.eval:
        before = protocol.evaluate(model, tokenizer)
        result["ppl_before"] = perplexity_dict(before)
        lines += perplexity_lines(before, "PPL before")
    start = time.perf_counter()
    model = function(model, config, calib)
    result["seconds"] = time.perf_counter() - start
    result |= {"parameters_after": parameter_breakdown(model)["total"], "stored_bytes_after": stored_bytes(model),
               "decoder_weight_sparsity": sparsity_of(model), "config_after": {
                   k: getattr(model.config, k) for k in ("num_hidden_layers", "intermediate_size",
                                                         "num_attention_heads", "num_key_value_heads")}}
    lines.insert(0, f"{args.method} {config} in {result['seconds']:.1f} s: parameters "
                    f"{result['parameters_before']:,} -> {result['parameters_after']:,}, decoder weights "
                    f"{result['decoder_weight_sparsity']:.1%} zeros, stored bytes {result['stored_bytes_after']:,}")
    if getattr(config, "allocation", "uniform") == "adaptive":
        from ..prune.width import mlp_widths
        result["mlp_widths"] = mlp_widths(model)
        lines.append(f"MLP channels per layer: {' '.join(map(str, result['mlp_widths']))} (mean "
                     f"{sum(result['mlp_widths']) / len(result['mlp_widths']):g})")
    if args.eval:
        after = protocol.evaluate(model, tokenizer)
        result["ppl_after"] = perplexity_dict(after)
        lines += perplexity_lines(after, "PPL after ")
    if args.out:
        with reported_write_errors(args.out):
            result["out"] = str(save_pretrained_atomic(model, tokenizer, args.out))
        lines.append(f"saved to {result['out']}")
    return Output(result, "\n".join(lines))


def table(args) -> Output:
    """Every row of lab 03's main table: `workshop prune --table lab03 [--json]`."""
    from ..budgets import get_budget
    from ..models import load_model
    from ..prune.masks import sparsity_of
    from ..prune.presets import lab03_table
    from ..tables import run_lab_table, table_text
    given = [f"--{name.replace('_', '-')}" for name in ("method", "sparsity", "pattern", "out") if getattr(args, name)
             is not None] + (["--true-sequential"] if args.true_sequential else [])
    if given:
        raise WorkshopError(f"--table runs lab 03's fixed list of methods; it takes no {', '.join(given)}.",
                            "Leave those out, or prune with one --method without --table.")
    protocol = protocol_from(args, sweep=True)
    jobs = [(name, lambda model, calib, f=function, c=config: (f(model, c, calib, progress=False), None))
            for name, function, config in lab03_table()]
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    result = run_lab_table(model, tokenizer, protocol, "lab03", jobs,
                           [("zeros", "zeros", 6, ".1%", lambda name, m: sparsity_of(m))],
                           baseline_name="dense", note="; zeros among the decoder layers' weights")
    return Output(result | {"mode": get_budget().mode}, table_text(result))
