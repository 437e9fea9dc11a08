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
