"""The decks: Markdown sources in slides/ (Marp), filled with the numbers and figures of a reports
folder, then rendered to self-contained HTML and PDF by Marp's command-line tool.

    workshop slides [--source reports/h200] [--fallback reports/h200] [--out slides/build] [--no-render]
                                                                                    (make slides)

A deck types no measured number. It writes a placeholder, and `fill` puts in the value from
`<source>/results.json` (each lab's latest run); fields are separated by " | " (spaces around the
bar, so a row name may hold a bare "|"):
  {{ LAB | WHAT }}           the value of the row WHAT of LAB's run (4 significant digits, or a
                             thousands-grouped integer)
  {{ LAB | WHAT | SPEC }}    formatted by SPEC: a Python format spec (".2f", ",.0f"), or one of
                             "%" (a fraction as a percentage), "MB" (bytes as MB), "x" (a ratio),
                             "note:K" (the K-th part of the row's note, parts separated by ", " or "; ", e.g. the
                             "116.4 MB" of "116.4 MB, 1.6 s"), "in-note" or "in-note SPEC" (the one
                             number the row's note holds, e.g. "first third dense: 38.14")
  {{ LAB | @device }}        the run's device; @date (its day) and @mode likewise; @runtime: how long
                             LAB's last recorded full-mode run took, and on which GPU (reports/timings.json,
                             README's table)
  {{ check | LAB | WHAT | < | LAB | WHAT }}   "holds" if the first value is below the second (or
                             ">": above; the second may be a number, or "LAB | WHAT | in-note"), else
                             "does not hold here": a verdict the numbers decide
  {{ figure | LAB | K }}     the K-th figure of LAB's page (<source>/figures/LAB-K.png, written by
                             the reports step), inlined as a data URI so the HTML stays one file
  {{ plot | NAME }}          a figure drawn for the slides by common/slide_figures.py from the same
                             results (or a concept diagram), sized to a slide, inlined likewise
  {{ support matrix }}       the GPU support table of `workshop doctor` (common.hardware.FEATURES) by
                             GPU generation, as a Markdown table
  {{ takeaways | LAB }} ... {{ end takeaways }}   the three "What you learned" sentences LAB's run
                             computed (results.json), as a numbered list; the deck's own text between
                             the two markers (placeholders filled from the same run) stands in for a
                             run recorded before the labs computed takeaways
A lab whose run in the source lacks a row or figure the decks read (quick mode records no long-context
rows) is taken whole from the fallback folder's run (runs_for_decks), and its footer names that run.
One measurement, one source: where two labs record the same quantity (SAME_MEASUREMENT), the decks
may show only one of its rows, so a number never appears with two values.
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
from .reports import duration, figure_path

SLIDES = REPO_ROOT / "slides"
PLACEHOLDER = re.compile(r"\{\{\s*(.*?)\s*\}\}")
SPECIAL = {"%": lambda v: f"{100 * v:.0f}%", "MB": lambda v: f"{v / 1e6:.1f} MB", "x": lambda v: f"{v:.2f}×"}


DECKS = ["opening", *(f"lab{n:02d}" for n in range(8)), "production", "closing"]  # the day's order

# Rows of different labs that measure one quantity (the same run recorded twice, or the same benchmark
# timed by two labs): a deck shows at most one row of each group, so every number has one source.
SAME_MEASUREMENT = [
    {("00_baseline", "memory bandwidth (copy)"), ("06_hardware_and_kernels", "memory bandwidth (copy)")},
    {("00_baseline", "matmul rate (bfloat16)"), ("06_hardware_and_kernels", "matmul rate (bfloat16)")},
    {("00_baseline", "decode bound at batch 1"), ("06_hardware_and_kernels", "decode bound at batch 1 (bfloat16)")},
    {("00_baseline", "decode, batch 1"), ("06_hardware_and_kernels", "decode, eager transformers")},
    {("03_pruning_and_low_rank", "2:4 matmul speed-up, M=16, 8192x8192"),
     ("06_hardware_and_kernels", "2:4 vs dense bf16, M=16 x 8192 x 8192")},
    {("03_pruning_and_low_rank", "2:4 matmul speed-up, M=8192, 8192x8192"),
     ("06_hardware_and_kernels", "2:4 vs dense bf16, M=8192 x 8192 x 8192"), ("06_hardware_and_kernels", "2:4 vs bf16 at 8192^3")},
    {("00_baseline", "perplexity, wiki"), ("02_post_training_quantization", "PPL wiki, baseline (bfloat16)"),
     ("03_pruning_and_low_rank", "perplexity dense, wiki"), ("04_knowledge_distillation", "perplexity on wiki, teacher"),
     ("05_ordering", "PPL wiki, uncompressed")},
    {("00_baseline", "perplexity, python-docs"), ("02_post_training_quantization", "PPL python-docs, baseline (bfloat16)"),
     ("03_pruning_and_low_rank", "perplexity dense, python-docs"), ("04_knowledge_distillation", "perplexity on python-docs, teacher"),
     ("05_ordering", "PPL python-docs, uncompressed")},
    *({("02_post_training_quantization", f"PPL {text}, SmoothQuant W8A8 INT8"),
       ("07_export_and_deployment", f"PPL {text}, SmoothQuant W8A8 activations per token (lab 02)")} for text in ("wiki", "python-docs")),
    *({("02_post_training_quantization", f"PPL {text}, FP8 E4M3 W8A8"), ("07_export_and_deployment", f"PPL {text}, FP8 E4M3")}
      for text in ("wiki", "python-docs")),
    *({("02_post_training_quantization", f"PPL {text}, modelopt {config}"), ("07_export_and_deployment", f"PPL {text}, modelopt {config}")}
      for text in ("wiki", "python-docs") for config in ("FP8_DEFAULT_CFG", "INT8_SMOOTHQUANT_CFG")),
    *({("02_post_training_quantization", f"PPL {text}, {method}"),
       ("02_post_training_quantization", f"calibration study: {method} calibrated on {'-' if method.startswith('RTN') else 'wiki'}, PPL {text}")}
      for text in ("wiki", "python-docs") for method in ("RTN W3 g64", "GPTQ W3 g64", "AWQ W4 g64")),
    *({("03_pruning_and_low_rank", f"perplexity {method} 50%, {text}"),
       ("02_post_training_quantization", f"calibration study: {method} 50% calibrated on {'-' if method == 'magnitude' else 'wiki'}, PPL {text}")}
      for text in ("wiki", "python-docs") for method in ("magnitude", "Wanda", "SparseGPT")),
    {("01_number_formats", "relative weight error, int4"), ("01_number_formats", "relative weight error, int4 groups of 64")},
    {("01_number_formats", "relative weight error, int8"), ("01_number_formats", "relative weight error, int8 per channel")},
    *({("05_ordering", f"PPL {text}, {order} (packed NF4)"), ("05_ordering", f"PPL {text}, {order} (QAT)")}
      for text in ("wiki", "python-docs") for order in ("P-KD-Q", "KD-P-Q")),
]


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


def _number_in_note(row: dict, lab: str) -> float:
    found = re.findall(r"-?\d[\d,]*\.?\d*(?:e[-+]?\d+)?", str(row["note"]))
    if len(found) != 1:
        raise ValueError(f"{lab} | {row['what']}: its note {row['note']!r} holds {len(found)} numbers, not one")
    return float(found[0].replace(",", ""))


def _operand(results: dict, source: Path, fields: list) -> float:
    """A check's operand: a number, LAB | WHAT (the row's value) or LAB | WHAT | in-note."""
    if len(fields) == 1:
        return float(fields[0])
    row = _row_value(results, source, fields[0], fields[1])
    return _number_in_note(row, fields[0]) if fields[2:] == ["in-note"] else row["value"]


def _value(results: dict, source: Path, fields: list) -> str:
    if fields[0] == "check":  # check | LAB | WHAT | < | LAB | WHAT (or a number): a verdict computed, never typed
        op = next(f for f in fields[1:] if f in COMPARISONS)
        at = fields.index(op)
        a, b = _operand(results, source, fields[1:at]), _operand(results, source, fields[at + 1:])
        return "holds" if COMPARISONS[op](a, b) else "**does not hold here**"
    if fields[0] == "plot":
        from .slide_figures import draw
        return "data:image/png;base64," + base64.b64encode(draw(fields[1], results)).decode()
    if fields == ["support matrix"]:
        return support_matrix()
    if fields[0] == "figure":
        lab, k = fields[1], int(fields[2])
        path = figure_path(Path(results.get(lab, {}).get("folder", source)), lab, k)
        if not path.is_file():
            raise KeyError(f"figure {k} of {lab}: no {path}")
        return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
    lab, what, spec = fields[0], fields[1], (fields[2] if len(fields) > 2 else None)
    if what.startswith("@"):
        run = _run(results, source, lab)
        if what == "@runtime":
            return full_mode_runtime(lab)
        meta = {"@device": run.get("device"), "@mode": run.get("mode"), "@date": str(run.get("date", ""))[:10]}
        if what not in meta:
            raise KeyError(f"{lab} | {what}: use @device, @date, @mode or @runtime")
        return str(meta[what])
    row = _row_value(results, source, lab, what)
    if spec and spec.startswith("note:"):
        parts = [p.strip() for p in re.split(r"[,;] ", str(row["note"]))]
        return parts[int(spec[5:]) - 1]
    if spec and spec.startswith("in-note"):
        return _format(_number_in_note(row, lab), spec[7:].strip() or None)
    return _format(row["value"], spec)


# GPU generations for the support matrix: (name, compute capability, an example datacenter card)
GENERATIONS = [("Turing", (7, 5), "T4"), ("Ampere", (8, 0), "A100"), ("Ada", (8, 9), "L40S"),
               ("Hopper", (9, 0), "H100, H200"), ("Blackwell", (10, 0), "B200")]


def support_matrix() -> str:
    """`workshop doctor`'s feature table (common.hardware.FEATURES: the compute capability each feature
    needs) across GPU generations, as Markdown."""
    from .hardware import FEATURES
    head = "| feature | from | " + " | ".join(f"{name} sm_{a}{b}<br>{card}" for name, (a, b), card in GENERATIONS) + " |"
    rows = [head, "|---|---|" + "---|" * len(GENERATIONS)]
    for feature, need in FEATURES.items():
        cells = " | ".join("✔" if capability >= need else "—" for _, capability, _ in GENERATIONS)
        rows.append(f"| {feature} | sm_{need[0]}{need[1]} | {cells} |")
    return "\n".join(rows)


def rows_used(text: str) -> set:
    """{(lab, what)} of every row a deck's placeholders read (values, notes and check operands)."""
    used = set()
    for match in PLACEHOLDER.finditer(text):
        fields = [f.strip() for f in re.split(r"\s\|\s", match.group(1))]
        if fields[0] in ("figure", "plot", "takeaways", "end takeaways") or fields == ["support matrix"]:
            continue
        if fields[0] == "check":
            at = next(k for k, f in enumerate(fields) if f in COMPARISONS)
            operands = [fields[1:at], fields[at + 1:]]
        else:
            operands = [fields[:2]]
        used |= {(o[0], o[1]) for o in operands if len(o) >= 2 and not o[1].startswith("@")}
    return used


def two_sources(texts: list) -> list:
    """The groups of SAME_MEASUREMENT of which the decks `texts` read more than one row."""
    used = set().union(*(rows_used(t) for t in texts)) if texts else set()
    return [sorted(group & used) for group in SAME_MEASUREMENT if len(group & used) > 1]


TAKEAWAYS = re.compile(r"\{\{\s*takeaways\s+\|\s*(\S+)\s*\}\}\n(.*?)\{\{\s*end takeaways\s*\}\}\n?", re.S)


def _takeaways(results: dict, match) -> str:
    """The run's own takeaways where it has them, else the deck's text between the markers."""
    computed = results.get(match.group(1), {}).get("takeaways") or []
    if len(computed) != 3:
        return match.group(2)
    return "".join(f"{k}. {t}\n" for k, t in enumerate(computed, start=1))


def full_mode_runtime(lab: str) -> str:
    """'17 min (NVIDIA H200)': LAB's last recorded full-mode run time, as README's table gives it."""
    from .reproduce import recorded_timings
    timing = recorded_timings("full").get(lab)
    if timing is None:
        raise KeyError(f"{lab} | @runtime: no full-mode run of {lab} in reports/timings.json")
    return f"{duration(timing['seconds'])} ({timing['device'].split(' (')[0]})"


def fill(text: str, results: dict, source: Path) -> tuple:
    """(the deck with every placeholder replaced, [problems]): a placeholder that names no row, lab
    or figure is left as it was and reported."""
    problems = []
    text = TAKEAWAYS.sub(lambda m: _takeaways(results, m), text)

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


def _figures_used(text: str) -> set:
    """{(lab, k)} of every figure placeholder of a deck."""
    found = set()
    for match in PLACEHOLDER.finditer(text):
        fields = [f.strip() for f in re.split(r"\s\|\s", match.group(1))]
        if fields[0] == "figure" and len(fields) == 3:
            found.add((fields[1], int(fields[2])))
    return found


def runs_for_decks(source: Path, fallback: Path | None = None) -> tuple:
    """({lab: run}, [labs taken from `fallback`]): each lab's run in `source`, or, where that run lacks a
    row or a figure the decks read (a quick-mode run has no 8,192-token rows, a lab not run has none),
    the same lab's whole run from `fallback`: one lab's numbers always come from one run, and each run
    keeps its folder for its figures."""
    def load(folder):
        path = folder / "results.json"
        if not path.is_file():
            raise WorkshopError(f"{path} does not exist: the decks take their numbers from a reports folder.",
                                "Use --source reports/h200 (the recorded GPU run) or run `make reproduce` first.")
        return {lab: run | {"folder": str(folder)} for lab, run in json.loads(path.read_text()).items()}
    runs = load(source)
    if fallback is None or fallback.resolve() == source.resolve():
        return runs, []
    spare = load(fallback)
    texts = [deck.read_text() for deck in decks()]
    rows = set().union(*(rows_used(t) for t in texts))
    figures = set().union(*(_figures_used(t) for t in texts))
    taken = []
    for lab in sorted({lab for lab, _ in rows | figures}):
        have = {row["what"] for row in runs.get(lab, {}).get("rows", [])}
        complete = all(what in have for l, what in rows if l == lab) and lab in runs and all(
            figure_path(source, l, k).is_file() for l, k in figures if l == lab)
        if not complete and lab in spare:
            runs[lab] = spare[lab]
            taken.append(lab)
    return runs, taken


def build(source: Path, out: Path, fallback: Path | None = None) -> list:
    """Fill every deck from `source` into `out` (labs whose run there lacks what the decks read: from
    `fallback`'s run, see runs_for_decks); returns the filled decks' paths. Any placeholder left
    unfilled stops it before anything is written (one message lists them all)."""
    results, _ = runs_for_decks(source, fallback)
    filled, problems = {}, []
    for rows in two_sources([deck.read_text() for deck in decks()]):
        problems.append("one measurement shown from two rows: " + "; ".join(f"{lab} | {what}" for lab, what in rows))
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
