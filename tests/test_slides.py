"""The decks (slides/*.md) fill from the recorded GPU run with no placeholder left, every slide has
speaker notes, and bad placeholders or sources get one clear message with nothing written."""
import base64
import json
import shutil
import subprocess

import pytest

from common.cli import main
from common.errors import WorkshopError
from common.paths import REPO_ROOT
from common.reports import save_figures
from common.slides import PLACEHOLDER, SLIDES, build, decks, fill, slides_of

RECORD = REPO_ROOT / "reports" / "h200"
RESULTS = {"lab": {"device": "GPU", "mode": "full", "date": "2026-12-03T10:00:00",
                   "rows": [{"what": "ppl, a", "value": 12.3456, "unit": "", "note": "1.0 MB"},
                            {"what": "ppl, b", "value": 20.0, "unit": "", "note": ""},
                            {"what": "bytes", "value": 269030016, "unit": "B", "note": ""},
                            {"what": "share |w|", "value": 0.4139, "unit": "", "note": ""}]}}


def test_every_deck_fills_from_the_recorded_run(tmp_path):
    paths = build(RECORD, tmp_path)
    assert [p.name for p in paths] == [d.name for d in decks()] and len(paths) == 10
    for path in paths:
        text = path.read_text()
        assert not PLACEHOLDER.search(text), f"{path.name} keeps a placeholder"
        assert "data:image/png;base64," in text or path.stem in ("opening", "closing"), path.name


@pytest.mark.parametrize("deck", decks(), ids=lambda p: p.name)
def test_every_slide_has_speaker_notes(deck):
    for k, slide in enumerate(slides_of(deck.read_text()), start=1):
        assert "<!--" in slide and "-->" in slide, f"{deck.name}, slide {k} has no speaker notes"


def test_placeholders_format_values_notes_metadata_and_verdicts(tmp_path):
    text = ("{{ lab | ppl, a }} {{ lab | ppl, a | .1f }} {{ lab | bytes }} {{ lab | bytes | MB }} "
            "{{ lab | share |w| | % }} {{ lab | ppl, a | note }} {{ lab | @device }} {{ lab | @date }} "
            "{{ check | lab | ppl, a | < | lab | ppl, b }} {{ check | lab | ppl, b | < | lab | ppl, a }} "
            "{{ check | lab | ppl, b | > | 15 }}")
    filled, problems = fill(text, RESULTS, tmp_path)
    assert problems == []
    assert filled == ("12.35 12.3 269,030,016 269.0 MB 41% 1.0 MB GPU 2026-12-03 holds **does not hold here** "
                      "holds")


def test_a_placeholder_without_a_value_is_reported_with_a_suggestion(tmp_path):
    filled, problems = fill("{{ lab | ppl a }} {{ other | x }} {{ figure | lab | 3 }} {{ lab | ppl, a | @x }}",
                            RESULTS, tmp_path)
    assert filled.startswith("{{ lab | ppl a }}")
    assert len(problems) == 4
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
