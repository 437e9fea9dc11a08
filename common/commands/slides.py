"""`workshop slides`: the decks in slides/ filled from a reports folder, rendered to HTML and PDF (`make slides`)."""
from . import Output

HELP = "Fill the decks in slides/ with a reports folder's numbers and figures; render HTML and PDF (Marp)."


def add_arguments(p) -> None:
    from ..paths import REPO_ROOT
    p.add_argument("--source", default=str(REPO_ROOT / "reports" / "h200"),
                   help="reports folder with results.json and figures/ (default: the recorded H200 run; "
                        "reports after make reproduce)")
    p.add_argument("--fallback", default=str(REPO_ROOT / "reports" / "h200"),
                   help="reports folder whose run of a lab stands in where --source's run of it lacks a row or figure "
                        "the decks read (a quick-mode run has no long-context rows; default: the recorded H200 run)")
    p.add_argument("--out", default=str(REPO_ROOT / "slides" / "build"), help="where the filled and rendered decks go")
    p.add_argument("--no-render", action="store_true", help="only fill the decks (no Marp, no Chromium)")


def run(args) -> Output:
    from pathlib import Path

    from ..slides import build, chromium, render, runs_for_decks
    source, fallback = Path(args.source), Path(args.fallback)
    paths = build(source, Path(args.out), fallback)
    _, taken = runs_for_decks(source, fallback)
    lines = [f"filled {len(paths)} decks from {args.source} into {args.out}"]
    if taken:
        lines.append(f"from {args.fallback} (whole runs; {args.source}'s lack rows the decks read): {', '.join(taken)}")
    rendered = []
    if not args.no_render:
        pdf = chromium() is not None
        if not pdf:
            lines.append("no Chromium found (CHROME_PATH, chromium): HTML only; for PDF, apt-get install chromium")
        rendered = [str(p) for p in render(paths, pdf=pdf)]
        lines += [f"  {p}" for p in rendered]
    return Output({"decks": [str(p) for p in paths], "rendered": rendered}, "\n".join(lines))
