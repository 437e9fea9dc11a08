import copy
import string
from types import SimpleNamespace

import pytest
import torch

from common.budgets import get_budget
from common.cloze import (ClozeItem, cloze_accuracy, cloze_items, first_items, items_md5, passage_items,
                          passage_sequences, prose_passages)
from common.data import tokenize
from common.errors import WorkshopError


def test_only_prose_sentences_ending_in_a_whole_word_are_items():
    text = ("Heading\n=======\n\n"
            "The river rises in the northern hills and runs to the sea. It is short.\n\n"
            "Its delta has been farmed since the Bronze Age. The town was founded in 1200 CE (approx.).\n"
            "Traders from the coast called the town Port-Royal. Its people spoke   a dialect of \"Occitan\". "
            "The bridge was built by the engineer called Mr. Smith.\n\n"
            "   code = indented(line)\n   with more code.\n\n"
            "The river rises in the northern hills and runs to the sea. It is short.")
    passages = prose_passages(text)
    assert len(passages) == 2   # no heading, no code, the repeated paragraph once
    assert passages[1].startswith("Its delta") and "(approx.). Traders" in passages[1] and "spoke a dialect" in passages[1]
    assert [(item.word, item.context.split()[-1]) for item in passage_items(passages[0])] == [("sea", "the")]
    # "It is short." has 2 words before its last; "(approx.)", "Port-Royal" and "\"Occitan\"" are not letters
    # only; "Mr." ends a sentence cut too early and has 2 letters
    assert [item.word for item in passage_items(passages[1])] == ["Age"]
    item = passage_items(passages[0])[0]
    assert item.passage[item.start - 1] == " " and item.passage[item.start:].startswith("sea.")


def test_the_items_are_fixed_and_hashed():
    every = cloze_items("wiki")
    assert len(every) == 4779 and items_md5(every) == "65f2d139"
    assert items_md5(first_items("wiki", 256)) == "0ff8141c"   # quick mode's items, as printed with every number
    cloze_items.cache_clear()
    assert cloze_items("wiki") == every                        # built again from the text: the same items
    assert first_items("wiki", 16) == every[:16] and all(isinstance(item, ClozeItem) for item in every[:16])
    # the first items spread over passages (articles) rather than exhaust one
    assert len({item.passage for item in first_items("wiki", 256)}) > 50
    docs = cloze_items("python-docs")
    assert 100 < len(docs) < 1000 and items_md5(docs) != items_md5(every)


def test_bad_item_counts_and_texts():
    with pytest.raises(WorkshopError, match="python-docs has"):
        first_items("python-docs", 10 ** 6)
    with pytest.raises(WorkshopError, match="0 last-word items"):
        first_items("wiki", 0)
    with pytest.raises(WorkshopError, match="it is code"):
        cloze_items("python-code")
    with pytest.raises(WorkshopError, match="Unknown text 'wiky'"):
        cloze_items("wiky")


class NextTokenModel(torch.nn.Module):
    """Predicts, at every position, the token that follows in its input (`shift` ids further on, modulo the
    vocabulary): an oracle at shift 0, always wrong otherwise. `first_tokens`: positions of the input where
    it predicts right (the first token of each word), wrong everywhere else."""
    def __init__(self, vocab_size, shift=0, first_tokens=None):
        super().__init__()
        self.config = SimpleNamespace(vocab_size=vocab_size, max_position_embeddings=4096)
        self.shift, self.first_tokens = shift, first_tokens
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids, logits_to_keep):
        following = torch.cat([ids[:, 1:], ids[:, :1]], dim=1)   # the last position's answer is never read
        shift = torch.full_like(following, self.shift)
        if self.first_tokens is not None:
            shift[:, [t for t in range(ids.size(1)) if t + 1 not in self.first_tokens]] = 1
        predicted = (following + shift) % self.config.vocab_size
        logits = torch.nn.functional.one_hot(predicted, self.config.vocab_size).float()
        return SimpleNamespace(logits=logits[:, logits_to_keep])


def test_an_oracle_scores_1_and_a_wrong_model_0(tiny):
    vocab = tiny[0].config.vocab_size
    tokenizer = tiny[1]
    assert cloze_accuracy(NextTokenModel(vocab), tokenizer, "wiki", n_items=24, progress=False).accuracy == 1.0
    wrong = cloze_accuracy(NextTokenModel(vocab, shift=1), tokenizer, "python-docs", n_items=24, progress=False)
    assert wrong.accuracy == 0.0 and wrong.correct == 0 and wrong.items == 24


def test_every_token_of_the_word_must_be_right(tiny):
    _, tokenizer = tiny
    items = first_items("wiki", 1)
    [(ids, [(first, end)])] = passage_sequences(tokenizer, items)
    assert end - first > 1 and tokenizer.decode(ids[first:end]) == " " + items[0].word   # byte-level: several tokens
    right_first = NextTokenModel(tiny[0].config.vocab_size, first_tokens={first})
    assert cloze_accuracy(right_first, tokenizer, "wiki", n_items=1, progress=False).accuracy == 0.0


def test_a_tokenizer_that_writes_a_piece_differently_alone_is_refused(tiny):
    """SentencePiece adds a dummy space before every text it is given: " word" alone is not " word" in place."""
    def prefixing(text, **kwargs):
        return {"input_ids": [7] + tiny[1](text, **kwargs)["input_ids"]}
    with pytest.raises(WorkshopError, match="writes a word alone differently"):
        passage_sequences(prefixing, first_items("wiki", 2))
    assert len(passage_sequences(tiny[1], first_items("wiki", 2))) >= 1   # the byte-level tokenizer passes


def test_the_score_is_greedy_decoding_of_the_word(embedded):
    """What one teacher-forced pass scores is what `generate` writes greedily from the context: the word's
    tokens exactly, and so its decoded first word, case and punctuation kept apart."""
    model, tokenizer = embedded
    items = first_items("wiki", 8)
    result = cloze_accuracy(model, tokenizer, "wiki", n_items=8, progress=False)
    assert 0 < result.correct < 8
    generated_right = 0
    for item in items:
        context, word = tokenize(tokenizer, item.context)[None], tokenize(tokenizer, " " + item.word)
        out = model.generate(context, attention_mask=torch.ones_like(context), max_new_tokens=word.numel(),
                             do_sample=False, pad_token_id=tokenizer.eos_token_id)[0, context.size(1):]
        first_word = (tokenizer.decode(out).split() or [""])[0].strip(string.punctuation)
        assert torch.equal(out, word) == (first_word == item.word)
        generated_right += torch.equal(out, word)
    assert generated_right == result.correct


def test_the_embedded_model_beats_a_constant_guess_and_pruning_to_garbage_costs_it(embedded):
    from common.prune.magnitude import MagnitudeConfig, prune_magnitude
    model, tokenizer = embedded
    quick = cloze_accuracy(model, tokenizer, "wiki", n_items=get_budget("quick").cloze_items, progress=False)
    # measured: 46.1% of 256 items; always writing the most frequent of their words ("world"): 2.3%
    assert quick.accuracy > 0.3 and quick.accuracy > 10 * quick.constant_guess
    assert "256 of 4779 items (md5 0ff8141c)" in quick.protocol() and "greedy exact word" in quick.protocol()
    garbage = prune_magnitude(copy.deepcopy(model), MagnitudeConfig(sparsity=0.7), progress=False)
    dense, pruned = (cloze_accuracy(m, tokenizer, "wiki", n_items=32, progress=False).accuracy for m in (model, garbage))
    assert pruned < dense - 0.2   # measured on 64 items: 53% dense, 0% at 70% of the weights zeroed
