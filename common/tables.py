"""A lab's main comparison outside the notebook (`workshop quantize --table lab02`, `workshop prune
--table lab03`): one model, one calibration batch, and the lab's evaluation protocol (the sweep's
windows) on every evaluation text, so that its numbers can be set beside the notebook's."""
import copy
import time

from tqdm.auto import tqdm


def run_lab_table(model, tokenizer, protocol, lab: str, jobs: list, columns: list, baseline_name: str,
                  note: str = "") -> dict:
    """`jobs`: [(name, method(model, calib) -> (model, seconds or None))]: each runs on a fresh copy of
    the model, timed here when it does not time itself. `columns`: [(key, header, width, format,
    measure(name, model) -> value)], reported after the method's name, before the perplexities."""
    calib = protocol.calibration(tokenizer, model=model)

    def row(name, m, seconds):
        results = protocol.evaluate(m, tokenizer, progress=False)
        return {"method": name, **{key: measure(name, m) for key, _, _, _, measure in columns},
                "ppl": {text: r.ppl for text, r in results.items()}, "seconds": seconds}, results

    first, baseline = row(baseline_name, model, 0.0)
    rows = [first]
    for name, method in tqdm(jobs, desc=f"{lab} table"):
        start = time.perf_counter()
        edited, seconds = method(copy.deepcopy(model), calib)
        rows.append(row(name, edited, time.perf_counter() - start if seconds is None else seconds)[0])
        del edited
    return {"table": lab, "model": getattr(model, "workshop_spec", type(model).__name__),
            "protocol": {text: r.protocol() for text, r in baseline.items()},
            "calibration": protocol.calibration_label(), "note": note,
            "columns": [(key, header, width, fmt) for key, header, width, fmt, _ in columns], "rows": rows}


def table_text(result: dict) -> str:
    """The table as printed: one row per method, a PPL column per evaluation text, then the protocol."""
    texts = list(result["rows"][0]["ppl"])
    lines = [f"{'method':34s} " + " ".join(f"{header:>{width}s}" for _, header, width, _ in result["columns"]) +
             "".join(f" {'PPL ' + text:>16s}" for text in texts) + f" {'time s':>7s}"]
    for r in result["rows"]:
        lines.append(f"{r['method']:34s} " + " ".join(f"{r[key]:{width}{fmt}}" for key, _, width, fmt in result["columns"])
                     + "".join(f" {r['ppl'][text]:16.2f}" for text in texts) + f" {r['seconds']:7.1f}")
    lines += [f"[{text}: {protocol}]" for text, protocol in result["protocol"].items()]
    lines.append(f"[calibration {result['calibration']}{result['note']}]")
    return "\n".join(lines)


def calibration_table(model, tokenizer, protocol, calib_texts: list, jobs: list, references: list = (),
                      progress: bool = True, measured: dict | None = None, baseline: dict | None = None) -> dict:
    """Which methods fit their calibration text: every job in `jobs` [(name, method(model, calib) -> model)]
    calibrated on each text of `calib_texts` (names or '+' mixes), evaluated on every evaluation text of
    `protocol`; `references` are calibration-free rows (RTN, magnitude) measured once.
    `measured`: {(name, calib text or None for a reference): {text: ppl}} of cells already measured on
    this model with this protocol's calibration size and evaluation windows (a notebook's earlier runs),
    taken over instead of run again; `baseline`: the model's {text: ppl} on this protocol, likewise.
    Returns {"rows": [{"method", "calib", "ppl": {text: ppl}}], "baseline": {text: ppl}}."""
    from dataclasses import replace
    measured = measured or {}

    def measure(m):
        return {text: r.ppl for text, r in protocol.evaluate(m, tokenizer, progress=False).items()}

    def cell(name, calib_data, method, calib):
        if (name, calib_data) in measured:
            return dict(measured[(name, calib_data)])
        return measure(method(copy.deepcopy(model), calib))

    rows = [{"method": name, "calib": None, "ppl": cell(name, None, method, None)} for name, method in references]
    for calib_data in tqdm(calib_texts, desc="calibration texts", disable=not progress):
        if all((name, calib_data) in measured for name, _ in jobs):
            calib = None   # every cell of this text was measured already
        else:
            calib = replace(protocol, calib_data=calib_data).calibration(tokenizer, model=model)
        for name, method in jobs:
            rows.append({"method": name, "calib": calib_data, "ppl": cell(name, calib_data, method, calib)})
    return {"baseline": dict(baseline) if baseline is not None else measure(model), "rows": rows,
            "calibration": protocol.calibration_label(), "protocol": protocol.describe()}


def calibration_matrix_text(rows: list) -> str:
    """A calibration study (`calibration_table`'s rows) as a matrix: a line per method, a column per
    calibration text ('-': calibration-free), each cell the perplexities on the evaluation texts joined
    by ' / ' (wiki / python-docs by default)."""
    if not rows:
        return "(no rows)"
    calibs = list(dict.fromkeys(row["calib"] or "-" for row in rows))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    cells = {(row["method"], row["calib"] or "-"): row["ppl"] for row in rows}
    texts = list(rows[0]["ppl"])
    width = max(18, 9 * len(texts))

    def cell(ppl):
        return " / ".join(f"{ppl[t]:.1f}" for t in texts) if ppl else ""

    lines = [f"{'calibrated on:':18s}" + "".join(f"{c:>{width}s}" for c in calibs)]
    lines += [f"{method:18s}" + "".join(f"{cell(cells.get((method, c))):>{width}s}" for c in calibs) for method in methods]
    return "\n".join(lines)


def recorded_calibration_rows(recorded_rows: dict) -> list:
    """`calibration_table`'s rows rebuilt from a results.json entry's rows {what: value}, whose names are
    'calibration study: METHOD calibrated on CALIB, PPL TEXT' (CALIB '-' for none)."""
    import re
    pattern = re.compile(r"^calibration study: (.+) calibrated on (.+), PPL (.+)$")
    rows = {}
    for what, value in recorded_rows.items():
        match = pattern.match(what)
        if match:
            method, calib, text = match.groups()
            key = (method, None if calib == "-" else calib)
            rows.setdefault(key, {"method": method, "calib": key[1], "ppl": {}})["ppl"][text] = value
    return list(rows.values())
