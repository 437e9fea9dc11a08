"""The generated labs run top to bottom with every exercise unsolved: each check says so once and the
lab goes on with the reference answer, up to its results table.

`make test` runs all eight in smoke mode (the embedded model cut to a few layers: the lab's flow, not
its numbers); `make test-labs` runs them in quick mode (WORKSHOP_TEST_LABS_MODE=quick).
"""
import os

import nbformat
import pytest

from common.notebooks import BEGIN, LABS, SOLUTIONS, execute_notebook

MODE = os.environ.get("WORKSHOP_TEST_LABS_MODE", "smoke")


@pytest.mark.parametrize("path", sorted(LABS.glob("*.ipynb")), ids=lambda p: p.name)
def test_a_lab_with_every_exercise_unsolved_runs_to_its_results_table(path, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_REPORTS", str(tmp_path))   # its results table must not touch reports/
    nb, error = execute_notebook(path, MODE)
    assert error is None, f"{path.name} stopped: {str(error).strip().splitlines()[-1]}"
    outputs = ["".join(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    solution = nbformat.read(SOLUTIONS / path.name, as_version=4)
    exercises = sum(c.source.count(BEGIN) for c in solution.cells if c.cell_type == "code")
    assert sum(text.count("NOT SOLVED YET") for text in outputs) == exercises
    assert (tmp_path / "results.json").is_file()
