"""`workshop` (also `python -m common`): the course's command line.

Every command takes --json for machine-readable output on stdout (progress goes to stderr), exits 0
on success and 2 on bad input with one clear message. The commands live in `common/commands/`, one
module each; they return their result, and `main` is the one place that prints it.
"""
import argparse
import contextlib
import json
import os
import sys
import time

from .commands import (add_model_options, bench_kernels, distill, doctor, eval as eval_command, export, pipeline, prune,
                       quantize, reproduce, slides)
from .errors import WorkshopError

# (name, module, takes --model): the order of `workshop --help`
COMMANDS = [("doctor", doctor, False), ("eval", eval_command, True), ("quantize", quantize, True),
            ("prune", prune, True), ("distill", distill, True), ("pipeline", pipeline, True),
            ("export", export, True), ("bench-kernels", bench_kernels, False),
            ("reproduce", reproduce, False), ("slides", slides, False)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workshop", description="The Art of Compressing LLMs: labs' command line.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module, takes_model in COMMANDS:
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        if takes_model:
            add_model_options(p)
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    stdout = sys.stdout
    try:
        # With --json, stdout carries the result alone: what libraries print on the way (modelopt reports,
        # conversion notices) goes to stderr with the progress bars.
        with contextlib.redirect_stdout(sys.stderr if args.json else sys.stdout):
            output = args.run(args)
    except WorkshopError as e:
        if _is_rank0():
            print(f"error: {e}", file=sys.stderr)
        else:
            # torchrun stops every worker as soon as one exits with an error: had this rank left first,
            # rank 0 could be stopped before printing the message. Rank 0's exit ends this wait.
            time.sleep(RANK_EXIT_DELAY_S)
        return 2
    except KeyboardInterrupt:
        # A write in progress finishes its file before Python sees the interrupt; every output is written
        # aside and renamed into place, or removed.
        print("interrupted: nothing was left half-written (an output is written aside and renamed into place, "
              "or removed)", file=sys.stderr)
        return 130
    if _is_rank0():
        print(json.dumps(output.result, indent=2, default=str) if args.json else output.text, file=stdout)
    return output.exit_code


RANK_EXIT_DELAY_S = 20


def _is_rank0() -> bool:
    """Under torchrun every rank runs the command (the same checks fail on each): rank 0 alone prints,
    so that a result or an error shows once. torchrun sets RANK; a plain run has none."""
    return os.environ.get("RANK", "0") == "0"


if __name__ == "__main__":
    sys.exit(main())
