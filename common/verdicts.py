"""Verdicts: a claim from the literature or the lab's text, judged by numbers the lab computed.

A lab states a claim and passes the comparison that decides it; the verdict printed is "holds" or
"does not hold here", with the evidence beside it. Two things withhold a verdict instead:
- smoke mode (CI's run of the unsolved labs, on a model cut to a few layers): its numbers mean nothing;
- a failed sanity gate: the compressed model the claim rests on started more than `factor` times above
  the whole model's perplexity, so the comparison would be between broken models.
Where the mode's own numbers cannot carry a verdict (too few tokens on a CPU), the lab judges the
recorded GPU run instead (`recorded_run`) and says so with `judged_on`.

Every verdict given is added to the lab's results (what: "verdict: CLAIM"), so reports and slides show
the same words.
"""
import json
from dataclasses import dataclass, field

from .budgets import current_mode
from .paths import REPO_ROOT

HOLDS, FAILS = "holds", "does not hold here"


@dataclass(frozen=True)
class Gate:
    """A model's starting perplexity must be within `factor` x the whole model's for a verdict on it."""
    what: str
    start_ppl: float
    whole_ppl: float
    factor: float = 2.0

    @property
    def ok(self) -> bool:
        return self.start_ppl <= self.factor * self.whole_ppl

    def why(self) -> str:
        return (f"{self.what} starts at PPL {self.start_ppl:,.4g}, more than {self.factor:g}x the whole "
                f"model's {self.whole_ppl:,.4g}")


class Verdicts:
    """`verdict(claim, holds, evidence)` prints and records one verdict; returns HOLDS, FAILS or None."""

    def __init__(self, results=None, mode: str | None = None):
        self.results = results
        self.mode = mode or current_mode()
        self.given = []   # (claim, verdict or None, evidence, judged_on)

    def __call__(self, claim: str, holds: bool, evidence: str = "", *, gates=(), judged_on: str = "") -> str | None:
        failed = [gate for gate in gates if not gate.ok]
        basis = f" [judged on {judged_on}]" if judged_on else ""
        if self.mode == "smoke":
            verdict, line = None, f"no verdict in smoke mode (a cut model): {claim}"
        elif failed:
            verdict, line = None, f"no verdict: {claim}; " + "; ".join(g.why() for g in failed)
        else:
            verdict = HOLDS if holds else FAILS
            line = f"{verdict.upper()}: {claim}" + (f" ({evidence})" if evidence else "") + basis
        print(line)
        self.given.append((claim, verdict, evidence, judged_on))
        if self.results is not None and verdict is not None:
            self.results.add(f"verdict: {claim}", verdict, "", "; ".join(x for x in (evidence, judged_on) if x))
        return verdict


@dataclass(frozen=True)
class RecordedRun:
    """One lab's entry of a recorded reports folder (e.g. reports/h200): its rows by name."""
    lab: str
    device: str
    mode: str
    date: str
    rows: dict
    notes: dict = field(default_factory=dict)   # {what: (unit, note)} of every row

    def value(self, what: str):
        if what not in self.rows:
            raise KeyError(f"the recorded run of {self.lab} ({self.device}) has no row {what!r}")
        return self.rows[what]

    def label(self) -> str:
        return f"the recorded {self.mode}-mode run on {self.device.split(' (')[0]} ({self.date[:10]})"


GPU_FOLDERS = ("h200", "h100")   # where full-mode runs are recorded, one folder per card


def recorded_run(lab: str, folder: str = "h200") -> RecordedRun | None:
    """`lab`'s latest run in reports/`folder`/results.json, or None where that file or lab is missing.
    folder="latest": the most recent of the GPU folders' runs of `lab` (each run's rows from one card)."""
    if folder == "latest":
        runs = [run for run in (recorded_run(lab, name) for name in GPU_FOLDERS) if run is not None]
        return max(runs, key=lambda run: run.date, default=None)  # max keeps the first of equal dates
    path = REPO_ROOT / "reports" / folder / "results.json"
    if not path.is_file():
        return None
    entry = json.loads(path.read_text()).get(lab)
    if entry is None:
        return None
    return RecordedRun(lab, entry.get("device", "?"), entry.get("mode", "?"), entry.get("date", "?"),
                       {row["what"]: row["value"] for row in entry.get("rows", [])},
                       {row["what"]: (row.get("unit", ""), row.get("note", "")) for row in entry.get("rows", [])})
