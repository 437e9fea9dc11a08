"""`workshop eval`: perplexity on each evaluation text with the course's protocol, last-word accuracy
on the prose texts, and stored bytes."""
from . import Output, add_data_options, perplexity_dict, perplexity_lines, protocol_from

HELP = ("Perplexity with the course's protocol on each evaluation text, last-word (cloze) accuracy on the prose "
        "texts, and stored bytes.")


def add_arguments(p) -> None:
    from ..cloze import CLOZE_TEXTS
    add_data_options(p, calibrate=False)
    p.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")
    p.add_argument("--cloze-data", action="append", help=f"last-word accuracy text, repeatable: "
                   f"{' | '.join(CLOZE_TEXTS)} (default: both)")
    p.add_argument("--cloze-items", type=int, help="last-word items per text (default: the mode's budget)")
    p.add_argument("--no-cloze", action="store_true", help="skip last-word accuracy (perplexity only)")


def cloze_plan(args) -> tuple:
    """(texts, items per text) of the last-word task (no text with --no-cloze), the items checked before any
    model loads."""
    from ..budgets import get_budget
    from ..cloze import CLOZE_TEXTS, first_items
    from ..errors import WorkshopError
    if args.no_cloze:
        if args.cloze_data or args.cloze_items is not None:
            raise WorkshopError("--no-cloze skips the last-word task, and --cloze-data or --cloze-items configure it.",
                                "Give --no-cloze alone, or leave it out.")
        return (), None
    texts = tuple(args.cloze_data or CLOZE_TEXTS)
    repeated = sorted({name for name in texts if texts.count(name) > 1})
    if repeated:
        raise WorkshopError(f"--cloze-data names {', '.join(repeated)} more than once.", "Name each text once.")
    n_items = args.cloze_items if args.cloze_items is not None else get_budget().cloze_items
    for name in texts:
        first_items(name, n_items)
    return texts, n_items


def run(args) -> Output:
    from ..budgets import get_budget
    from ..cloze import cloze_accuracies
    from ..errors import WorkshopError
    from ..eval import perplexity
    from ..sizes import stored_bytes
    from ..models import load_model
    protocol = protocol_from(args)
    if args.batch_size < 1:
        raise WorkshopError(f"--batch-size {args.batch_size} is not a positive number.", "Give 1 or more.")
    texts, n_items = cloze_plan(args)
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    results = {name: perplexity(model, tokenizer, name, seqlen=protocol.seqlen, max_windows=protocol.max_windows,
                                batch_size=args.batch_size) for name in protocol.eval_data}
    cloze = cloze_accuracies(model, tokenizer, texts, n_items=n_items) if texts else {}
    out = {"model": args.model, "ppl": perplexity_dict(results),
           "cloze": {name: r.to_dict() | {"protocol": r.protocol()} for name, r in cloze.items()},
           "stored_bytes": stored_bytes(model), "mode": get_budget().mode}
    cloze_lines = [f"last-word {name}: {r.accuracy:.1%} ({r.correct}/{r.items}; a constant guess "
                   f"{r.constant_guess:.1%})  [{r.protocol()}]" for name, r in cloze.items()]
    return Output(out, "\n".join(perplexity_lines(results) + cloze_lines + [f"stored bytes: {out['stored_bytes']:,}"]))
