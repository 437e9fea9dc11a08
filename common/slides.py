"""The decks: Markdown sources in slides/ (Marp), filled with the numbers and figures of a reports
folder, then rendered to self-contained HTML and PDF by Marp's command-line tool.

    workshop slides [--source reports/h200] [--out slides/build] [--no-render]      (make slides)

A deck types no measured number. It writes a placeholder, and `fill` puts in the value from
`<source>/results.json` (each lab's latest run); fields are separated by " | " (spaces around the
bar, so a row name may hold a bare "|"):
  {{ LAB | WHAT }}           the value of the row WHAT of LAB's run (4 significant digits, or a
                             thousands-grouped integer)
  {{ LAB | WHAT | SPEC }}    formatted by SPEC: a Python format spec (".2f", ",.0f"), or one of
                             "%" (a fraction as a percentage), "MB" (bytes as MB), "x" (a ratio),
                             "note" (the row's note instead of its value)
  {{ LAB | @device }}        the run's device; @date (its day) and @mode likewise
  {{ check | LAB | WHAT | < | LAB | WHAT }}   "holds" if the first value is below the second (or
                             ">": above; the second may be a number), else "does not hold here": a
                             verdict the numbers decide
  {{ figure | LAB | K }}     the K-th figure of LAB's page (<source>/figures/LAB-K.png, written by
                             the reports step), inlined as a data URI so the HTML stays one file
Speaker notes are HTML comments (`<!-- ... -->`), as Marp reads them.
"""
import base64
import difflib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

from .errors import WorkshopError
from .paths import REPO_ROOT
from .reports import figure_path

SLIDES = REPO_ROOT / "slides"
PLACEHOLDER = re.compile(r"\{\{\s*(.*?)\s*\}\}")
SPECIAL = {"%": lambda v: f"{100 * v:.0f}%", "MB": lambda v: f"{v / 1e6:.1f} MB", "x": lambda v: f"{v:.2f}×"}


DECKS = ["opening", *(f"lab{n:02d}" for n in range(8)), "closing"]  # the day's order


def decks() -> list:
    """The deck sources in the day's order: slides/opening.md, lab00.md ... lab07.md, closing.md."""
    return [SLIDES / f"{name}.md" for name in DECKS]


def _format(value, spec: str | None) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return str(value)
    if spec in SPECIAL:
        return SPECIAL[spec](value)
    if spec:
        return format(value, spec)
    return f"{value:,}" if float(value).is_integer() and abs(value) >= 1000 else f"{value:.4g}"


COMPARISONS = {"<": lambda a, b: a < b, ">": lambda a, b: a > b}


def _run(results: dict, source: Path, lab: str) -> dict:
    if lab not in results:
        raise KeyError(f"lab {lab}: not in {source / 'results.json'} (it has {', '.join(results) or 'none'})")
    return results[lab]


def _row_value(results: dict, source: Path, lab: str, what: str):
    rows = {row["what"]: row for row in _run(results, source, lab)["rows"]}
    if what not in rows:
        near = difflib.get_close_matches(what, list(rows), n=3, cutoff=0.6)
        raise KeyError(f"{lab} | {what}: no such row" + (f" (did you mean {near}?)" if near else ""))
    return rows[what]


def _value(results: dict, source: Path, fields: list) -> str:
    if fields[0] == "check":  # check | LAB | WHAT | < | LAB | WHAT (or a number): a verdict computed, never typed
        a = _row_value(results, source, fields[1], fields[2])["value"]
        op, rest = fields[3], fields[4:]
        b = float(rest[0]) if len(rest) == 1 else _row_value(results, source, *rest)["value"]
        return "holds" if COMPARISONS[op](a, b) else "**does not hold here**"
    if fields[0] == "figure":
        lab, k = fields[1], int(fields[2])
        path = figure_path(source, lab, k)
        if not path.is_file():
            raise KeyError(f"figure {k} of {lab}: no {path}")
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    lab, what, spec = fields[0], fields[1], (fields[2] if len(fields) > 2 else None)
    if what.startswith("@"):
        run = _run(results, source, lab)
        meta = {"@device": run.get("device"), "@mode": run.get("mode"), "@date": str(run.get("date", ""))[:10]}
        if what not in meta:
            raise KeyError(f"{lab} | {what}: use @device, @date or @mode")
        return str(meta[what])
    row = _row_value(results, source, lab, what)
    return str(row["note"]) if spec == "note" else _format(row["value"], spec)


def fill(text: str, results: dict, source: Path) -> tuple:
    """(the deck with every placeholder replaced, [problems]): a placeholder that names no row, lab
    or figure is left as it was and reported."""
    problems = []

    def replace(match):
        try:
            return _value(results, source, [f.strip() for f in re.split(r"\s\|\s", match.group(1))])
        except (KeyError, ValueError, IndexError) as e:
            problems.append(f"{{{{ {match.group(1)} }}}}: {str(e).strip(chr(39))}")
            return match.group(0)
    return PLACEHOLDER.sub(replace, text), problems


def slides_of(text: str) -> list:
    """The slides of a Marp deck: the text between `---` lines, front matter left out."""
    body = re.sub(r"\A---\n.*?\n---\n", "", text, count=1, flags=re.S)
    return [s for s in re.split(r"^---$", body, flags=re.M) if s.strip()]


def build(source: Path, out: Path) -> list:
    """Fill every deck from `source` into `out`; returns the filled decks' paths. Any placeholder
    left unfilled stops it before anything is written (one message lists them all)."""
    results_file = source / "results.json"
    if not results_file.is_file():
        raise WorkshopError(f"{results_file} does not exist: the decks take their numbers from a reports folder.",
                            "Use --source reports/h200 (the recorded GPU run) or run `make reproduce` first.")
    results = json.loads(results_file.read_text())
    filled, problems = {}, []
    for deck in decks():
        filled[deck.name], found = fill(deck.read_text(), results, source)
        problems += [f"{deck.name}: {p}" for p in found]
    if problems:
        raise WorkshopError("Placeholders with no value in " + str(source) + ":\n  " + "\n  ".join(problems),
                            "Fix the names in the decks (rows are the 'what' of results.json), or use a reports "
                            "folder whose labs all ran.")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in filled.items():
        (out / name).write_text(text)
    return [out / name for name in filled]


def chromium() -> str | None:
    for candidate in (os.environ.get("CHROME_PATH"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def render(paths: list, pdf: bool = True) -> list:
    """HTML (and PDF, with a Chromium) of each filled deck, by the Marp CLI installed in slides/."""
    marp = SLIDES / "node_modules" / ".bin" / "marp"
    if not marp.is_file():
        raise WorkshopError(f"{marp} is missing: the Marp CLI is installed by `make slides` (npm ci in slides/, "
                            "once, from the npm registry).", "Run `make slides`, or `cd slides && npm ci`.")
    env = dict(os.environ, CHROME_PATH=chromium() or "")
    outputs = []
    for path in paths:
        # HTML: the bespoke template (presenter view shows the notes); PDF: the notes as annotations
        kinds = [(path.with_suffix(".html"), [])] + ([(path.with_suffix(".pdf"), ["--pdf", "--pdf-notes"])] if pdf else [])
        for target, flags in kinds:
            run = subprocess.run([str(marp), str(path), "--theme-set", str(SLIDES / "workshop.css"), *flags,
                                  "-o", str(target)], capture_output=True, text=True, env=env)
            if run.returncode != 0:
                raise WorkshopError(f"marp could not render {path.name} to {target.suffix}: {run.stderr.strip()[-500:]}",
                                    "Check the deck's Markdown; for PDF, a Chromium (CHROME_PATH).")
            outputs.append(target)
    return outputs
