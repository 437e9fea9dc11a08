import pytest
import torch

from common.data import (PARTS, calibration_batch, data_label, embedded_corpus, eval_windows, load_text,
                         sample_windows)
from common.errors import WorkshopError


@pytest.mark.parametrize("source", ["prose", "code"])
def test_parts_are_disjoint_and_cover_every_document(source):
    split = embedded_corpus(source)
    names = [set(split.documents[p]) for p in PARTS]
    assert all(not (a & b) for i, a in enumerate(names) for b in names[i + 1:])
    assert all(split.part(p) for p in PARTS)
    # no evaluation paragraph appears in the training or calibration text
    paragraphs = [p for p in split.eval.split("\n\n") if len(p) > 200]
    assert paragraphs and not any(p in split.train or p in split.calib for p in paragraphs)


def test_split_is_deterministic_and_sized():
    embedded_corpus.cache_clear()
    a = embedded_corpus("prose")
    embedded_corpus.cache_clear()
    b = embedded_corpus("prose")
    assert a == b
    total = sum(len(a.part(p)) for p in PARTS)
    assert 0.38 < len(a.eval) / total < 0.55 and 0.1 < len(a.calib) / total < 0.25


def test_text_file_and_errors(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("hello world")
    assert load_text(str(f)) == "hello world"
    assert data_label(str(f)) == "file:t.txt"
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(WorkshopError, match="empty"):
        load_text(str(tmp_path / "empty.txt"))
    with pytest.raises(WorkshopError, match="Unknown data"):
        load_text("no-such-data")


def test_wikitext2_offline_gives_one_clear_message(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    try:
        text = load_text("wikitext2")
    except WorkshopError as e:
        assert "wikitext-2" in e.problem and "--data embedded" in e.fix
    else:  # cached on this machine: then it is the real test split
        assert " = Robert Boulter = " in text


def test_windows():
    ids = torch.arange(10)
    w = eval_windows(ids, 4)
    assert w.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7]]  # tail of 2 dropped
    assert eval_windows(ids, 4, max_windows=1).shape == (1, 4)
    with pytest.raises(WorkshopError, match="fewer than one window"):
        eval_windows(ids, 11)
    s1, s2 = sample_windows(ids, 3, 4, seed=1), sample_windows(ids, 3, 4, seed=1)
    assert torch.equal(s1, s2) and s1.shape == (3, 4)


def test_calibration_comes_from_calib_part(tiny):
    _, tokenizer = tiny
    batch = calibration_batch(tokenizer, 2, 64)
    text = tokenizer.decode(batch[0])
    assert text in load_text("embedded", "calib")
