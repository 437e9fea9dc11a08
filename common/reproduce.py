"""`make reproduce`: execute every solution notebook headless and write reports/.

reports/ then holds each executed notebook (.ipynb and .html), results.json with every lab's
measured table, and a summary page (index.html and SUMMARY.md) built from results.json.
"""
import html
import os
import sys
import time

import nbformat

from .budgets import current_mode
from .errors import WorkshopError
from .notebooks import SOLUTIONS, execute_notebook
from .reports import load_results, reports_dir


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
        except ValueError as e:  # nbconvert without its templates (a --target install): keep the .ipynb
            print(f"[reproduce] {path.name}: no HTML ({e}); the executed .ipynb is in reports/",
                  file=sys.stderr)
        print(f"[reproduce] {path.name}: {status[path.stem]}", file=sys.stderr, flush=True)
    write_summary(status)
    return status


def write_summary(status: dict) -> None:
    results = load_results()
    md = ["# Measured results", ""]
    page = ["<html><head><meta charset='utf-8'><title>Compressing LLMs: measured results</title>",
            "<style>body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:2px 8px}</style></head><body><h1>Measured results</h1>"]
    for lab in sorted(set(results) | set(status)):
        entry = results.get(lab, {})
        meta = f"{entry.get('device', '?')}, {entry.get('mode', '?')} mode, {entry.get('date', '?')}"
        md += [f"## {lab}", "", f"Run: {status.get(lab, 'not run this time')}; {meta}", "",
               "| what | value | unit | note |", "|---|---|---|---|"]
        page += [f"<h2><a href='{lab}.html'>{html.escape(lab)}</a></h2>",
                 f"<p>Run: {html.escape(status.get(lab, 'not run this time'))}; {html.escape(meta)}</p>",
                 "<table><tr><th>what</th><th>value</th><th>unit</th><th>note</th></tr>"]
        for r in entry.get("rows", []):
            value = f"{r['value']:.4g}" if isinstance(r["value"], float) else str(r["value"])
            md.append(f"| {r['what']} | {value} | {r['unit']} | {r['note']} |")
            page.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>"
                                         for c in (r["what"], value, r["unit"], r["note"])) + "</tr>")
        md.append("")
        page.append("</table>")
    page.append("</body></html>")
    (reports_dir() / "SUMMARY.md").write_text("\n".join(md))
    (reports_dir() / "index.html").write_text("\n".join(page))


def merge_reports(src, dst) -> list:
    """Fold the reports of a run elsewhere (e.g. copied back from a GPU machine) into a kept folder
    such as reports/h100: its labs' results and HTML replace theirs, the other labs keep theirs, and
    the summary is rebuilt with each lab's last "Run:" line. Returns the labs merged."""
    import json
    import re
    import shutil
    from pathlib import Path

    from .reports import write_json_atomic
    src, dst = Path(src), Path(dst)
    incoming = json.loads((src / "results.json").read_text())
    kept = json.loads((dst / "results.json").read_text()) if (dst / "results.json").is_file() else {}
    runs = {}
    for folder in (dst, src):  # the incoming run's lines win
        if (folder / "SUMMARY.md").is_file():
            found = re.findall(r"^## (\S+)\n\nRun: ([^;]*);", (folder / "SUMMARY.md").read_text(), re.M)
            runs |= {lab: line for lab, line in found if line != "not run this time"}
    for lab in incoming:
        if (src / f"{lab}.html").is_file():
            shutil.copyfile(src / f"{lab}.html", dst / f"{lab}.html")
    write_json_atomic(dst / "results.json", kept | incoming)
    previous = os.environ.get("WORKSHOP_REPORTS")
    os.environ["WORKSHOP_REPORTS"] = str(dst)
    try:
        write_summary(runs)
    finally:
        os.environ.pop("WORKSHOP_REPORTS") if previous is None else os.environ.update(WORKSHOP_REPORTS=previous)
    return sorted(incoming)
