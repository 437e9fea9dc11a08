"""Text for evaluation, calibration and training, with no download.

The embedded corpus is text every Python install carries:
  - prose: the language reference topics behind `help()` (`pydoc_data.topics`), ~465k characters;
  - code:  the standard library's top-level modules (`Lib/*.py`), ~4.7M characters.
Each is split by whole documents (a topic, a module) into disjoint train / calibration / evaluation
parts. The assignment is fixed by a hash of each document's name, so it is deterministic; the texts
themselves change a little between Python versions, so every protocol line names the Python version
and a fingerprint of the text.

Named data: "embedded" (prose), "embedded-code", "wikitext2" (the test split joined with "\\n\\n",
through `datasets`, from its cache or the Hub), or the path of a local text file.
"""
import glob
import hashlib
import os
import sys
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from .errors import WorkshopError

PARTS = ("train", "calib", "eval")
# Fractions of each source's characters given to evaluation and calibration; the rest is training.
SPLIT_FRACTIONS = {"prose": {"eval": 0.40, "calib": 0.15}, "code": {"eval": 0.10, "calib": 0.05}}
DATA_NAMES = ("embedded", "embedded-code", "wikitext2")


@dataclass(frozen=True)
class Split:
    train: str
    calib: str
    eval: str
    documents: dict  # part -> names of the documents in it

    def part(self, name: str) -> str:
        if name not in PARTS:
            raise WorkshopError(f"Unknown corpus part {name!r}.", f"Use one of {', '.join(PARTS)}.")
        return getattr(self, name)


def _split_documents(documents: dict, fractions: dict) -> Split:
    """Assign whole documents, in the order of their names' hashes, to eval, then calib, then train."""
    order = sorted(documents, key=lambda name: hashlib.md5(name.encode()).hexdigest())
    total = sum(len(documents[name]) for name in order)
    targets = {"eval": fractions["eval"] * total, "calib": fractions["calib"] * total}
    assigned = {part: [] for part in PARTS}
    filled = {part: 0 for part in PARTS}
    for name in order:
        part = next((p for p in ("eval", "calib") if filled[p] < targets[p]), "train")
        assigned[part].append(name)
        filled[part] += len(documents[name])
    texts = {part: "\n\n".join(documents[name] for name in sorted(names)) for part, names in assigned.items()}
    # Documents quote each other (pydoc's "compound" topic repeats "if", "while", ...): drop from
    # training and calibration every paragraph that also stands in the evaluation text.
    held_out = {p.strip() for p in texts["eval"].split("\n\n")}
    for part in ("train", "calib"):
        texts[part] = "\n\n".join(p for p in texts[part].split("\n\n") if p.strip() not in held_out)
    return Split(**texts, documents={part: sorted(names) for part, names in assigned.items()})


@lru_cache(maxsize=None)
def embedded_corpus(source: str = "prose") -> Split:
    """The embedded corpus of `source` ('prose' or 'code'), split into train / calib / eval."""
    if source == "prose":
        from pydoc_data.topics import topics
        documents = {name: text.strip() for name, text in topics.items()}
    elif source == "code":
        stdlib = sysconfig.get_paths()["stdlib"]
        documents = {Path(f).name: Path(f).read_text(encoding="utf-8", errors="replace")
                     for f in glob.glob(os.path.join(stdlib, "*.py"))}
    else:
        raise WorkshopError(f"Unknown embedded source {source!r}.", "Use 'prose' or 'code'.")
    return _split_documents(documents, SPLIT_FRACTIONS[source])


def load_text(data: str = "embedded", part: str = "eval") -> str:
    """The text of a named data set's `part`, or the contents of a text file (`data` is its path)."""
    if data == "embedded":
        return embedded_corpus("prose").part(part)
    if data == "embedded-code":
        return embedded_corpus("code").part(part)
    if data == "wikitext2":
        return _wikitext2({"eval": "test", "calib": "train", "train": "train"}[part])
    path = Path(data).expanduser()
    if path.is_file():
        text = path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise WorkshopError(f"The text file {path} is empty.", "Give a file with the text to evaluate.")
        return text
    raise WorkshopError(f"Unknown data {data!r}: not a data set name and not a file.",
                        f"Use one of {', '.join(DATA_NAMES)}, or --text-file PATH.")


def _wikitext2(split: str) -> str:
    try:
        import datasets
        rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    except Exception as e:
        raise WorkshopError(f"wikitext-2 ({split}) is not available: {type(e).__name__}.",
                            "On a machine with network run `python -c \"import datasets; datasets."
                            "load_dataset('wikitext', 'wikitext-2-raw-v1')\"` once to cache it, or pass "
                            "the test text as --text-file, or use --data embedded.")
    return "\n\n".join(rows["text"])


def data_label(data: str, part: str = "eval") -> str:
    """How the protocol line names the text (the embedded corpus depends on the Python version)."""
    if data in ("embedded", "embedded-code"):
        text = load_text(data, part)
        fingerprint = hashlib.md5(text.encode()).hexdigest()[:8]
        return f"{data}:{part} (Python {sys.version_info.major}.{sys.version_info.minor}, md5 {fingerprint})"
    if data == "wikitext2":
        return "wikitext2:test" if part == "eval" else "wikitext2:train"
    return f"file:{Path(data).name}"


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """The whole text as one 1-D tensor of token ids, with no special tokens added."""
    return torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)


def eval_windows(ids: torch.Tensor, seqlen: int, max_windows: int | None = None) -> torch.Tensor:
    """Non-overlapping windows of `seqlen` tokens from the start, tail dropped: shape [n, seqlen]."""
    n = ids.numel() // seqlen
    if n == 0:
        raise WorkshopError(f"The text has {ids.numel()} tokens, fewer than one window of {seqlen}.",
                            "Use a longer text or a smaller --seqlen.")
    if max_windows is not None:
        n = min(n, max_windows)
    return ids[: n * seqlen].view(n, seqlen)


def sample_windows(ids: torch.Tensor, n: int, seqlen: int, seed: int = 0) -> torch.Tensor:
    """`n` windows of `seqlen` tokens at seeded random offsets (calibration and training batches)."""
    if ids.numel() <= seqlen:
        raise WorkshopError(f"The text has {ids.numel()} tokens, too few for windows of {seqlen}.",
                            "Use a smaller sequence length or more text.")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (n,), generator=generator)
    return torch.stack([ids[s: s + seqlen] for s in starts.tolist()])


def calibration_batch(tokenizer, n_samples: int, seqlen: int, data: str = "embedded", seed: int = 0):
    """Calibration inputs [n_samples, seqlen] from the calibration part (never the evaluation text)."""
    return sample_windows(tokenize(tokenizer, load_text(data, "calib")), n_samples, seqlen, seed)


def corpus_token_counts(tokenizer) -> dict:
    """Tokens in each part of each embedded source, for reports: {'prose': {'train': n, ...}, ...}."""
    return {source: {part: int(tokenize(tokenizer, embedded_corpus(source).part(part)).numel())
                     for part in PARTS} for source in SPLIT_FRACTIONS}
