import nbformat
import pytest

from common.notebooks import BEGIN, LABS, SOLUTIONS, bound_names, stale_labs, strip_solutions

SOLUTION_FILES = sorted(SOLUTIONS.glob("*.ipynb"))


def test_labs_are_generated_from_solutions():
    assert SOLUTION_FILES
    assert stale_labs() == [], "labs/ is stale: run `make labs` (or `make refresh` after editing outputs)"


def test_strip_solutions_keeps_indentation():
    src = "x = 1\nif True:\n    ### BEGIN SOLUTION\n    y = 2\n    ### END SOLUTION\nprint(y)"
    assert strip_solutions(src) == ("x = 1\nif True:\n    # TODO: your code here\n"
                                    '    raise NotImplementedError("Exercise: replace this line with your solution")\n'
                                    "print(y)")
    with pytest.raises(ValueError):
        strip_solutions("### BEGIN SOLUTION\nx = 1")


def test_an_answer_at_the_top_of_a_cell_becomes_a_placeholder_for_what_the_notebook_reads():
    src = "### BEGIN SOLUTION\nparts = [n * 2 for n in range(3)]\ntotal = sum(parts)\n### END SOLUTION\ncheck(total)"
    assert strip_solutions(src, read_elsewhere={"total", "n", "check"}).splitlines()[1:] == ["total = ...", "check(total)"]
    with pytest.raises(ValueError, match="binds nothing"):
        strip_solutions(src, read_elsewhere={"check"})
    assert bound_names("def f(x):\n    y = x\n    return y\na, (b, c) = 1, (2, 3)\nfor i in [a]:\n    d = i") == [
        "f", "a", "b", "c", "i", "d"]


@pytest.mark.parametrize("path", SOLUTION_FILES, ids=lambda p: p.name)
def test_each_lab_has_header_exercises_and_checks(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0].source
    for heading in ("Learning goals", "Prerequisites", "Time budget"):
        assert heading in first, f"{path.name}: header lacks {heading}"
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    exercises = [c for c in code if BEGIN in c]
    assert len(exercises) >= 3, f"{path.name}: fewer than 3 exercises"
    assert sum("check" in c for c in code) >= 3, f"{path.name}: fewer than 3 checked cells"
    assert any("LabResults" in c for c in code), f"{path.name}: no closing results table"
    lab = nbformat.read(LABS / path.name, as_version=4)
    assert not any(c.get("outputs") for c in lab.cells if c.cell_type == "code")


def test_a_prediction_left_open_is_not_said_to_get_a_reference_answer():
    src = '### BEGIN SOLUTION\nguess = "wiki"\n### END SOLUTION\nguess = predicted("lowest", guess)'
    stripped = strip_solutions(src, {"guess"})
    assert "the lab measures without your prediction" in stripped and "reference answer" not in stripped
    assert "guess = ..." in stripped
