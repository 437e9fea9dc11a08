"""`make reproduce`: execute every solution notebook headless and write reports/.

reports/ then holds each executed notebook (.ipynb and .html), results.json with every lab's
measured table, and a summary page (index.html and SUMMARY.md) built from results.json.
"""
import datetime
import os
import sys
import time

import nbformat

from .budgets import current_mode
from .errors import WorkshopError
from .notebooks import SOLUTIONS, execute_notebook
from .reports import reports_dir, save_figures, write_summary


def select_solutions(labs: list | None) -> list:
    solutions = sorted(SOLUTIONS.glob("*.ipynb"))
    if not labs:
        return solutions
    chosen = [s for s in solutions if any(s.name.startswith(f"{n.zfill(2)}_") for n in labs)]
    if len(chosen) < len(labs):
        known = ", ".join(s.name[:2] for s in solutions)
        raise WorkshopError(f"--labs {','.join(labs)} names a lab that does not exist.", f"Choose from {known}.")
    return chosen


def reproduce(labs: list | None = None, mode: str | None = None, timeout: int = 3600) -> dict:
    from nbconvert import HTMLExporter
    mode = mode or current_mode()
    out = reports_dir()
    out.mkdir(parents=True, exist_ok=True)
    status = {}
    # one measurement of the machine for the whole run (machine_ceilings); the kernels inherit it
    os.environ["WORKSHOP_RUN_ID"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    try:
        for path in select_solutions(labs):
            t0 = time.time()
            print(f"[reproduce] {path.name} ({mode} mode)...", file=sys.stderr, flush=True)
            nb, error = execute_notebook(path, mode, timeout=timeout)
            status[path.stem] = (f"ok in {time.time() - t0:.0f} s" if error is None else
                                 f"FAILED after {time.time() - t0:.0f} s: {str(error).strip().splitlines()[-1]}")
            nbformat.write(nb, out / path.name)
            try:
                body, _ = HTMLExporter().from_notebook_node(nb)
                (out / f"{path.stem}.html").write_text(body)
                save_figures(body, out, path.stem)
            except ValueError as e:  # nbconvert without its templates (a --target install): keep the .ipynb
                print(f"[reproduce] {path.name}: no HTML ({e}); the executed .ipynb is in reports/",
                      file=sys.stderr)
            print(f"[reproduce] {path.name}: {status[path.stem]}", file=sys.stderr, flush=True)
    finally:
        os.environ.pop("WORKSHOP_RUN_ID")
    write_summary(status)
    return status


def merge_reports(src, dst) -> list:
    """Fold the reports of a run elsewhere (e.g. copied back from a GPU machine) into a kept folder
    such as reports/h100: its labs' runs become their latest (the runs they follow stay under
    "earlier"), their HTML replaces the old, the other labs keep theirs, and the summary is rebuilt
    with each lab's last "Run:" line. Returns the labs merged."""
    import json
    import shutil
    from pathlib import Path

    from .reports import run_lines, save_figures, with_run, write_json_atomic
    src, dst = Path(src), Path(dst)
    incoming = json.loads((src / "results.json").read_text())
    merged = json.loads((dst / "results.json").read_text()) if (dst / "results.json").is_file() else {}
    runs = run_lines(dst) | run_lines(src)   # the incoming run's lines win
    for lab, run in incoming.items():
        merged = with_run(merged, lab, run)
        if (src / f"{lab}.html").is_file():
            shutil.copyfile(src / f"{lab}.html", dst / f"{lab}.html")
            save_figures((dst / f"{lab}.html").read_text(), dst, lab)
    write_json_atomic(dst / "results.json", merged)
    previous = os.environ.get("WORKSHOP_REPORTS")
    os.environ["WORKSHOP_REPORTS"] = str(dst)
    try:
        write_summary(runs)
    finally:
        os.environ.pop("WORKSHOP_REPORTS") if previous is None else os.environ.update(WORKSHOP_REPORTS=previous)
    return sorted(incoming)
