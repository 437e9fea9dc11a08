"""`workshop pipeline`: prune, distill and quantize in a given order (lab 05), or all six orders."""
from . import Output, add_data_options
from ..errors import WorkshopError
from ..outputs import check_new_output, reported_write_errors

DATA_OPTIONS = ("calib_data", "calib_samples", "calib_seqlen", "eval_data", "seqlen", "max_windows", "train_data")
HELP = "Run a compression pipeline: --order P,KD,Q, a --recipe file, or --all-orders (lab 05's table)."


def add_arguments(p) -> None:
    p.add_argument("--order", help="the three steps in order, comma-separated: P (30%% MLP width pruning), KD "
                   "(distillation from the teacher), Q (NF4), e.g. P,KD,Q")
    p.add_argument("--recipe", help="a JSON or YAML list of steps, e.g. [{\"step\": \"P\", \"mlp\": 0.3}, "
                   "{\"step\": \"KD\", \"steps\": 100}, {\"step\": \"Q\", \"qat\": true}]; steps: P, KD "
                   "(engine: ours|modelopt), Q (NF4), INT4 (group_size, symmetric, qat), KV (fmt: int8|int4|...), "
                   "MQ (modelopt quantization, config), LoRA (QLoRA adapters on the packed codes of an earlier Q or "
                   "INT4, trained with KD's loss and budget: rank, alpha, steps, lr)")
    p.add_argument("--all-orders", action="store_true", help="all six orders of P, KD and Q (lab 05's main table)")
    p.add_argument("--qat", action="store_true", help="Q as quantization-aware training (NF4 forward, float weights "
                   "that keep training) instead of packed, frozen NF4")
    p.add_argument("--teacher", help="the teacher of the KD step (default: --model, uncompressed)")
    p.add_argument("--out", help="write the final model here (packed where it is quantized; with --order or --recipe; "
                   "checked before the model loads, written atomically)")
    p.add_argument("--layers", type=int, help="keep the first N decoder layers of the model and the teacher "
                   "(default: all of them; a cut model's perplexity means little)")
    add_data_options(p, train=True)


def run(args) -> Output:
    from ..budgets import get_budget
    from ..models import load_model, save_pretrained_atomic
    from ..prune.depth import keep_first_layers
    from ..pipeline import (ORDERS, LoRA, ModeloptQuantize, pipeline_protocol, pipeline_text, recipe_from_file,
                           recipe_from_order, run_pipeline)
    chosen = [flag for flag, value in (("--order", args.order), ("--recipe", args.recipe),
                                       ("--all-orders", args.all_orders)) if value]
    if len(chosen) != 1:
        raise WorkshopError(f"Give exactly one of --order, --recipe and --all-orders (got {', '.join(chosen) or 'none'}).",
                            "E.g. `workshop pipeline --order P,KD,Q`, or --all-orders for lab 05's table.")
    if args.all_orders and args.out:
        raise WorkshopError("--all-orders builds six models; --out writes one.", "Use --order ORDER --out DIR.")
    if args.qat and args.recipe:
        raise WorkshopError("--qat applies to --order and --all-orders.", "Write {\"step\": \"Q\", \"qat\": true} "
                            "in the recipe instead.")
    if args.layers is not None and args.layers < 1:
        raise WorkshopError(f"--layers {args.layers}: a model needs at least one decoder layer.",
                            "Give --layers 1 or more, or leave it out to keep every layer.")
    budget = get_budget()
    # lab 05's budget: shorter evaluations (and calibration sequences) after every step; options win
    protocol = pipeline_protocol(budget, **{key: getattr(args, key, None) for key in DATA_OPTIONS})
    recipes = ([recipe_from_order(order, args.qat) for order in ORDERS] if args.all_orders else
               [recipe_from_order(args.order, args.qat)] if args.order else [recipe_from_file(args.recipe)])
    if args.out and any(isinstance(step, ModeloptQuantize) for step in recipes[0]):
        raise WorkshopError("--out writes our packed layers; a modelopt-quantized model is written by modelopt's own "
                            "export.", "Leave out --out, or quantize with Q (NF4) or INT4 in the recipe.")
    if args.out and any(isinstance(step, LoRA) for step in recipes[0]):
        raise WorkshopError("--out writes packed layers, and a LoRA step's adapters stay beside the codes (merging "
                            "them would round them away).", "Leave out --out with a LoRA step.")
    if args.out:   # refused before minutes of pruning and training, not after them
        check_new_output(args.out, example="pipeline-model")
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    if args.layers is not None and args.layers > model.config.num_hidden_layers:
        raise WorkshopError(f"--layers {args.layers}: {args.model} has only {model.config.num_hidden_layers} decoder layers.",
                            f"Give --layers between 1 and {model.config.num_hidden_layers}.")
    model = keep_first_layers(model, args.layers)
    needs_teacher = any(step.needs_teacher for recipe in recipes for step in recipe)
    teacher = keep_first_layers(load_model(args.teacher or args.model, dtype=args.dtype, device=args.device)[0],
                                args.layers) if needs_teacher else None
    results, final, prefixes = [], None, {}
    for recipe in recipes:
        final, result = run_pipeline(model, tokenizer, recipe, protocol, teacher=teacher,
                                     start=results[0].records[0] if results else None, prefixes=prefixes)
        results.append(result)
    out = {"mode": budget.mode, "model": args.model, "layers": model.config.num_hidden_layers, "teacher": (args.teacher or args.model) if needs_teacher else None,
           "protocol": protocol.to_dict(), "results": [r.to_dict() for r in results]}
    text = pipeline_text(results) + f"\n[{protocol.describe()}]"
    if args.out:
        with reported_write_errors(args.out):   # written aside and renamed: nothing half-written is left
            out["out"] = str(save_pretrained_atomic(final, tokenizer, args.out))
        text += f"\nsaved to {out['out']}"
    return Output(out, text)
