"""The command line's commands, one module each: `add_arguments(parser)` and `run(args) -> Output`.

Commands compute and return; `common.cli.main` alone prints (text, or JSON with --json). Library
code never imports from here.
"""
from typing import NamedTuple


class Output(NamedTuple):
    result: dict        # what --json prints
    text: str           # what is printed otherwise
    exit_code: int = 0


def add_model_options(p) -> None:
    p.add_argument("--model", default="embedded", help="embedded (default) | a Hub id | a local directory | tiny-random")
    p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | bfloat16 | float16 | float32")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")


def add_data_options(p, calibrate: bool = True, train: bool = False) -> None:
    """The options every command that calibrates, trains or evaluates shares (defaults: the mode's budget)."""
    from ..data import DEFAULT_CALIB, DEFAULT_EVAL, DEFAULT_TRAIN, TEXTS
    names = " | ".join(TEXTS)
    if calibrate:
        p.add_argument("--calib-data", help=f"calibration text: {names} | a file | a '+' mix such as "
                       f"wiki+python-docs+self (default {DEFAULT_CALIB})")
        p.add_argument("--calib-samples", type=int, help="calibration sequences (default: the mode's budget)")
        p.add_argument("--calib-seqlen", type=int, help="tokens per calibration sequence (default: the mode's budget)")
    if train:
        p.add_argument("--train-data", help=f"training text: a name, a file or a '+' mix (its train part; "
                       f"default {DEFAULT_TRAIN})")
    p.add_argument("--eval-data", action="append", help=f"evaluation text, repeatable: {names} (not self) | a file "
                   f"(default: {' and '.join(DEFAULT_EVAL)})")
    p.add_argument("--seqlen", type=int, help="tokens per evaluation window (default: the mode's budget)")
    p.add_argument("--max-windows", type=int, help="evaluation windows per text (default: the mode's budget)")


def protocol_from(args, sweep: bool = False):
    """The DataProtocol of the command's options (validated: a bad option fails before any model loads)."""
    from ..protocol import DataProtocol
    return DataProtocol.for_budget(sweep=sweep, **{key: getattr(args, key, None) for key in (
        "calib_data", "calib_samples", "calib_seqlen", "eval_data", "seqlen", "max_windows", "train_data")})


def perplexity_lines(results: dict, label: str = "PPL") -> list:
    """One line per evaluation text: the number and its protocol."""
    return [f"{label} {name}: {r.ppl:.3f}  [{r.protocol()}]" for name, r in results.items()]


def perplexity_dict(results: dict) -> dict:
    """{text: {ppl, protocol, ...}} for --json: one perplexity per evaluation text, keyed by name."""
    return {name: r.to_dict() | {"protocol": r.protocol()} for name, r in results.items()}
