"""`workshop` (also `python -m common`): the course's command line.

Every command takes --json for machine-readable output on stdout (progress goes to stderr), exits 0
on success and 2 on bad input with one clear message.
"""
import argparse
import contextlib
import json
import os
import sys
from pathlib import Path

from .errors import WorkshopError


_result_stream = None  # where results go while main() sends everything else printed to stderr


def _print(result: dict, as_json: bool, text: str) -> None:
    print(json.dumps(result, indent=2, default=str) if as_json else text, file=_result_stream or sys.stdout)


# ---------------------------------------------------------------------------------------------
def cmd_doctor(args) -> None:
    from .hardware import doctor_report
    report = doctor_report()
    lines = ["versions:"] + [f"  {k:16s} {v or 'not installed'}" for k, v in report["versions"].items()]
    gpu = report["gpu"]
    if gpu:
        lines.append(f"GPU: {gpu['name']}, compute capability {gpu['compute_capability']}, "
                     f"{gpu['memory_gib']} GiB, CUDA {gpu['cuda']}")
        lines += [f"  {'yes' if ok else 'no ':3s}  {feature}" for feature, ok in gpu["features"].items()]
    else:
        lines.append("GPU: none (quick mode: labs run on the CPU with small budgets)")
    lines += [f"mode: {report['mode']} (WORKSHOP_MODE overrides)",
              f"embedded model: {report['embedded_model']}",
              f"embedded model cache: {report['embedded_model_cache']}",
              f"wikitext-2 cached: {'yes' if report['wikitext2_cached'] else 'no (the embedded text is used)'}"]
    _print(report, args.json, "\n".join(lines))


def cmd_eval(args) -> None:
    from .budgets import get_budget
    from .eval import perplexity, stored_bytes
    from .models import load_model
    budget = get_budget()
    seqlen = args.seqlen or budget.eval_seqlen
    max_windows = args.max_windows if args.max_windows is not None else budget.eval_max_windows
    if args.max_windows is not None and args.max_windows < 1:
        raise WorkshopError(f"--max-windows {args.max_windows} is not a positive number.",
                            "Give 1 or more, or leave it out to use every window.")
    data = args.text_file or args.data
    if args.text_file and not os.path.isfile(args.text_file):
        raise WorkshopError(f"--text-file {args.text_file} does not exist.", "Give the path of a text file.")
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    result = perplexity(model, tokenizer, data=data, seqlen=seqlen, max_windows=max_windows,
                        batch_size=args.batch_size)
    out = result.to_dict() | {"stored_bytes": stored_bytes(model), "mode": budget.mode}
    _print(out, args.json, f"{result}\nstored bytes: {out['stored_bytes']:,}")


def cmd_bench_kernels(args) -> None:
    import torch
    from kernels import bench
    from .hardware import measure_matmul_flops, measure_memory_bandwidth
    from .reports import write_json_atomic
    result = bench.run(shapes=args.shapes.split(",") if args.shapes else None)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else None
    write_json_atomic(out.with_suffix(".json"), result)
    bench.plot_roofline(result, out.with_suffix(".png"), measure_memory_bandwidth("cuda"),
                        measure_matmul_flops("cuda", torch.bfloat16))
    text = bench.markdown(result) + (f"\n{bench.agreement(previous, result)}" if previous else "") + \
        f"\n![roofline]({out.with_suffix('.png').name})\n"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    _print(result, args.json, text)


def cmd_reproduce(args) -> None:
    from .reproduce import reproduce
    status = reproduce(labs=args.labs.split(",") if args.labs else None)
    from .reports import reports_dir
    _print(status, args.json, "\n".join(f"{k}: {v}" for k, v in status.items()) +
           f"\nreports written to {reports_dir()}")
    if any(not v.startswith("ok") for v in status.values()):
        sys.exit(1)


# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workshop", description="The Art of Compressing LLMs: labs' command line.")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, func, help_text, model=True):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="machine-readable output on stdout")
        if model:
            p.add_argument("--model", default="embedded",
                           help="embedded (default) | a Hub id | a local directory | tiny-random")
            p.add_argument("--dtype", default="auto", help="auto (bf16 on GPU, fp32 on CPU) | bfloat16 | float16 | float32")
            p.add_argument("--device", default="auto", help="auto | cpu | cuda")
        p.set_defaults(func=func)
        return p

    command("doctor", cmd_doctor, "Versions, GPU and its features, model and data availability, mode.", model=False)

    p = command("eval", cmd_eval, "Perplexity with the course's protocol, and stored bytes.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--data", default="embedded", help="embedded (default) | embedded-code | wikitext2")
    source.add_argument("--text-file", help="evaluate on this text file instead")
    p.add_argument("--seqlen", type=int, help="tokens per window (default: the mode's budget)")
    p.add_argument("--max-windows", type=int, help="evaluate at most K windows (default: the mode's budget)")
    p.add_argument("--batch-size", type=int, default=1, help="windows per forward pass")

    from .distill.cli import add_commands as add_distill_commands
    from .prune.cli import add_commands as add_prune_commands
    from .quant.cli import add_commands as add_quant_commands
    add_quant_commands(command)
    add_prune_commands(command)
    add_distill_commands(command)

    p = command("bench-kernels", cmd_bench_kernels, "Time the GEMM paths (bf16, W4A16, tinygemm, INT8, FP8, 2:4) "
                "on Llama-3-8B- and SmolLM2-shaped linears (GPU).", model=False)
    p.add_argument("--shapes", help="comma-separated shape names (default: all); see kernels/bench.py")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "kernels" / "RESULTS.md"),
                   help="markdown report (a .json and a .png roofline are written beside it)")

    p = command("reproduce", cmd_reproduce, "Execute every solution notebook headless and write reports/.", model=False)
    p.add_argument("--labs", help="comma-separated lab numbers, e.g. 00,01 (default: all)")
    return parser


def main(argv=None) -> int:
    global _result_stream
    args = build_parser().parse_args(argv)
    # With --json, stdout carries the result alone: what libraries print on the way (modelopt reports,
    # conversion notices) goes to stderr with the progress bars.
    _result_stream = sys.stdout
    try:
        with contextlib.redirect_stdout(sys.stderr if getattr(args, "json", False) else sys.stdout):
            args.func(args)
    except WorkshopError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        _result_stream = None
    return 0


if __name__ == "__main__":
    sys.exit(main())
