"""Evaluation, in one place: perplexity, speed, a generation sample (sizes: `common.sizes`).

Perplexity protocol (GPTQ / SparseGPT): tokenize the whole evaluation text once, cut it into
non-overlapping windows of `seqlen` tokens from the start, drop the tail, and report
PPL = exp(mean negative log-likelihood of every predicted token). Each window predicts its tokens
2..seqlen from the ones before it; windows never see each other.
"""
import statistics
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import DEFAULT_EVAL, data_label, eval_windows, token_ids, tokenize
from .errors import WorkshopError
from .hardware import sync


@dataclass
class PerplexityResult:
    ppl: float
    nll: float           # mean negative log-likelihood per predicted token (nats)
    tokens: int          # predicted tokens
    windows: int
    seqlen: int
    data: str
    dtype: str
    model: str

    def protocol(self) -> str:
        return (f"data={self.data}, seqlen={self.seqlen}, windows={self.windows}, "
                f"predicted tokens={self.tokens}, dtype={self.dtype}, model={self.model}")

    def __str__(self) -> str:
        return f"PPL {self.ppl:.3f}  [{self.protocol()}]"

    def to_dict(self) -> dict:
        return asdict(self)


def check_seqlen(model, seqlen: int) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    if seqlen < 2:
        raise WorkshopError(f"seqlen={seqlen} is too short to predict anything.", "Use --seqlen 2 or more.")
    if limit is not None and seqlen > limit:
        raise WorkshopError(f"seqlen={seqlen} is beyond this model's context of {limit} tokens.",
                            f"Use --seqlen {limit} or less.")


@torch.inference_mode()
def window_nll(model, windows: torch.Tensor) -> torch.Tensor:
    """Summed negative log-likelihood of tokens 2..seqlen of each window: shape [n_windows]."""
    logits = model(windows).logits[:, :-1].float()
    targets = windows[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1), reduction="none")
    return nll.view(targets.shape).sum(dim=1)


def perplexity(model, tokenizer, data: str = "wiki", seqlen: int = 2048,
               max_windows: int | None = None, batch_size: int = 1, text: str | None = None,
               progress: bool = True) -> PerplexityResult:
    """Perplexity of `model` on `data` (a name or a file path; or pass `text` directly)."""
    check_seqlen(model, seqlen)
    label = "text" if text is not None else data_label(data)
    ids = tokenize(tokenizer, text) if text is not None else token_ids(tokenizer, data, "eval")
    windows = eval_windows(ids, seqlen, max_windows)
    device = next(model.parameters()).device
    total = 0.0
    for start in tqdm(range(0, len(windows), batch_size), desc=f"perplexity ({len(windows)}x{seqlen})",
                      disable=not progress, leave=False):
        total += window_nll(model, windows[start: start + batch_size].to(device)).sum().item()
    tokens = windows.size(0) * (seqlen - 1)
    nll = total / tokens
    return PerplexityResult(ppl=float(torch.exp(torch.tensor(nll))), nll=nll, tokens=tokens,
                            windows=windows.size(0), seqlen=seqlen, data=label,
                            dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
                            model=getattr(model, "workshop_spec", type(model).__name__))


def perplexities(model, tokenizer, texts=DEFAULT_EVAL, seqlen: int = 2048, max_windows: int | None = None,
                 progress: bool = True) -> dict:
    """{text name: PerplexityResult} on each evaluation text (default: wiki in domain, python-docs out of it)."""
    if len(set(texts)) != len(texts):
        raise WorkshopError(f"An evaluation text is named twice: {', '.join(texts)}.", "Name each text once.")
    return {name: perplexity(model, tokenizer, name, seqlen=seqlen, max_windows=max_windows, progress=progress)
            for name in texts}


def gap_closed(best_ppl: float, worse_ppl: float, method_ppl: float) -> float:
    """The share of the perplexity gap from `worse_ppl` down to `best_ppl` that a method closed: 1 reaches
    `best_ppl`, 0 is no better than `worse_ppl`, negative is worse still, above 1 is below `best_ppl`.
    E.g. GPTQ against RTN with the unquantized baseline as best (lab 02), a distilled student against the
    pruned one with the teacher as best (lab 04)."""
    return (worse_ppl - method_ppl) / (worse_ppl - best_ppl)


# ---------------------------------------------------------------------------------------------
# Speed
# ---------------------------------------------------------------------------------------------
@dataclass
class Throughput:
    batch_size: int
    prompt_len: int
    new_tokens: int
    prefill_tokens_per_s: float   # prompt tokens processed per second
    decode_tokens_per_s: float    # generated tokens per second, all sequences of the batch together
    decode_ms_per_step: float
    peak_memory_bytes: int | None  # CUDA peak allocated during the run; None on the CPU
    repeats: int

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def measure_throughput(model, batch_size: int = 1, prompt_len: int = 128, new_tokens: int = 32,
                       repeats: int = 5, warmup: int = 1, seed: int = 0) -> Throughput:
    """Prefill and greedy decode speed with transformers' KV cache (eager forward calls).

    CUDA-synchronised, `warmup` untimed runs first, the median of `repeats` timed runs reported.
    """
    from transformers import DynamicCache
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (batch_size, prompt_len), generator=generator).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def run():
        cache = DynamicCache(config=model.config)
        sync(device)
        t0 = time.perf_counter()
        out = model(prompt, past_key_values=cache, use_cache=True, logits_to_keep=1)
        sync(device)
        t1 = time.perf_counter()
        token = out.logits[:, -1:].argmax(-1)
        for _ in range(new_tokens):
            out = model(token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        sync(device)
        return t1 - t0, time.perf_counter() - t1

    for _ in range(warmup):
        run()
    prefill, decode = zip(*(run() for _ in range(repeats)))
    prefill_s, decode_s = statistics.median(prefill), statistics.median(decode)
    return Throughput(batch_size=batch_size, prompt_len=prompt_len, new_tokens=new_tokens,
                      prefill_tokens_per_s=batch_size * prompt_len / prefill_s,
                      decode_tokens_per_s=batch_size * new_tokens / decode_s,
                      decode_ms_per_step=1000 * decode_s / new_tokens,
                      peak_memory_bytes=torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None,
                      repeats=repeats)


def decode_bound_tokens_per_s(bytes_per_step: float, bandwidth_bytes_per_s: float, batch_size: int = 1) -> float:
    """Upper bound on decode speed when every step must read `bytes_per_step` from memory.

    At batch size B one step reads every weight once and yields B tokens.
    """
    return batch_size * bandwidth_bytes_per_s / bytes_per_step


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------
@torch.inference_mode()
def generate_sample(model, tokenizer, prompt: str, max_new_tokens: int = 48) -> str:
    """Greedy continuation of `prompt` (through the chat template when the tokenizer has one)."""
    device = next(model.parameters()).device
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    else:
        text = prompt
    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, ids.size(1):], skip_special_tokens=True)
