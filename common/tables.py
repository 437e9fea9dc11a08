"""`workshop quantize --table lab02`, `workshop prune --table lab03`: a lab's main comparison from the
command line, on one model, one calibration batch and the lab's own evaluation protocol (the
sweep's windows), so that its numbers can be set beside the notebook's."""
import copy
import time

from tqdm.auto import tqdm


def run_lab_table(args, lab: str, jobs: list, columns: list, baseline_name: str, note: str = "") -> dict:
    """`jobs`: [(name, method(model, calib) -> (model, seconds or None))]: each runs on a fresh copy of
    the model, timed here when it does not time itself. `columns`: [(key, header, width, format,
    measure(name, model) -> value)] printed after the method's name, before PPL and time."""
    from .budgets import get_budget
    from .cli import _print
    from .data import calibration_batch
    from .eval import perplexity
    from .models import load_model
    budget = get_budget()
    model, tokenizer = load_model(args.model, dtype=args.dtype, device=args.device)
    calib = calibration_batch(tokenizer, budget.calib_samples, budget.calib_seqlen)

    def row(name, m, seconds, result=None):
        result = result or perplexity(m, tokenizer, "embedded", seqlen=budget.eval_seqlen,
                                      max_windows=budget.sweep_eval_windows, progress=False)
        return {"method": name, **{key: measure(name, m) for key, _, _, _, measure in columns},
                "ppl": result.ppl, "seconds": seconds}, result

    first, baseline = row(baseline_name, model, 0.0)
    rows = [first]
    for name, method in tqdm(jobs, desc=f"{lab} table"):
        start = time.perf_counter()
        edited, seconds = method(copy.deepcopy(model), calib)
        rows.append(row(name, edited, time.perf_counter() - start if seconds is None else seconds)[0])
        del edited
    result = {"table": lab, "model": args.model, "mode": budget.mode, "protocol": baseline.protocol(),
              "calibration": f"{calib.shape[0]}x{calib.shape[1]} tokens of embedded:calib", "rows": rows}
    if args.json:
        _print(result, True, "")
        return result
    print(f"{'method':34s} " + " ".join(f"{header:>{width}s}" for _, header, width, _, _ in columns) +
          f" {'PPL':>10s} {'time s':>7s}")
    for r in rows:
        print(f"{r['method']:34s} " + " ".join(f"{r[key]:{width}{fmt}}" for key, _, width, fmt, _ in columns) +
              f" {r['ppl']:10.2f} {r['seconds']:7.1f}")
    print(f"[{result['protocol']}; calibration {result['calibration']}{note}]")
    return result
