"""The shape of a lab that teaches: exercise kinds, predictions, verdicts, explained answers, takeaways.

COURSE.md's teaching rules, checked on every solution: exercises that make the learner implement,
predict or explain (each marked in its markdown as **Exercise N (kind).**), an answer in the solution
for every explain exercise and none in the lab, a "Going further" section after the core path, a
closing "What you learned" with three computed takeaways, and glossary links that resolve.
"""
import re

import nbformat
import pytest

from common.checks import compare_prediction, predicted
from common.notebooks import ANSWER_BEGIN, ANSWER_END, ANSWER_PLACEHOLDER, LABS, SOLUTIONS, make_lab, strip_answers
from common.paths import REPO_ROOT
from common.reports import LabResults
from common.verdicts import FAILS, HOLDS, Gate, Verdicts, recorded_run

SOLUTION_FILES = sorted(SOLUTIONS.glob("*.ipynb"))
KINDS = ("implement", "predict, then measure", "explain")
EXERCISE = re.compile(r"\*\*Exercise (\d+) \((implement|predict, then measure|explain)\)\.\*\*")


def exercises(path) -> list:
    """[(number, kind, cell index)] of a solution, in order."""
    nb = nbformat.read(path, as_version=4)
    return [(int(n), kind, i) for i, cell in enumerate(nb.cells) if cell.cell_type == "markdown"
            for n, kind in EXERCISE.findall(cell.source)]


def test_a_prediction_is_a_number_or_a_choice_and_anything_else_is_said_once(capsys):
    assert predicted("speed-up", 2) == 2.0
    assert predicted("which third", " Last ", choices=("first", "middle", "last")) == "last"
    assert predicted("speed-up", ...) is None
    assert "NOT SOLVED YET: prediction" in capsys.readouterr().out
    for wrong in ("fast", True, float("nan"), [2]):
        assert predicted("speed-up", wrong) is None
        out = capsys.readouterr().out
        assert out.count("\n") == 1 and "should be a number" in out and "goes on without it" in out
    assert predicted("which third", "late", choices=("first", "last")) is None
    assert "should be one of 'first', 'last'" in capsys.readouterr().out


def test_a_prediction_is_printed_beside_the_measurement():
    assert "you predicted 2, measured 4: 2x higher than predicted" in compare_prediction("s", 2.0, 4.0)
    assert "measured 2.31: 16% higher than predicted" in compare_prediction("s", 2.0, 2.31)
    assert "measured 5.12: 15% lower than predicted" in compare_prediction("s", 6.0, 5.12)
    assert "0.5x" not in compare_prediction("s", 4.0, 2.0) and "2x lower" in compare_prediction("s", 4.0, 2.0)
    assert "not what you predicted" in compare_prediction("t", "last", "first")
    assert "as predicted" in compare_prediction("t", "first", "first")
    assert "no prediction was recorded" in compare_prediction("s", None, 3.0)


def test_a_verdict_is_given_recorded_or_withheld(capsys):
    results = LabResults("test")
    verdict = Verdicts(results, mode="quick")
    assert verdict("A beats B", True, "1 vs 2") == HOLDS
    assert verdict("B beats A", False, "2 vs 1", judged_on="the recorded run") == FAILS
    out = capsys.readouterr().out
    assert "HOLDS: A beats B (1 vs 2)" in out and "DOES NOT HOLD HERE: B beats A" in out and "recorded run" in out
    assert [r["what"] for r in results.rows] == ["verdict: A beats B", "verdict: B beats A"]
    broken = Gate("the pruned model", start_ppl=250.0, whole_ppl=12.0)
    assert not broken.ok and Gate("the pruned model", 20.0, 12.0).ok
    assert verdict("C beats D", True, gates=[broken]) is None
    assert "no verdict" in capsys.readouterr().out and len(results.rows) == 2
    smoke = Verdicts(results, mode="smoke")
    assert smoke("A beats B", True) is None and "smoke mode" in capsys.readouterr().out


def test_the_recorded_h200_run_is_read_by_row():
    run = recorded_run("00_baseline")
    assert run is not None and "H200" in run.device and run.mode == "full"
    assert run.value("parameters") == 134515008
    with pytest.raises(KeyError):
        run.value("no such row")
    assert recorded_run("99_no_such_lab") is None and recorded_run("99_no_such_lab", folder="latest") is None


def test_the_latest_recorded_run_is_the_most_recent_of_the_gpu_folders(tmp_path, monkeypatch):
    import json

    import common.verdicts
    for folder, date in (("h200", "2026-12-02T10:00:00"), ("h100", "2026-12-07T15:00:00")):
        (tmp_path / "reports" / folder).mkdir(parents=True)
        entry = {"device": f"NVIDIA {folder.upper()}", "mode": "full", "date": date, "rows": [{"what": "x", "value": 1}]}
        (tmp_path / "reports" / folder / "results.json").write_text(json.dumps({"00_a": entry, f"01_{folder}": entry}))
    monkeypatch.setattr(common.verdicts, "REPO_ROOT", tmp_path)
    assert "H100" in recorded_run("00_a", folder="latest").device   # the newer run
    assert "H200" in recorded_run("00_a").device                    # one card asked for by name
    assert "H200" in recorded_run("01_h200", folder="latest").device and recorded_run("01_h200", folder="h100") is None


def test_explained_answers_are_in_solutions_and_not_in_labs():
    text = f"**Exercise 3 (explain).** Why?\n\n{ANSWER_BEGIN}\nBecause.\n{ANSWER_END}\nAfter."
    assert strip_answers(text) == f"**Exercise 3 (explain).** Why?\n\n{ANSWER_PLACEHOLDER}\nAfter."
    for broken in (f"{ANSWER_BEGIN}\nx", f"x\n{ANSWER_END}", f"{ANSWER_BEGIN}\n{ANSWER_BEGIN}"):
        with pytest.raises(ValueError):
            strip_answers(broken)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(text)])
    assert "Because" not in make_lab(nb).cells[0].source


def test_three_takeaways_close_a_lab():
    results = LabResults("test")
    shown = results.what_you_learned("one", "two", "three")
    assert results.takeaways == ["one", "two", "three"] and "3. three" in shown.data
    with pytest.raises(ValueError):
        results.what_you_learned("only one")


@pytest.mark.parametrize("path", SOLUTION_FILES, ids=lambda p: p.name)
def test_each_lab_asks_to_implement_predict_and_explain(path):
    found = exercises(path)
    numbers = [n for n, _, _ in found]
    assert numbers == list(range(1, len(found) + 1)), f"{path.name}: exercises numbered {numbers}"
    assert any(kind == "implement" for _, kind, _ in found), f"{path.name}: nothing to implement"
    nb = nbformat.read(path, as_version=4)
    for n, kind, index in found:
        after = nb.cells[index].source.split(f"**Exercise {n} ", 1)[1]
        if kind == "explain":
            assert ANSWER_BEGIN in after and ANSWER_END in after, f"{path.name}: exercise {n} has no answer"
        else:
            code = next(c.source for c in nb.cells[index + 1:] if c.cell_type == "code")
            assert "### BEGIN SOLUTION" in code, f"{path.name}: exercise {n}'s next code cell is no exercise"
            if kind == "predict, then measure":
                assert "predicted(" in code, f"{path.name}: exercise {n} records no prediction"
                later = "".join(c.source for c in nb.cells[index + 1:] if c.cell_type == "code")
                assert "compare_prediction(" in later, f"{path.name}: exercise {n}'s prediction is never compared"


def test_the_course_asks_for_thinking_more_than_filling_in():
    kinds = [kind for path in SOLUTION_FILES for _, kind, _ in exercises(path)]
    assert kinds.count("implement") >= 12
    assert kinds.count("predict, then measure") >= 8
    assert kinds.count("explain") >= 8


@pytest.mark.parametrize("path", SOLUTION_FILES, ids=lambda p: p.name)
def test_each_lab_ends_with_going_further_and_what_you_learned(path):
    nb = nbformat.read(path, as_version=4)
    headings = [line for c in nb.cells if c.cell_type == "markdown" for line in c.source.splitlines()
                if line.startswith("## ")]
    titles = [h[3:].split(". ", 1)[-1] for h in headings]
    assert "Going further" in titles and "What you learned" in titles, f"{path.name}: {titles}"
    assert titles.index("Going further") < titles.index("What you learned")
    code = "".join(c.source for c in nb.cells if c.cell_type == "code")
    assert "what_you_learned(" in code


def test_glossary_links_resolve():
    anchors = set(re.findall(r'<a id="([^"]+)"></a>', (REPO_ROOT / "GLOSSARY.md").read_text()))
    assert len(anchors) > 50
    for path in SOLUTION_FILES + sorted(LABS.glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        text = "".join(c.source for c in nb.cells if c.cell_type == "markdown")
        links = re.findall(r"GLOSSARY\.md#([\w-]+)", text)
        assert links, f"{path.name} links to no glossary entry"
        assert set(links) <= anchors, f"{path.name}: unknown glossary entries {set(links) - anchors}"
