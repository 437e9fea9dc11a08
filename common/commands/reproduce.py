"""`workshop reproduce`: execute every solution notebook headless and write reports/ (`make reproduce`)."""
from . import Output

HELP = "Execute every solution notebook headless and write reports/."


def add_arguments(p) -> None:
    p.add_argument("--labs", help="comma-separated lab numbers, e.g. 00,01 (default: all)")


def run(args) -> Output:
    from ..paths import reports_dir
    from ..reproduce import reproduce
    status = reproduce(labs=args.labs.split(",") if args.labs else None)
    text = "\n".join(f"{k}: {v}" for k, v in status.items()) + f"\nreports written to {reports_dir()}"
    return Output(status, text, exit_code=0 if all(v.startswith("ok") for v in status.values()) else 1)
