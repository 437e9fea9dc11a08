"""The generated labs run top to bottom with every exercise unsolved: each check says so once and the
lab goes on with the reference answer, up to its results table.

In smoke mode (the embedded model cut to a few layers: the lab's flow, not its numbers) by default:
`make test` runs all eight (about 9 minutes on 2 cores); `make test-labs` runs only them, in quick
mode with LABS_MODE=quick (WORKSHOP_TEST_LABS_MODE).
"""
import os

import nbformat
import pytest

from common.notebooks import BEGIN, LABS, SOLUTIONS, execute_notebook

MODE = os.environ.get("WORKSHOP_TEST_LABS_MODE", "smoke")


@pytest.mark.parametrize("path", sorted(LABS.glob("*.ipynb")), ids=lambda p: p.name)
def test_a_lab_with_every_exercise_unsolved_runs_to_its_results_table(path, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKSHOP_REPORTS", str(tmp_path))   # its results table must not touch reports/
    mode_here = os.environ.get("WORKSHOP_MODE")
    nb, error = execute_notebook(path, MODE)
    assert os.environ.get("WORKSHOP_MODE") == mode_here   # nbval's kernels, started later, inherit it
    assert error is None, f"{path.name} stopped: {str(error).strip().splitlines()[-1]}"
    outputs = ["".join(o.get("text", "")) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    solution = nbformat.read(SOLUTIONS / path.name, as_version=4)
    exercises = sum(c.source.count(BEGIN) for c in solution.cells if c.cell_type == "code")
    assert sum(text.count("NOT SOLVED YET") for text in outputs) == exercises
    assert (tmp_path / "results.json").is_file()
