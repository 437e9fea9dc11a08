"""The decks (slides/*.md) fill from the recorded GPU run with no placeholder left, every slide has
speaker notes, and bad placeholders or sources get one clear message with nothing written."""
import base64
import json
import re
import shutil
import subprocess

import pytest

from common.cli import main
from common.errors import WorkshopError
from common.paths import REPO_ROOT
from common.reports import save_figures
from common.slides import (PLACEHOLDER, SAME_MEASUREMENT, SLIDES, build, decks, fill, rows_used, slides_of,
                           support_matrix, two_sources)

RECORD = REPO_ROOT / "reports" / "h200"
RESULTS = {"lab": {"device": "GPU", "mode": "full", "date": "2026-12-03T10:00:00",
                   "rows": [{"what": "ppl, a", "value": 12.3456, "unit": "", "note": "1.0 MB, 0.5 s"},
                            {"what": "ppl, b", "value": 20.0, "unit": "", "note": "on wiki; first third: 38.1"},
                            {"what": "bytes", "value": 269030016, "unit": "B", "note": ""},
                            {"what": "share |w|", "value": 0.4139, "unit": "", "note": ""}]}}


def test_every_deck_fills_from_the_recorded_run(tmp_path):
    paths = build(RECORD, tmp_path)
    assert [p.name for p in paths] == [d.name for d in decks()] and len(paths) == 11
    for path in paths:
        text = path.read_text()
        assert not PLACEHOLDER.search(text), f"{path.name} keeps a placeholder"
        assert "data:image/png;base64," in text or path.stem in ("opening", "closing"), path.name


def test_every_placeholder_of_every_deck_names_a_row_of_the_recorded_run():
    results = json.loads((RECORD / "results.json").read_text())
    for deck in decks():
        filled, problems = fill(deck.read_text(), results, RECORD)
        assert problems == [], f"{deck.name}: {problems}"
        assert "{{" not in filled and "}}" not in filled, deck.name


def test_no_slide_shows_a_whole_note_or_a_timestamp(tmp_path):
    # notes are protocol strings ("269.0 MB, 0.0 s", "ours: 18.817", layer lists); a slide shows parts of them
    for path in build(RECORD, tmp_path):
        for k, slide in enumerate(slides_of(path.read_text()), start=1):
            shown = re.sub(r"<!--.*?-->", "", slide, flags=re.S)
            shown = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", shown)
            assert not re.search(r"\d{4}-\d\d-\d\dT\d\d:", shown), f"{path.name} slide {k}: a timestamp"
            assert not re.search(r"layers \[0|ours: \d|MB, \d+\.\d s|packed model \d", shown), f"{path.name} slide {k}: a raw note"


def test_each_lab_deck_opens_with_a_brief_and_closes_with_three_takeaways():
    for deck in decks():
        if not deck.stem.startswith("lab"):
            continue
        slides = slides_of(deck.read_text())
        brief = re.sub(r"<!--.*?-->", "", slides[0], flags=re.S)
        assert "**You will**" in brief and "**Watch for**" in brief, deck.name
        assert len(re.findall(r"^\d\. ", brief, re.M)) == 3, f"{deck.name}: three objectives"
        debrief = re.sub(r"<!--.*?-->", "", slides[-1], flags=re.S)
        assert "# What you learned" in debrief, deck.name
        assert len(re.findall(r"^\d\. ", debrief, re.M)) == 3, f"{deck.name}: three takeaways"
        assert PLACEHOLDER.search(debrief), f"{deck.name}: the takeaways carry the run's numbers"


def test_the_debrief_shows_the_run_s_own_takeaways_and_the_deck_s_text_for_an_older_run(tmp_path):
    deck = "# What you learned\n\n{{ takeaways | lab }}\n1. PPL {{ lab | ppl, a | .1f }}\n2. b\n3. c\n{{ end takeaways }}\n"
    older, problems = fill(deck, RESULTS, tmp_path)
    assert problems == [] and older == "# What you learned\n\n1. PPL 12.3\n2. b\n3. c\n"
    computed = {"lab": RESULTS["lab"] | {"takeaways": ["one | 1", "two", "three"]}}
    newer, problems = fill(deck, computed, tmp_path)
    assert problems == [] and newer == "# What you learned\n\n1. one | 1\n2. two\n3. three\n"
    assert rows_used(deck) == {("lab", "ppl, a")}


def test_a_measurement_recorded_by_two_labs_is_shown_from_one_row():
    texts = [deck.read_text() for deck in decks()]
    assert two_sources(texts) == []
    # and the rule bites: lab 03's and lab 06's timings of one 2:4 product on one deck are refused
    both = "{{ 03_pruning_and_low_rank | 2:4 matmul speed-up, M=16, 8192x8192 | x }} " \
           "{{ 06_hardware_and_kernels | 2:4 vs dense bf16, M=16 x 8192 x 8192 | x }}"
    assert len(two_sources([both])) == 1
    assert rows_used("{{ check | a | x | < | b | y | in-note }} {{ a | @device }} {{ plot | roofline }}") == {("a", "x"), ("b", "y")}
    assert all(len(group) > 1 for group in SAME_MEASUREMENT)


def test_no_two_rows_the_decks_show_hold_the_same_measured_value():
    # the same number recorded under two names (a baseline copied into every lab, one benchmark timed
    # twice) would be one quantity shown from two rows: the decks must pick one
    results = json.loads((RECORD / "results.json").read_text())
    values = {}
    for lab, what in set().union(*(rows_used(deck.read_text()) for deck in decks())):
        value = next(row["value"] for row in results[lab]["rows"] if row["what"] == what)
        if isinstance(value, float) and value not in (0.0, 1.0):
            values.setdefault(f"{value:.6g}", []).append((lab, what))
    assert {v: rows for v, rows in values.items() if len(rows) > 1} == {}


def test_build_refuses_two_rows_of_one_measurement(tmp_path, monkeypatch):
    source = tmp_path / "reports"
    source.mkdir()
    (source / "results.json").write_text((RECORD / "results.json").read_text())
    deck = tmp_path / "d.md"
    deck.write_text("{{ 00_baseline | memory bandwidth (copy) }} {{ 06_hardware_and_kernels | memory bandwidth (copy) }}")
    monkeypatch.setattr("common.slides.decks", lambda: [deck])
    with pytest.raises(WorkshopError, match="one measurement shown from two rows"):
        build(source, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_every_claims_ledger_row_carries_a_computed_verdict(tmp_path):
    closing = [d for d in decks() if d.stem == "closing"][0]
    ledgers = [s for s in slides_of(closing.read_text()) if "# Claims ledger" in s]
    assert len(ledgers) == 3
    results = json.loads((RECORD / "results.json").read_text())
    for ledger in ledgers:
        rows = [line for line in ledger.splitlines() if line.startswith("| ") and not line.startswith("| claim")]
        assert rows
        for row in rows:
            assert "{{ check |" in row, f"no computed verdict: {row[:80]}"
            filled, problems = fill(row, results, RECORD)
            assert problems == [] and ("holds" in filled or "does not hold here" in filled)
    # the sensitivity claim is judged against the number in the row's note, and fails on this record
    filled, _ = fill("{{ check | 03_pruning_and_low_rank | Wanda 2:4, last third dense | < | "
                     "03_pruning_and_low_rank | Wanda 2:4, last third dense | in-note }}", results, RECORD)
    assert filled == "**does not hold here**"


def test_support_matrix_is_doctor_s_feature_table_by_generation():
    from common.hardware import FEATURES
    table = support_matrix().splitlines()
    assert len(table) == 2 + len(FEATURES)
    nvfp4 = next(line for line in table if line.startswith("| NVFP4"))
    assert nvfp4.count("✔") == 1 and nvfp4.rstrip(" |").endswith("✔")    # Blackwell only
    fp8 = next(line for line in table if line.startswith("| FP8"))
    assert fp8.count("✔") == 3                                             # Ada, Hopper, Blackwell


def test_slide_figures_draw_from_the_results_and_say_what_is_missing():
    from common.slide_figures import FIGURES, draw
    results = json.loads((RECORD / "results.json").read_text())
    for name in FIGURES:
        assert draw(name, results)[:4] == b"\x89PNG", name
    with pytest.raises(KeyError, match="no such row"):
        draw("roofline", {"06_hardware_and_kernels": {"rows": []}})


@pytest.mark.parametrize("deck", decks(), ids=lambda p: p.name)
def test_every_slide_has_speaker_notes(deck):
    for k, slide in enumerate(slides_of(deck.read_text()), start=1):
        assert "<!--" in slide and "-->" in slide, f"{deck.name}, slide {k} has no speaker notes"


def test_placeholders_format_values_notes_metadata_and_verdicts(tmp_path):
    text = ("{{ lab | ppl, a }} {{ lab | ppl, a | .1f }} {{ lab | bytes }} {{ lab | bytes | MB }} "
            "{{ lab | share |w| | % }} {{ lab | ppl, a | note:1 }} {{ lab | ppl, b | note:2 }} {{ lab | ppl, b | in-note }} "
            "{{ lab | @device }} {{ lab | @date }} "
            "{{ check | lab | ppl, a | < | lab | ppl, b }} {{ check | lab | ppl, b | < | lab | ppl, a }} "
            "{{ check | lab | ppl, b | > | 15 }} {{ check | lab | ppl, a | < | lab | ppl, b | in-note }}")
    filled, problems = fill(text, RESULTS, tmp_path)
    assert problems == []
    assert filled == ("12.35 12.3 269,030,016 269.0 MB 41% 1.0 MB first third: 38.1 38.1 GPU 2026-12-03 holds "
                      "**does not hold here** holds holds")


def test_a_placeholder_without_a_value_is_reported_with_a_suggestion(tmp_path):
    filled, problems = fill("{{ lab | ppl a }} {{ other | x }} {{ figure | lab | 3 }} {{ lab | ppl, a | @x }} "
                            "{{ lab | ppl, a | in-note }} {{ plot | nothing }}", RESULTS, tmp_path)
    assert filled.startswith("{{ lab | ppl a }}")
    assert len(problems) == 6 and "holds 2 numbers, not one" in problems[4] and "no such slide figure" in problems[5]
    assert "did you mean ['ppl, a'" in problems[0] and "lab other" in problems[1] and "figure 3" in problems[2]


def test_build_writes_nothing_when_a_placeholder_is_unfilled(tmp_path):
    source = tmp_path / "reports"
    source.mkdir()
    (source / "results.json").write_text(json.dumps(RESULTS))
    with pytest.raises(WorkshopError, match="Placeholders with no value") as caught:
        build(source, tmp_path / "out")
    assert "opening.md" in str(caught.value) and not (tmp_path / "out").exists()


def test_cli_bad_source_exits_2(tmp_path, capsys):
    assert main(["slides", "--source", str(tmp_path / "none"), "--out", str(tmp_path / "out"), "--no-render"]) == 2
    err = capsys.readouterr().err
    assert "results.json does not exist" in err and "What to do" in err and not (tmp_path / "out").exists()


def test_figures_are_saved_in_page_order_and_replace_an_earlier_run(tmp_path):
    pngs = [b"\x89PNG first", b"\x89PNG second"]
    page = "".join(f'<img src="data:image/png;base64,{base64.b64encode(p).decode()}">' for p in pngs)
    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "lab-3.png").write_bytes(b"stale")
    paths = save_figures(page, tmp_path, "lab")
    assert [p.name for p in paths] == ["lab-1.png", "lab-2.png"] and [p.read_bytes() for p in paths] == pngs
    assert not (tmp_path / "figures" / "lab-3.png").exists()


@pytest.mark.skipif(not (SLIDES / "node_modules" / ".bin" / "marp").is_file(),
                    reason="the Marp CLI is installed by `make slides` (npm ci in slides/)")
def test_marp_renders_a_deck_to_one_self_contained_html_file(tmp_path):
    from common.slides import render
    path = [p for p in build(RECORD, tmp_path) if p.name == "lab05.md"][0]
    html = render([path], pdf=False)[0].read_text()
    assert "data:image/png;base64," in html and "{{" not in html and "P-KD-Q" in html


@pytest.mark.parametrize("lab", [f"{n:02d}" for n in range(8)])
def test_each_lab_deck_lists_the_exercises_its_notebook_asks_in_order_and_kind(lab):
    """The deck's exercise slide mirrors the lab: one item per `**Exercise N (kind).**`, same order, same kind."""
    notebook = next((REPO_ROOT / "solutions").glob(f"{lab}_*.ipynb"))
    asked = re.findall(r"\*\*Exercise (\d+) \(([a-z, ]+)\)\.\*\*", notebook.read_text())
    deck = (SLIDES / f"lab{lab}.md").read_text()
    slide = deck[deck.index("# Exercises\n"):].split("\n---", 1)[0]
    listed = re.findall(r"^(\d+)\. \*([a-z, ]+)\*:", slide, flags=re.M)
    assert asked and listed == asked


def test_a_lab_whose_run_lacks_a_row_the_decks_read_comes_whole_from_the_fallback(tmp_path):
    """After a quick-mode make reproduce, reports/ lacks long-context rows: such a lab is taken whole from the
    recorded run (one lab, one run), the labs that have everything stay, and the decks fill."""
    from common.slides import runs_for_decks
    source = tmp_path / "reports"
    shutil.copytree(RECORD / "figures", source / "figures")
    results = json.loads((RECORD / "results.json").read_text())
    results["03_pruning_and_low_rank"]["rows"] = [row for row in results["03_pruning_and_low_rank"]["rows"]
                                                 if row["what"] != "perplexity SparseGPT 2:4, wiki"]
    results["03_pruning_and_low_rank"]["date"] = "2026-12-08T00:00:00"
    (source / "results.json").write_text(json.dumps(results))
    runs, taken = runs_for_decks(source, RECORD)
    assert taken == ["03_pruning_and_low_rank"]
    assert runs["03_pruning_and_low_rank"]["date"] != "2026-12-08T00:00:00"
    assert runs["02_post_training_quantization"]["folder"] == str(source)
    assert len(build(source, tmp_path / "out", RECORD)) == len(decks())
    with pytest.raises(WorkshopError, match="SparseGPT 2:4, wiki"):   # no fallback: the missing row is named
        build(source, tmp_path / "out2")


def test_runtime_is_the_recorded_full_mode_time_of_the_lab(tmp_path, monkeypatch):
    """A deck types no run time: {{ LAB | @runtime }} reads the lab's last full-mode run from timings.json."""
    monkeypatch.setenv("WORKSHOP_REPORTS", str(tmp_path))
    (tmp_path / "timings.json").write_text(json.dumps(
        {"full": {"lab": {"seconds": 1181, "device": "NVIDIA H200 (sm_90, CUDA 13.0)", "date": "2026-12-03"}}}))
    filled, problems = fill("Run All takes {{ lab | @runtime }}.", RESULTS, tmp_path)
    assert problems == [] and filled == "Run All takes 20 min (NVIDIA H200)."
    (tmp_path / "timings.json").write_text(json.dumps({"full": {}}))
    _, problems = fill("{{ lab | @runtime }}", RESULTS, tmp_path)
    assert len(problems) == 1 and "no full-mode run of lab" in problems[0]
