import json
import urllib.request

import pytest

from common.budgets import FULL, QUICK, get_budget
from common.offline import NetworkBlocked
from common.reports import LabResults, results_path


def test_network_is_blocked_in_tests():
    with pytest.raises((NetworkBlocked, urllib.error.URLError)):
        urllib.request.urlopen("http://example.com", timeout=5)


def test_budgets_come_from_one_place(monkeypatch):
    monkeypatch.setenv("WORKSHOP_MODE", "full")
    assert get_budget() == FULL and get_budget("quick") == QUICK
    assert get_budget(eval_seqlen=128).eval_seqlen == 128
    assert QUICK.eval_seqlen < FULL.eval_seqlen and QUICK.train_steps < FULL.train_steps
    smoke = get_budget("smoke")   # CI's unsolved-lab run: quick's code paths, smaller everywhere
    assert smoke.mode == "smoke" and smoke.eval_seqlen * smoke.eval_max_windows < QUICK.eval_seqlen * QUICK.eval_max_windows
    assert smoke.model_layers and QUICK.model_layers is None and FULL.model_layers is None


def test_results_are_merged_and_written_whole(reports_tmp):
    a = LabResults("00_test")
    a.add("ppl", 12.5, "", "note")
    a.add("ppl", 13.0)  # re-adding replaces
    a.save()
    LabResults("01_other", [{"what": "x", "value": 1, "unit": "", "note": ""}]).save()
    data = json.loads(results_path().read_text())
    assert set(data) == {"00_test", "01_other"}
    assert data["00_test"]["rows"] == [{"what": "ppl", "value": 13.0, "unit": "", "note": ""}]
    assert data["00_test"]["mode"] == "quick" and data["00_test"]["device"]
    assert not list(reports_tmp.glob(".*tmp"))
    assert "| ppl | 13 |" in a.markdown()


def test_a_new_run_keeps_the_old_one_and_the_summary_follows(reports_tmp):
    import stat
    LabResults("00_test", [{"what": "ppl", "value": 13.0, "unit": "", "note": ""}]).save()
    LabResults("00_test", [{"what": "ppl", "value": 12.0, "unit": "", "note": ""}]).save()
    LabResults("00_test", [{"what": "ppl", "value": 11.0, "unit": "", "note": ""}]).save()
    entry = json.loads(results_path().read_text())["00_test"]
    assert entry["rows"][0]["value"] == 11.0
    assert [run["rows"][0]["value"] for run in entry["earlier"]] == [12.0, 13.0]
    assert all("earlier" not in run and run["date"] for run in entry["earlier"])
    summary = (reports_tmp / "SUMMARY.md").read_text()
    assert "| ppl | 11 |" in summary and "| ppl | 12 |" not in summary and "the latest of 3 runs" in summary
    page = (reports_tmp / "index.html").read_text()
    assert "saved by the notebook at" in summary and "<td class='num'>11</td>" in page and ">12<" not in page
    for name in ("results.json", "SUMMARY.md", "index.html"):
        assert stat.S_IMODE((reports_tmp / name).stat().st_mode) == 0o644


def test_merge_reports_replaces_only_the_incoming_labs(tmp_path):
    import json

    from common.reproduce import merge_reports
    kept, incoming = tmp_path / "kept", tmp_path / "incoming"
    kept.mkdir(), incoming.mkdir()
    row = lambda v: {"rows": [{"what": "PPL", "value": v, "unit": "", "note": ""}], "device": "GPU", "mode": "full", "date": "d"}  # noqa: E731
    (kept / "results.json").write_text(json.dumps({"00_a": row(1.0), "02_b": row(2.0)}))
    (kept / "SUMMARY.md").write_text("## 00_a\n\nRun: ok in 5 s; x\n\n## 02_b\n\nRun: ok in 9 s; x\n")
    (incoming / "results.json").write_text(json.dumps({"02_b": row(3.0)}))
    (incoming / "SUMMARY.md").write_text("## 02_b\n\nRun: ok in 7 s; x\n")
    (incoming / "02_b.html").write_text("<html>new</html>")
    assert merge_reports(incoming, kept) == ["02_b"]
    merged = json.loads((kept / "results.json").read_text())
    assert merged["00_a"]["rows"][0]["value"] == 1.0 and merged["02_b"]["rows"][0]["value"] == 3.0
    assert [run["rows"][0]["value"] for run in merged["02_b"]["earlier"]] == [2.0] and merged["00_a"].get("earlier") in (None, [])
    summary = (kept / "SUMMARY.md").read_text()
    assert "Run: ok in 5 s;" in summary and "Run: ok in 7 s;" in summary and "ok in 9 s" not in summary
    assert (kept / "02_b.html").read_text() == "<html>new</html>"


def test_reports_are_readable_by_everyone(tmp_path):
    import stat

    from common.paths import write_json_atomic
    path = tmp_path / "results.json"
    write_json_atomic(path, {"a": 1})
    assert stat.S_IMODE(path.stat().st_mode) == 0o644 and not list(tmp_path.glob(".*.tmp"))


def test_a_failed_check_shows_counts_as_counts_and_its_tolerance():
    from common.checks import ExerciseFailed, check_close
    with pytest.raises(ExerciseFailed, match=r"got 53,084,160, expected 53,084,161 \(exactly\)"):
        check_close("parameters", 53084160, 53084161, 0.0, "count them")
    with pytest.raises(ExerciseFailed, match=r"got 1.23457, expected 2.5 \(within 0.01%\)"):
        check_close("ratio", 1.234567, 2.5, 1e-4, "divide")
    check_close("ratio", 2.50001, 2.5, 1e-4, "divide")


def test_the_machine_is_measured_once_per_process_and_once_per_reproduce_run(reports_tmp, monkeypatch):
    import torch

    from common import hardware
    from common.reports import write_summary
    calls = []
    monkeypatch.setattr(hardware, "copy_bandwidth_rates", lambda *a: calls.append("copy") or (2e9, 1e9, 3e9))
    monkeypatch.setattr(hardware, "matmul_rates", lambda *a: calls.append("matmul") or (5e10, 4e10, 6e10))
    monkeypatch.setattr(hardware, "_CEILINGS", {})
    monkeypatch.delenv("WORKSHOP_RUN_ID", raising=False)
    first = hardware.machine_ceilings("cpu", torch.float32)
    assert hardware.machine_ceilings("cpu", torch.float32) is first and calls == ["copy", "matmul"]
    assert "2.0 GB/s (1.0 to 3.0 over 10 copies)" in first.describe()
    assert not (reports_tmp / "machine.json").exists()      # outside a reproduce run nothing is stored
    monkeypatch.setenv("WORKSHOP_RUN_ID", "run-1")
    hardware._CEILINGS.clear()                               # a new notebook kernel of the same run
    stored = hardware.machine_ceilings("cpu", torch.float32)
    hardware._CEILINGS.clear()
    assert hardware.machine_ceilings("cpu", torch.float32) == stored and len(calls) == 4
    write_summary({})
    assert "measured once for the run started run-1: copy bandwidth 2.0 GB/s" in (reports_tmp / "SUMMARY.md").read_text()
    monkeypatch.setenv("WORKSHOP_RUN_ID", "run-2")
    hardware._CEILINGS.clear()
    hardware.machine_ceilings("cpu", torch.float32)
    assert len(calls) == 6                                   # a new run measures again


def test_reproduce_says_what_to_expect_and_where_it_is(reports_tmp, tmp_path, monkeypatch, capsys):
    import nbformat

    import common.reproduce
    from common.reports import duration
    from common.reproduce import recorded_timings, reproduce
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(f"x = {k}") for k in range(3)])
    nbformat.write(nb, solutions / "00_tiny.ipynb")
    monkeypatch.setattr(common.reproduce, "SOLUTIONS", solutions)
    assert reproduce(mode="quick", progress_every=0)["00_tiny"].startswith("ok in")
    err = capsys.readouterr().err
    assert "1 lab in quick mode" in err and "no earlier run of them is recorded" in err
    assert "00_tiny: cell 3/3" in err and "1/1 00_tiny: ok in" in err
    assert recorded_timings("quick")["00_tiny"]["seconds"] >= 0 and recorded_timings("full") == {}
    reproduce(mode="quick")
    assert "about " in capsys.readouterr().err.split("1/1 00_tiny: running (")[1]
    assert [duration(s) for s in (45, 185, 1500, 4500)] == ["45 s", "3 min 5 s", "25 min", "1 h 15 min"]


def test_the_summary_page_opens_with_status_takeaways_and_verdicts_then_formatted_tables(reports_tmp):
    from common.reports import shown_value, write_summary
    results = LabResults("00_test")
    for k in range(3):
        results.add(f"perplexity {k}", 12.3456 + k, "", "data=wiki:eval, seqlen=512, windows=3")
    results.add("stored bytes", 538060032, "B")
    results.add("parameters", 134515008, "", "tied embedding counted once")
    results.add("verdict: GPTQ beats RTN", "holds", "", "1 vs 2")
    results.add("verdict: later layers are more sensitive", "does not hold here")
    results.what_you_learned("one 12.3", "two", "three")
    results.save()
    write_summary({"00_test": "ok in 185 s"})
    page = (reports_tmp / "index.html").read_text()
    summary, tables = page.split("<h2>Full tables</h2>")
    assert "ok in 3 min 5 s" in summary and "<li>one 12.3</li>" in summary
    assert "1 hold</span>" in summary and "1 do not hold here" in summary
    assert "Unless a row says otherwise: data=wiki:eval, seqlen=512, windows=3" in tables
    assert tables.count("data=wiki:eval") == 1
    assert ">538.1</td><td>MB<" in tables and ">134,515,008<" in tables and ">12.35<" in tables
    assert shown_value(0.123456) == ("0.1235", "") and shown_value(265115376.0) == ("265,115,376", "")
    assert shown_value("holds") == ("holds", "")



def test_readme_shows_the_recorded_timings_of_every_lab():
    from common.notebooks import SOLUTIONS
    from common.reproduce import README, TIMINGS_BEGIN, TIMINGS_END, timings_table
    shown = README.read_text().split(TIMINGS_BEGIN)[1].split(TIMINGS_END)[0].strip()
    assert shown == timings_table(), "README's timings are stale: run python -m common.reproduce"
    for lab in sorted(SOLUTIONS.glob("*.ipynb")):
        assert f"| {lab.stem} |" in shown


def test_the_timings_table_sums_each_mode_and_says_where_it_was_measured(reports_tmp):
    from common.reproduce import record_timing, timings_table
    record_timing("full", "00_a", 125, "GPU X")
    record_timing("full", "01_b", 600, "GPU X", note="beside another lab")
    record_timing("quick", "00_a", 50, "CPU Y")
    table = timings_table()
    assert "| 00_a | 50 s | 2 min 5 s |  |" in table
    assert "| 01_b | not recorded | 10 min | full: beside another lab |" in table
    assert "| **all labs** | **50 s** | **12 min** | |" in table
    assert "quick mode on CPU Y" in table and "full mode on GPU X" in table
    record_timing("full", "00_a", 60, "NVIDIA GPU Z (sm_90)")      # two cards in one mode: each cell names its own
    assert "| 00_a | 50 s | 1 min (GPU Z) |  |" in timings_table() and "| 01_b | not recorded | 10 min (GPU X) |" in timings_table()
