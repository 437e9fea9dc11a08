"""`make reproduce`: execute every solution notebook headless and write reports/.

reports/ then holds each executed notebook (.ipynb and .html), results.json with every lab's
measured table, and a summary page (index.html and SUMMARY.md) built from results.json.
"""
import datetime
import json
import os
import sys
import time
from pathlib import Path

import nbformat

from .budgets import current_mode
from .errors import WorkshopError
from .notebooks import SOLUTIONS, execute_notebook
from .paths import REPO_ROOT, reports_dir, write_json_atomic
from .reports import duration, save_figures, write_summary


def select_solutions(labs: list | None) -> list:
    solutions = sorted(SOLUTIONS.glob("*.ipynb"))
    if not labs:
        return solutions
    chosen = [s for s in solutions if any(s.name.startswith(f"{n.zfill(2)}_") for n in labs)]
    if len(chosen) < len(labs):
        known = ", ".join(s.name[:2] for s in solutions)
        raise WorkshopError(f"--labs {','.join(labs)} names a lab that does not exist.", f"Choose from {known}.")
    return chosen


def timings_path() -> Path:
    return reports_dir() / "timings.json"


def recorded_timings(mode: str) -> dict:
    """{lab: {seconds, device, date}} of the last recorded run of each lab in `mode` (reports/timings.json;
    the repository holds a full-mode run on an H200 and a quick-mode run on a 2-core CPU)."""
    path = timings_path()
    return json.loads(path.read_text()).get(mode, {}) if path.is_file() else {}


def record_timing(mode: str, lab: str, seconds: float, device: str, note: str = "") -> None:
    path = timings_path()
    timings = json.loads(path.read_text()) if path.is_file() else {}
    date = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
    timings.setdefault(mode, {})[lab] = {"seconds": round(seconds), "device": device, "date": date} | (
        {"note": note} if note else {})
    write_json_atomic(path, timings)


README = REPO_ROOT / "README.md"
TIMINGS_BEGIN, TIMINGS_END = "<!-- BEGIN TIMINGS (python -m common.reproduce) -->", "<!-- END TIMINGS -->"


def timings_table() -> str:
    """README's table of how long each lab took in its last recorded run, per mode, from timings.json."""
    modes = ("quick", "full")
    timings = {mode: recorded_timings(mode) for mode in modes}
    labs = sorted(set(timings["quick"]) | set(timings["full"]))
    lines = ["| lab | quick mode | full mode | note |", "| --- | ---: | ---: | --- |"]
    mixed = {mode: len({t["device"] for t in timings[mode].values()}) > 1 for mode in modes}

    def cell(mode, lab):
        if lab not in timings[mode]:
            return "not recorded"
        run = timings[mode][lab]
        card = run["device"].split(" (")[0].removeprefix("NVIDIA ")
        return duration(run["seconds"]) + (f" ({card})" if mixed[mode] else "")

    for lab in labs:
        cells = [cell(mode, lab) for mode in modes]
        notes = [f"{mode}: {timings[mode][lab]['note']}" for mode in modes if timings[mode].get(lab, {}).get("note")]
        lines.append(f"| {lab} | {' | '.join(cells)} | {'; '.join(notes)} |")
    totals = [f"**{duration(sum(t['seconds'] for t in timings[mode].values()))}**" if timings[mode] else "not recorded"
              for mode in modes]
    lines.append(f"| **all labs** | {' | '.join(totals)} | |")
    where = []
    for mode in modes:
        runs = timings[mode].values()
        if runs:
            dates = sorted({t["date"] for t in runs})
            where.append(f"{mode} mode on {', '.join(sorted({t['device'] for t in runs}))}, {dates[0]}"
                         + (f" to {dates[-1]}" if len(dates) > 1 else ""))
    return "\n".join(lines) + "\n\nMeasured: " + "; ".join(where) + "."


def write_readme_timings(readme: Path = README) -> None:
    """Put timings_table() between README's markers (after a run recorded new timings)."""
    text = readme.read_text()
    head, rest = text.split(TIMINGS_BEGIN)
    _, tail = rest.split(TIMINGS_END)
    readme.write_text(f"{head}{TIMINGS_BEGIN}\n{timings_table()}\n{TIMINGS_END}{tail}")


class Progress:
    """Lines on stderr while a lab runs: the code cell reached and the time so far, at most every
    `every` seconds (every cell where stderr is a terminal, on one line)."""

    def __init__(self, lab: str, every: float = 30.0):
        self.lab, self.every, self.start, self.last = lab, every, time.time(), time.time()
        self.terminal = sys.stderr.isatty()

    def __call__(self, index: int, count: int) -> None:
        now = time.time()
        line = f"[reproduce]     {self.lab}: cell {index}/{count}, {duration(now - self.start)} so far"
        if self.terminal:
            print(f"\r{line}\033[K", end="", file=sys.stderr, flush=True)
        elif now - self.last >= self.every:
            print(line, file=sys.stderr, flush=True)
            self.last = now

    def done(self) -> None:
        if self.terminal:
            print("\r\033[K", end="", file=sys.stderr, flush=True)


def reproduce(labs: list | None = None, mode: str | None = None, timeout: int = 3600, progress_every: float = 30.0) -> dict:
    from nbconvert import HTMLExporter

    from .hardware import device_description
    mode = mode or current_mode()
    out = reports_dir()
    out.mkdir(parents=True, exist_ok=True)
    chosen = select_solutions(labs)
    device = device_description()
    recorded = recorded_timings(mode)
    known = [recorded[p.stem] for p in chosen if p.stem in recorded]
    expected = (f"their last recorded runs took about {duration(sum(t['seconds'] for t in known))} in all"
                f"{'' if len(known) == len(chosen) else f' ({len(known)} of them recorded)'}, on "
                f"{', '.join(sorted({t['device'] for t in known}))}" if known else "no earlier run of them is recorded")
    print(f"[reproduce] {len(chosen)} lab{'s' * (len(chosen) > 1)} in {mode} mode on {device}; {expected}. "
          f"Reports go to {out}.", file=sys.stderr, flush=True)
    status = {}
    # one measurement of the machine for the whole run (machine_ceilings); the kernels inherit it
    os.environ["WORKSHOP_RUN_ID"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    try:
        for k, path in enumerate(chosen, start=1):
            before = recorded.get(path.stem)
            expect = (f"about {duration(before['seconds'])} last time" + ("" if before["device"] == device else
                      f" on {before['device']}") + (f", {before['note']}" if before.get("note") else "")
                      if before else "no earlier run recorded")
            print(f"[reproduce] {k}/{len(chosen)} {path.stem}: running ({expect})...", file=sys.stderr, flush=True)
            t0 = time.time()
            progress = Progress(path.stem, progress_every)
            nb, error = execute_notebook(path, mode, timeout=timeout, on_cell_start=progress)
            progress.done()
            seconds = time.time() - t0
            status[path.stem] = (f"ok in {seconds:.0f} s" if error is None else
                                 f"FAILED after {seconds:.0f} s: {str(error).strip().splitlines()[-1]}")
            if error is None:
                record_timing(mode, path.stem, seconds, device)
            nbformat.write(nb, out / path.name)
            try:
                body, _ = HTMLExporter().from_notebook_node(nb)
                (out / f"{path.stem}.html").write_text(body)
                save_figures(body, out, path.stem)
            except ValueError as e:  # nbconvert without its templates (a --target install): keep the .ipynb
                print(f"[reproduce] {path.name}: no HTML ({e}); the executed .ipynb is in reports/",
                      file=sys.stderr)
            shown = f"ok in {duration(seconds)}" if error is None else status[path.stem]
            print(f"[reproduce] {k}/{len(chosen)} {path.stem}: {shown}", file=sys.stderr, flush=True)
    finally:
        os.environ.pop("WORKSHOP_RUN_ID")
    write_summary(status)
    if timings_path() == REPO_ROOT / "reports" / "timings.json":
        write_readme_timings()   # README's table reads this file: keep the two in step (make test checks it)
    return status


def merge_reports(src, dst) -> list:
    """Fold the reports of a run elsewhere (e.g. copied back from a GPU machine) into a kept folder
    such as reports/h100: its labs' runs become their latest (the runs they follow stay under
    "earlier"), their HTML replaces the old, the other labs keep theirs, and the summary is rebuilt
    with each lab's last "Run:" line. Returns the labs merged."""
    import shutil

    from .reports import run_lines, with_run
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


if __name__ == "__main__":
    write_readme_timings()
