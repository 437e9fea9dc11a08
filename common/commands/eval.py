"""`workshop eval`: perplexity on each evaluation text with the course's protocol, and stored bytes."""
from . import Output, add_data_options, perplexity_dict, perplexity_lines, protocol_from

HELP = "Perplexity with the course's protocol on each evaluation text, and stored bytes."


def add_arguments(p) -> None:
    add_data_options(p, calibrate=False)
    p.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")


def run(args) -> Output:
    from ..budgets import get_budget
    from ..errors import WorkshopError
    from ..eval import perplexity
    from ..sizes import stored_bytes
    from ..models import load_model
    protocol = protocol_from(args)
    if args.batch_size < 1:
        raise WorkshopError(f"--batch-size {args.batch_size} is not a positive number.", "Give 1 or more.")
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    results = {name: perplexity(model, tokenizer, name, seqlen=protocol.seqlen, max_windows=protocol.max_windows,
                                batch_size=args.batch_size) for name in protocol.eval_data}
    out = {"model": args.model, "ppl": perplexity_dict(results), "stored_bytes": stored_bytes(model),
           "mode": get_budget().mode}
    return Output(out, "\n".join(perplexity_lines(results) + [f"stored bytes: {out['stored_bytes']:,}"]))
