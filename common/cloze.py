"""Last-word (cloze) accuracy: does the compressed model still end a sentence with the right word?

Perplexity averages the probability of every token; a task asks whether the model's top answer is
right. This one is LAMBADA's (Paperno et al., 2016) on the course's own held-out text: the model reads
a passage up to the last word of one of its sentences and is right when greedy decoding writes that word.

Items. They are built from the text alone, with no tokenizer, so one text gives the same items, and the
same md5, for every model:
  - passages: the paragraphs of the evaluation part of `wiki` (one Wikipedia summary each) or of
    `python-docs` that are prose: a paragraph with an indented line (code, a grammar rule) or a line
    with no letter or digit (a heading's underline) is left out; a passage's whitespace runs become
    single spaces, and a passage that stands twice counts once;
  - sentences: a passage is cut after '.', '!' or '?' followed by a space and a capital letter;
  - an item is a sentence that ends in '.' straight after its last word, that word made of letters
    only (`str.isalpha`: no digit, hyphen, apostrophe, quote or bracket) and at least MIN_LETTERS
    long, with at least MIN_WORDS_BEFORE words of the sentence before it. Its context is the passage up
    to the space before the word: the earlier sentences of the passage are read too;
  - order: passages sorted by the md5 of their text (a fixed shuffle that spreads any first N items
    over many articles), items in text order within a passage. A mode takes the first
    `Budget.cloze_items` (full mode: every item); the md5 of the items taken (contexts and words) is in
    the protocol line printed with every accuracy.

Score. An item is right when greedy decoding from its context writes exactly the tokens of " " + word:
case-sensitive, the period after it not asked for, and decoding stops after the word's tokens (a
longer word that starts with the target is not seen), as lm-evaluation-harness scores LAMBADA. Greedy
decoding writes those tokens exactly when the top token at every position of the word is the word's
own token, so one teacher-forced forward pass over a passage scores all its items: no generation, no
KV cache. A passage is tokenized piece by piece (text, " word", text, " word", ...), so that a target's
tokens are those of " word", and this must give the passage's own tokens: it does with byte-level BPE
tokenizers (SmolLM2, Llama 3, Qwen); a tokenizer that writes a piece differently alone is refused.

Texts. `wiki` is the in-domain column of every table and `python-docs` the out-of-domain one (its prose
paragraphs end in words such as "function", "statement", "exception"). `python-code` is code: a
statement has no last word to guess. `sotu` is training text, and a file or wikitext-2 would give items
that are not the course's fixed ones.
"""
import hashlib
import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .data import TEXTS, data_label, load_text, tokenize
from .errors import WorkshopError

CLOZE_TEXTS = ("wiki", "python-docs")
MIN_LETTERS = 3        # shorter sentence ends are mostly abbreviations cut as sentences ("St.", "Mr.")
MIN_WORDS_BEFORE = 6   # of the target's own sentence: enough of it to guess from
SENTENCE_BREAK = re.compile(r"(?<=[.!?]) (?=[A-Z])")


@dataclass(frozen=True)
class ClozeItem:
    passage: str
    start: int     # where the word starts in the passage (one space after its context)
    word: str

    @property
    def context(self) -> str:
        return self.passage[: self.start - 1]


def check_cloze_text(data: str) -> None:
    """One clear error if `data` has no last-word task."""
    if data in CLOZE_TEXTS:
        return
    if data == "python-code":
        problem = "The text 'python-code' has no last-word task: it is code, and a statement has no last word to guess."
    elif data in ("sotu", "self"):
        problem = (f"The text {data!r} has no last-word task: it is {TEXTS[data].description}, not one of the "
                   "course's evaluation texts.")
    elif data in TEXTS or Path(data).expanduser().exists():
        problem = (f"The text {data!r} has no last-word task: the task is built only from the course's embedded "
                   "prose texts, so that its items are fixed and hashed.")
    else:
        problem = f"Unknown text {data!r} for the last-word task."
    raise WorkshopError(problem, f"Use {' or '.join(CLOZE_TEXTS)} (`workshop eval`: --cloze-data, or --no-cloze to "
                        "skip the task).")


def prose_passages(text: str) -> list:
    """The prose paragraphs of `text` (split at blank lines), each on one line, each once, in text order."""
    passages = []
    for paragraph in text.split("\n\n"):
        lines = [line for line in paragraph.splitlines() if line.strip()]
        if lines and not any(line[0].isspace() or not any(c.isalnum() for c in line) for line in lines):
            passages.append(" ".join(paragraph.split()))
    return list(dict.fromkeys(passages))


def passage_items(passage: str) -> list:
    """The items of one passage (a single-spaced line), in text order."""
    items, offset = [], 0
    for sentence in SENTENCE_BREAK.split(passage):
        words = sentence[:-1].split(" ")
        if (sentence.endswith(".") and len(words) > MIN_WORDS_BEFORE and words[-1].isalpha()
                and len(words[-1]) >= MIN_LETTERS):
            items.append(ClozeItem(passage, offset + len(sentence) - 1 - len(words[-1]), words[-1]))
        offset += len(sentence) + 1   # the space the split removed
    return items


@lru_cache(maxsize=None)
def cloze_items(data: str = "wiki") -> tuple:
    """Every item of `data`'s evaluation part, in the fixed order a mode takes its first N from."""
    check_cloze_text(data)
    passages = sorted(prose_passages(load_text(data, "eval")), key=lambda p: hashlib.md5(p.encode()).hexdigest())
    return tuple(item for passage in passages for item in passage_items(passage))


def first_items(data: str, n_items: int | None) -> tuple:
    """The first `n_items` items of `data` (None: all of them)."""
    items = cloze_items(data)
    if n_items is not None and not 1 <= n_items <= len(items):
        raise WorkshopError(f"{n_items} last-word items asked for; {data} has {len(items)}.",
                            f"Give --cloze-items from 1 to {len(items)} (or leave it out to use the mode's budget).")
    return items if n_items is None else items[:n_items]


def items_md5(items) -> str:
    """The fingerprint of a list of items: their contexts and words."""
    return hashlib.md5(json.dumps([[item.context, item.word] for item in items]).encode()).hexdigest()[:8]


def constant_guess_accuracy(items) -> float:
    """The best a model that always writes the same word could score: the most frequent target's share."""
    return Counter(item.word for item in items).most_common(1)[0][1] / len(items)


def passage_sequences(tokenizer, items) -> list:
    """[(token ids, [(first, end) token span of each item's word])], one entry per passage, the passage
    tokenized piece by piece and cut after its last item's word."""
    by_passage = {}
    for item in items:
        by_passage.setdefault(item.passage, []).append(item)
    sequences = []
    for passage, in_passage in by_passage.items():
        pieces, spans, done, length = [], [], 0, 0
        for item in in_passage:
            before, word = tokenize(tokenizer, passage[done: item.start - 1]), tokenize(tokenizer, " " + item.word)
            pieces += [before, word]
            spans.append((length + before.numel(), length + before.numel() + word.numel()))
            length += before.numel() + word.numel()
            done = item.start + len(item.word)
        ids = torch.cat(pieces)
        # A tokenizer that adds a prefix to every call (SentencePiece's dummy space) would score words the
        # model never sees written that way.
        if not torch.equal(ids, tokenize(tokenizer, passage[:done])):
            raise WorkshopError(f"This tokenizer ({type(tokenizer).__name__}) writes a word alone differently from "
                                "the same word within its text, so a word's tokens cannot be scored in place.",
                                "Use a model with a byte-level BPE tokenizer (SmolLM2, Llama 3, Qwen), or skip the "
                                "last-word task (`workshop eval --no-cloze`).")
        sequences.append((ids, spans))
    return sequences


@dataclass
class ClozeResult:
    accuracy: float
    correct: int
    items: int
    available: int          # items the text has (full mode takes them all)
    constant_guess: float   # accuracy of always writing the most frequent target word of these items
    items_md5: str
    data: str
    dtype: str
    model: str

    def protocol(self) -> str:
        return (f"last-word accuracy, data={self.data}, {self.items} of {self.available} items (md5 {self.items_md5}), "
                f"greedy exact word, dtype={self.dtype}, model={self.model}")

    def __str__(self) -> str:
        return (f"last-word accuracy {self.accuracy:.1%} (a constant guess {self.constant_guess:.1%})  "
                f"[{self.protocol()}]")

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def greedy_hits(model, sequences: list, batch_tokens: int = 4096, progress: bool = True,
                desc: str = "last-word items") -> list:
    """Whether greedy decoding writes each span's tokens from the tokens before it: one bool per span,
    in order. Passages of similar length are batched, right-padded (a causal model's positions never
    see the padding after them), and logits are computed only where a span's tokens are predicted."""
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max(ids.numel() for ids, _ in sequences)
    if limit is not None and longest > limit:
        raise WorkshopError(f"A last-word passage has {longest} tokens, beyond this model's context of {limit}.",
                            "Use a model with a longer context, or skip the task (--no-cloze).")
    device = next(model.parameters()).device
    order = sorted(range(len(sequences)), key=lambda i: sequences[i][0].numel())
    hits = [None] * len(sequences)
    batches, batch = [], []
    for i in order:   # ascending lengths: a batch's padded size is its last passage's length times its count
        if batch and (len(batch) + 1) * sequences[i][0].numel() > batch_tokens:
            batches.append(batch)
            batch = []
        batch.append(i)
    batches.append(batch)
    for batch in tqdm(batches, desc=desc, disable=not progress, leave=False):
        width = sequences[batch[-1]][0].numel()
        ids = torch.zeros(len(batch), width, dtype=torch.long)
        for row, i in enumerate(batch):
            ids[row, : sequences[i][0].numel()] = sequences[i][0]
        # the logits at position t predict token t + 1: keep the positions before every span's tokens
        keep = sorted({t - 1 for i in batch for first, end in sequences[i][1] for t in range(first, end)})
        predicted = model(ids.to(device), logits_to_keep=torch.tensor(keep, device=device)).logits.argmax(-1).cpu()
        column = {t: c for c, t in enumerate(keep)}
        for row, i in enumerate(batch):
            hits[i] = [all(predicted[row, column[t - 1]] == ids[row, t] for t in range(first, end))
                       for first, end in sequences[i][1]]
    return [hit for passage_hits in hits for hit in passage_hits]


def cloze_accuracy(model, tokenizer, data: str = "wiki", n_items: int | None = None, batch_tokens: int = 4096,
                   progress: bool = True) -> ClozeResult:
    """Last-word accuracy of `model` on the first `n_items` items of `data` (None: every item; a mode's
    number is `get_budget().cloze_items`)."""
    items = first_items(data, n_items)
    hits = greedy_hits(model, passage_sequences(tokenizer, items), batch_tokens=batch_tokens, progress=progress,
                       desc=f"last-word items ({data})")
    return ClozeResult(accuracy=sum(hits) / len(hits), correct=sum(hits), items=len(items),
                       available=len(cloze_items(data)), constant_guess=constant_guess_accuracy(items),
                       items_md5=items_md5(items), data=data_label(data),
                       dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
                       model=getattr(model, "workshop_spec", type(model).__name__))


def cloze_accuracies(model, tokenizer, texts=CLOZE_TEXTS, n_items: int | None = None, progress: bool = True) -> dict:
    """{text: ClozeResult} on each text (default: wiki in domain, python-docs out of it)."""
    if len(set(texts)) != len(texts):
        raise WorkshopError(f"A last-word text is named twice: {', '.join(texts)}.", "Name each text once.")
    for name in texts:
        first_items(name, n_items)   # every text's items are checked before the first is scored
    return {name: cloze_accuracy(model, tokenizer, name, n_items=n_items, progress=progress) for name in texts}
