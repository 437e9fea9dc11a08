"""The measured numbers each lab closes with, collected in reports/results.json.

Notebooks, `make reproduce` and the slides read the same file, so a figure is typed nowhere: it is
computed in a lab, recorded here with the device, versions, mode and date, and shown from here.
"""
import datetime
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def reports_dir() -> Path:
    return Path(os.environ.get("WORKSHOP_REPORTS", REPO_ROOT / "reports"))


def results_path() -> Path:
    return reports_dir() / "results.json"


def write_json_atomic(path: Path, data) -> None:
    """Write aside, then rename: a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is for everyone who reads the folder
    os.replace(tmp, path)


def load_results() -> dict:
    path = results_path()
    return json.loads(path.read_text()) if path.is_file() else {}


@dataclass
class LabResults:
    """Rows of (what, value, unit, note) for one lab; `save()` merges them into results.json."""
    lab: str
    rows: list = field(default_factory=list)

    def add(self, what: str, value, unit: str = "", note: str = "") -> None:
        self.rows = [r for r in self.rows if r["what"] != what]
        self.rows.append({"what": what, "value": value, "unit": unit, "note": note})

    def save(self) -> Path:
        from .budgets import current_mode
        from .hardware import device_description, package_versions
        everything = load_results()
        everything[self.lab] = {
            "mode": current_mode(), "device": device_description(), "versions": package_versions(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "rows": self.rows}
        write_json_atomic(results_path(), everything)
        return results_path()

    def markdown(self) -> str:
        lines = ["| what | value | unit | note |", "|---|---|---|---|"]
        for r in self.rows:
            value = f"{r['value']:.4g}" if isinstance(r["value"], float) else r["value"]
            lines.append(f"| {r['what']} | {value} | {r['unit']} | {r['note']} |")
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.markdown()
