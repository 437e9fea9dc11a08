import pytest
import torch

from common.data import (EMBEDDED, PARTS, TEXTS, calibration_batch, data_label, embedded_corpus, eval_windows,
                         load_text, sample_windows, training_ids, wikitext2_test_titles)
from common.errors import WorkshopError


@pytest.mark.parametrize("source", EMBEDDED)
def test_parts_are_disjoint_and_cover_every_document(source):
    split = embedded_corpus(source)
    names = [set(split.documents[p]) for p in PARTS]
    assert all(not (a & b) for i, a in enumerate(names) for b in names[i + 1:])
    assert all(split.part(p) for p in PARTS)
    # no evaluation paragraph stands in the training or calibration text (a quotation inside a longer
    # paragraph may: the State of the Union addresses quote the Constitution)
    paragraphs = {p.strip() for p in split.eval.split("\n\n") if len(p) > 200}
    others = {p.strip() for part in (split.train, split.calib) for p in part.split("\n\n")}
    assert paragraphs and not paragraphs & others
    if source == "python-docs":  # pydoc's topics quote each other's paragraphs whole: none is left inside
        assert not any(p in split.train or p in split.calib for p in paragraphs)


def test_split_is_deterministic_and_sized():
    embedded_corpus.cache_clear()
    a = embedded_corpus("python-docs")
    embedded_corpus.cache_clear()
    b = embedded_corpus("python-docs")
    assert a == b
    total = sum(len(a.part(p)) for p in PARTS)
    assert 0.38 < len(a.eval) / total < 0.55 and 0.1 < len(a.calib) / total < 0.25


def test_wiki_is_general_english_without_wikitext2_test_articles():
    wiki = embedded_corpus("wiki")
    titles = {name for names in wiki.documents.values() for name in names}
    assert len(titles) > 9_000 and "Albert Einstein" in titles
    held_out = wikitext2_test_titles()
    assert {"Du Fu", "Manila", "Nero", "Olmec colossal heads"} <= held_out and len(held_out) == 62
    assert not titles & held_out
    total = sum(len(wiki.part(p)) for p in PARTS)
    assert 4_000_000 < total < 6_000_000 and 0.13 < len(wiki.eval) / total < 0.2


def test_mixes_and_training_text(tiny):
    _, tokenizer = tiny
    batch = calibration_batch(tokenizer, 5, 48, "wiki+python-docs")
    wiki, docs = load_text("wiki", "calib"), load_text("python-docs", "calib")
    texts = [tokenizer.decode(row) for row in batch]
    assert all(t in wiki for t in texts[:3]) and all(t in docs for t in texts[3:])  # 3 + 2: the first take the rest
    assert training_ids(tokenizer, "wiki+sotu").numel() > training_ids(tokenizer, "wiki").numel()
    with pytest.raises(WorkshopError, match="has no eval part"):
        load_text("self", "eval")
    assert set(TEXTS) >= {"wiki", "python-docs", "python-code", "sotu", "self", "wikitext2"}


def test_text_file_and_errors(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("hello world")
    assert load_text(str(f)) == "hello world"
    assert data_label(str(f)) == "file:t.txt"
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(WorkshopError, match="empty"):
        load_text(str(tmp_path / "empty.txt"))
    with pytest.raises(WorkshopError, match="Unknown text"):
        load_text("no-such-data")
    with pytest.raises(WorkshopError, match="is a directory"):
        load_text(str(tmp_path))


def test_wikitext2_offline_gives_one_clear_message(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    try:
        text = load_text("wikitext2")
    except WorkshopError as e:
        assert "wikitext-2" in e.problem and "--eval-data wiki" in e.fix
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
    assert text in load_text("wiki", "calib") and text not in load_text("wiki", "eval")


def test_self_calibration_is_seeded_cached_and_follows_the_weights(tiny, tmp_path, monkeypatch):
    import copy
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path))
    model, tokenizer = tiny
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    samples = calibration_batch(tokenizer, 3, 24, "self", model=model)
    assert samples.shape == (3, 24) and (samples[:, 0] == start).all() and len(set(map(tuple, samples.tolist()))) == 3
    assert torch.equal(calibration_batch(tokenizer, 3, 24, "self", model=model), samples)
    assert len(list(tmp_path.rglob("*.pt"))) == 1                       # sampled once, then read back
    edited = copy.deepcopy(model)
    edited.model.layers[0].mlp.down_proj.weight.data.zero_()            # a pruned copy of the same spec
    calibration_batch(tokenizer, 3, 24, "self", model=edited)
    assert len(list(tmp_path.rglob("*.pt"))) == 2                       # samples its own text


def test_token_ids_are_kept_on_disk_per_tokenizer_and_text(tiny, tmp_path, monkeypatch):
    from common.data import _token_ids, token_ids, tokenize
    _, tokenizer = tiny
    monkeypatch.setenv("WORKSHOP_CACHE", str(tmp_path))
    text = tmp_path / "text.txt"
    text.write_text("The cache must follow the text. " * 50)
    _token_ids.cache_clear()
    first = token_ids(tokenizer, str(text), "eval")
    assert torch.equal(first, tokenize(tokenizer, text.read_text()))
    assert len(list((tmp_path / "tokens").glob("*.pt"))) == 1 and not list((tmp_path / "tokens").glob("*.partial"))
    _token_ids.cache_clear()
    assert torch.equal(token_ids(tokenizer, str(text), "eval"), first)   # read back from disk
    text.write_text("Another text, another file. " * 50)
    _token_ids.cache_clear()
    changed = token_ids(tokenizer, str(text), "eval")
    assert torch.equal(changed, tokenize(tokenizer, text.read_text())) and not torch.equal(changed[:5], first[:5])
    assert len(list((tmp_path / "tokens").glob("*.pt"))) == 2
    _token_ids.cache_clear()
