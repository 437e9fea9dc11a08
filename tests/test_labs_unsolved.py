"""The generated labs run top to bottom with every exercise unsolved: each check says so once and the
lab goes on with the reference answer, up to its results table.

CI runs the labs that take about a minute on its CPUs; WORKSHOP_TEST_ALL_LABS=1 (`make test-labs`)
runs all eight.
"""
import os

import nbformat
import pytest

from common.notebooks import BEGIN, LABS, SOLUTIONS, execute_notebook

IN_CI = ("00_", "01_", "06_")
ALL = os.environ.get("WORKSHOP_TEST_ALL_LABS") == "1"


@pytest.mark.parametrize("path", sorted(LABS.glob("*.ipynb")), ids=lambda p: p.name)
def test_a_lab_with_every_exercise_unsolved_runs_to_its_results_table(path, tmp_path, monkeypatch):
    if not (ALL or path.name.startswith(IN_CI)):
        pytest.skip("a long lab: WORKSHOP_TEST_ALL_LABS=1 (make test-labs) runs it")
    monkeypatch.setenv("WORKSHOP_REPORTS", str(tmp_path))   # its results table must not touch reports/
    nb, error = execute_notebook(path, "quick")
    assert error is None, f"{path.name} stopped: {str(error).strip().splitlines()[-1]}"
    outputs = ["".join(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    solution = nbformat.read(SOLUTIONS / path.name, as_version=4)
    exercises = sum(c.source.count(BEGIN) for c in solution.cells if c.cell_type == "code")
    assert sum(text.count("NOT SOLVED YET") for text in outputs) == exercises
    assert (tmp_path / "results.json").is_file()
