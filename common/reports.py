"""The measured numbers each lab closes with, collected in reports/results.json.

Notebooks, `make reproduce` and the slides read the same file, so a figure is typed nowhere: it is
computed in a lab, recorded here with the device, versions, mode and date, and shown from here.
Each lab's entry is its latest run; the runs before it stay under "earlier" (newest first), so a
run never silently replaces another. SUMMARY.md and index.html are rebuilt from the file whenever it
changes, and say which run they show.
"""
import base64
import datetime
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .paths import reports_dir, write_json_atomic, write_text_atomic


def results_path() -> Path:
    return reports_dir() / "results.json"


def load_results() -> dict:
    path = results_path()
    return json.loads(path.read_text()) if path.is_file() else {}


def with_run(results: dict, lab: str, run: dict) -> dict:
    """`results` with `run` as `lab`'s latest run, the one it replaces (and that one's earlier runs)
    kept under "earlier", newest first."""
    previous = results.get(lab)
    earlier = [] if previous is None else [{k: v for k, v in previous.items() if k != "earlier"},
                                           *previous.get("earlier", [])]
    return results | {lab: {k: v for k, v in run.items() if k != "earlier"} | {"earlier": earlier}}


def run_lines(folder: Path) -> dict:
    """{lab: how its shown run went} from the "Run:" lines of `folder`/SUMMARY.md."""
    summary = folder / "SUMMARY.md"
    found = re.findall(r"^## (\S+)\n\nRun: ([^;]*);", summary.read_text(), re.M) if summary.is_file() else []
    return {lab: line for lab, line in found if line != "not run this time"}


def figure_path(source: Path, lab: str, k: int) -> Path:
    return source / "figures" / f"{lab}-{k}.png"


def save_figures(page_html: str, folder: Path, lab: str) -> list:
    """Every PNG figure of a lab's HTML page, in page order, as `folder`/figures/LAB-K.png (K from 1), for the slides;
    the figures of an earlier run of the lab are removed first. Returns the paths written."""
    out = folder / "figures"
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{lab}-*.png"):
        old.unlink()
    paths = []
    for k, data in enumerate(re.findall(r'src="data:image/png;base64,([^"]+)"', page_html), start=1):
        paths.append(out / f"{lab}-{k}.png")
        paths[-1].write_bytes(base64.b64decode(data))
    return paths


def shown_value(value, unit: str = "") -> tuple:
    """(value, unit) as a person reads them: bytes in MB, counts with thousands separators, other
    numbers to four significant digits."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value), unit
    if unit == "B":
        return f"{value / 1e6:,.1f}", "MB"
    if float(value).is_integer() and abs(value) >= 1000:
        return f"{value:,.0f}", unit
    return (f"{value:,.0f}" if abs(value) >= 10_000 else f"{value:.4g}"), unit


def _common_note(rows: list) -> str:
    """The note most rows of a table share (a protocol), said once above it; '' if none recurs."""
    notes = [r["note"] for r in rows if r.get("note")]
    best = max(set(notes), key=notes.count) if notes else ""
    return best if best and notes.count(best) >= 3 else ""


def duration(seconds: float) -> str:
    """45 s, 3 min 5 s, 1 h 12 min: how long, for a person."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60} s" if seconds < 600 and seconds % 60 else f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {round(seconds % 3600 / 60)} min"


def _status_text(line: str) -> str:
    return re.sub(r"(ok in|after) (\d+) s", lambda m: f"{m[1]} {duration(int(m[2]))}", line)


def write_summary(status: dict) -> None:
    """SUMMARY.md and index.html of the reports folder, from results.json: each lab's latest run, with
    `status[lab]` (how that run went) or the line the summary already had for it. The page opens with
    one screen per course (status, takeaways and verdicts of every lab), then the figures, then the
    full tables, each with the note its rows share said once at its top."""
    results = load_results()
    status = run_lines(reports_dir()) | status
    labs = sorted(set(results) | set(status))
    md = ["# Measured results", ""]
    page = ["<html><head><meta charset='utf-8'><title>Compressing LLMs: measured results</title>",
            "<style>body{font-family:sans-serif;max-width:72em;margin:auto;padding:0 1em}"
            "table{border-collapse:collapse;margin-bottom:1em}td,th{border:1px solid #ccc;padding:3px 8px;"
            "vertical-align:top}td.num{text-align:right;font-variant-numeric:tabular-nums}"
            ".ok{color:#176317}.failed{color:#a01010;font-weight:bold}.holds{color:#176317}.fails{color:#a01010}"
            "img{border:1px solid #ddd;margin:4px}ol{margin:0;padding-left:1.2em}.note{color:#555}</style>"
            "</head><body><h1>Measured results</h1>"]
    machine = reports_dir() / "machine.json"
    if machine.is_file():
        from .hardware import Ceilings
        measured = json.loads(machine.read_text())
        for ceilings in measured["ceilings"].values():
            line = f"Machine, measured once for the run started {measured['run']}: {Ceilings(**ceilings).describe()}"
            md += [line, ""]
            page.append(f"<p class='note'>{html.escape(line)}</p>")
    page += ["<h2>Summary</h2><table><tr><th>lab</th><th>run</th><th>what you learned</th><th>verdicts</th></tr>"]
    for lab in labs:
        entry = results.get(lab, {})
        run = _status_text(status.get(lab, "not run this time"))
        verdicts = [r["value"] for r in entry.get("rows", []) if str(r["what"]).startswith("verdict: ")]
        counted = (f"<span class='holds'>{verdicts.count('holds')} hold</span>, <span class='fails'>"
                   f"{len(verdicts) - verdicts.count('holds')} do not hold here</span>") if verdicts else ""
        learned = "<ol>" + "".join(f"<li>{html.escape(t)}</li>" for t in entry.get("takeaways", [])) + "</ol>" \
            if entry.get("takeaways") else ""
        css = "ok" if run.startswith("ok") else "failed" if run.startswith("FAILED") else "note"
        meta = f"{entry.get('mode', '?')} mode, {entry.get('device', '?')}, {str(entry.get('date', '?'))[:10]}"
        page.append(f"<tr><td><a href='#{lab}'>{html.escape(lab)}</a></td><td><span class='{css}'>{html.escape(run)}"
                    f"</span><br><span class='note'>{html.escape(meta)}</span></td><td>{learned}</td><td>{counted}</td></tr>")
    page.append("</table>")
    figures = [(lab, sorted((reports_dir() / "figures").glob(f"{lab}-*.png"),
                            key=lambda p: int(p.stem.rsplit("-", 1)[1]))) for lab in labs]
    if any(found for _, found in figures):
        page.append("<h2>Figures</h2>")
        for lab, found in figures:
            if found:
                page.append(f"<h3>{html.escape(lab)}</h3>" + "".join(
                    f"<a href='figures/{p.name}'><img src='figures/{p.name}' height='160' alt='{p.stem}'></a>"
                    for p in found))
    page.append("<h2>Full tables</h2>")
    for lab in labs:
        entry = results.get(lab, {})
        earlier = len(entry.get("earlier", []))
        meta = (f"{entry.get('device', '?')}, {entry.get('mode', '?')} mode, {entry.get('date', '?')}" +
                (f" (the latest of {earlier + 1} runs in results.json)" if earlier else ""))
        md += [f"## {lab}", "", f"Run: {status.get(lab, 'not run this time')}; {meta}", ""]
        if entry.get("takeaways"):
            md += ["What you learned:", ""] + [f"{k}. {t}" for k, t in enumerate(entry["takeaways"], 1)] + [""]
        rows = entry.get("rows", [])
        common = _common_note(rows)
        page += [f"<h3 id='{lab}'><a href='{lab}.html'>{html.escape(lab)}</a></h3>",
                 f"<p class='note'>Run: {html.escape(_status_text(status.get(lab, 'not run this time')))}; "
                 f"{html.escape(meta)}</p>"]
        if common:
            md += [f"Unless a row says otherwise: {common}", ""]
            page.append(f"<p class='note'>Unless a row says otherwise: {html.escape(common)}</p>")
        md += ["| what | value | unit | note |", "|---|---|---|---|"]
        page.append("<table><tr><th>what</th><th>value</th><th>unit</th><th>note</th></tr>")
        for r in rows:
            value, unit = shown_value(r["value"], r["unit"])
            note = "" if r["note"] == common else r["note"]
            md.append(f"| {r['what']} | {value} | {unit} | {note} |")
            css = " class='num'" if isinstance(r["value"], (int, float)) and not isinstance(r["value"], bool) else ""
            page.append(f"<tr><td>{html.escape(str(r['what']))}</td><td{css}>{html.escape(value)}</td>"
                        f"<td>{html.escape(unit)}</td><td>{html.escape(str(note))}</td></tr>")
        md.append("")
        page.append("</table>")
    page.append("</body></html>")
    for name, text in (("SUMMARY.md", "\n".join(md)), ("index.html", "\n".join(page))):
        write_text_atomic(reports_dir() / name, text)


@dataclass
class LabResults:
    """Rows of (what, value, unit, note) for one lab; `save()` merges them into results.json."""
    lab: str
    rows: list = field(default_factory=list)
    takeaways: list = field(default_factory=list)

    def what_you_learned(self, *points: str):
        """The lab's closing takeaways (sentences whose numbers the lab computed), kept for results.json,
        the report and the slides; shown as a numbered list."""
        from IPython.display import Markdown
        if len(points) != 3:
            raise ValueError(f"a lab ends with three takeaways, got {len(points)}")
        self.takeaways = list(points)
        return Markdown("\n".join(f"{k}. {point}" for k, point in enumerate(points, start=1)))

    def add(self, what: str, value, unit: str = "", note: str = "") -> None:
        self.rows = [r for r in self.rows if r["what"] != what]
        self.rows.append({"what": what, "value": value, "unit": unit, "note": note})

    def save(self) -> Path:
        from .budgets import current_mode
        from .hardware import device_description, package_versions
        date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        run = {"mode": current_mode(), "device": device_description(), "versions": package_versions(),
               "date": date, "rows": self.rows,
               "takeaways": self.takeaways}
        write_json_atomic(results_path(), with_run(load_results(), self.lab, run))
        write_summary({self.lab: f"saved by the notebook at {date}"})
        return results_path()

    def markdown(self) -> str:
        lines = ["| what | value | unit | note |", "|---|---|---|---|"]
        for r in self.rows:
            value = f"{r['value']:.4g}" if isinstance(r["value"], float) else r["value"]
            lines.append(f"| {r['what']} | {value} | {r['unit']} | {r['note']} |")
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.markdown()
