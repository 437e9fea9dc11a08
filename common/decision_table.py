"""The source article's hardware decision table, each rule checked against the course's own numbers.

A rule of thumb ("edge / CPU -> structured width pruning") rests on a premise the course can measure:
a speed-up timed in lab 06, a size computed from the model, a perplexity recorded by labs 02-04.
`decision_rows` states each premise as a claim and gathers the numbers that decide it, so that lab 06
prints a verdict beside each rule instead of repeating it. Sizes are compared at 16 bits per
floating-point value whatever dtype the mode computes in (quick mode runs in float32), so that they
mean what they mean on a GPU.
"""
from dataclasses import dataclass

# The full mode's long context (common.budgets.FULL.long_context) and a serving batch: the KV-cache rule
# is about long context at large batch, so it is judged there in every mode (it is arithmetic on the config).
LONG_CONTEXT, SERVING_BATCH = 8192, 16
WIDTH_FRACTION = 0.3   # lab 04's student: 30% of every MLP's channels removed (lab 03's width pruning)
# A speed-up is worth taking only while the model still does the dense model's job: here, a wiki perplexity
# at most 1.5x the dense one (INT4 AWQ g64 costs ~1.16x in lab 02; a collapsed model costs 4x and more).
USABLE_PPL_RATIO = 1.5


@dataclass(frozen=True)
class Row:
    situation: str
    rule: str
    claim: str            # the premise the rule rests on, as a sentence a number can decide
    holds: bool | None    # None: a number it needs is missing, so no verdict
    evidence: str
    judged_on: str = ""   # where the numbers come from, when they are not this run's


def kv_cache_bytes_per_token(config, bytes_per_value: int = 2) -> int:
    """K and V of every layer for one token: 2 x layers x KV heads x head_dim values."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * bytes_per_value


def bytes_in_16_bits(model) -> int:
    """The model's state with every floating-point tensor counted at 16 bits and integer tensors (packed
    codes) as stored; every tensor once (the tied embedding and head are one tensor)."""
    seen, total = set(), 0
    for tensor in model.state_dict().values():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tensor.numel())
        if key not in seen:
            seen.add(key)
            total += tensor.numel() * (2 if tensor.is_floating_point() else tensor.element_size())
    return total


def width_pruned_parameters(model, mlp_fraction: float = WIDTH_FRACTION, round_to: int = 8) -> int:
    """Parameters left after removing `mlp_fraction` of every MLP's channels, kept to a multiple of
    `round_to` as `common.prune.width.prune_width` keeps them (gate, up and down each lose those channels)."""
    from .prune.width import kept_count
    config = model.config
    kept = kept_count(config.intermediate_size, mlp_fraction, round_to)
    removed = config.num_hidden_layers * 3 * config.hidden_size * (config.intermediate_size - kept)
    unique = {(p.untyped_storage().data_ptr(), p.numel()): p.numel() for p in model.parameters()}
    return sum(unique.values()) - removed


def _recorded(runs: dict, lab: str, what: str):
    run = runs.get(lab)
    return None if run is None else run.rows.get(what)


def decision_rows(*, sparse_large: float, sparse_m16: float, sparse_source: str, w4a16_m1: float, kernels_source: str,
                  int4_share: float, width_share: float, gguf_bytes: int, dense_bytes_16: int, kv_per_token: int,
                  recorded: dict) -> list:
    """The four rules, each with its premise judged.

    sparse_large, sparse_m16: 2:4 vs dense bf16 at 8192^3 and at M = 16 (sparse_source says where timed:
    "measured here" or a record's label);
    w4a16_m1: the W4A16 kernel vs bf16 at M = 1 (kernels_source); int4_share, width_share: the INT4 g64
    model's and the 30%-width-pruned model's bytes as a share of the 16-bit model's; gguf_bytes: the
    published checkpoint; kv_per_token: K and V bytes per token at 16 bits; recorded: {lab: RecordedRun or
    None} for 02_post_training_quantization, 03_pruning_and_low_rank and 04_knowledge_distillation.
    """
    baseline = _recorded(recorded, "02_post_training_quantization", "PPL wiki, baseline (bfloat16)")
    awq = _recorded(recorded, "02_post_training_quantization", "PPL wiki, AWQ W4 g64")
    sparsegpt = _recorded(recorded, "03_pruning_and_low_rank", "perplexity SparseGPT 2:4, wiki")
    student = _recorded(recorded, "04_knowledge_distillation", "perplexity on wiki, pruned + KD")

    def perplexities(*pairs) -> str:
        shown = [f"{name} {value:.2f}" for name, value in pairs if value is not None]
        missing = [name for name, value in pairs if value is None]
        parts = [f"wiki perplexity {', '.join(shown)} (recorded full-mode runs)"] if shown else []
        parts += [f"wiki perplexity of {', '.join(missing)}: not in the recorded runs yet"] if missing else []
        return "; ".join(parts)

    # speed alone does not make the rule: a one-shot 2:4 model that has collapsed is not worth its speed-up
    usable = None if None in (baseline, awq, sparsegpt) else max(awq, sparsegpt) <= USABLE_PPL_RATIO * baseline
    rows = [Row(
        "datacenter GPU", "2:4 + quantization",
        "2:4 speeds up the compute-bound product, 4-bit weights the batch-1 GEMV, and both keep the model usable "
        f"without retraining (wiki perplexity within {USABLE_PPL_RATIO}x dense)",
        None if usable is None else sparse_large > 1 and w4a16_m1 > 1 and usable,
        f"2:4 {sparse_large:.2f}x bf16 at 8192³ but {sparse_m16:.2f}x at M = 16 ({sparse_source}); W4A16 "
        f"{w4a16_m1:.2f}x bf16 at M = 1 ({kernels_source}). Accuracy on this model: "
        + perplexities(("dense", baseline), ("INT4 AWQ g64", awq), ("SparseGPT 2:4", sparsegpt))
        + ("" if usable is None else f": SparseGPT 2:4 {sparsegpt / baseline:.1f}x dense, INT4 AWQ {awq / baseline:.2f}x"),
        "; ".join(dict.fromkeys(s for s in (sparse_source, kernels_source) if s != "measured here")))]
    rows.append(Row(
        "edge / CPU", "structured width pruning",
        f"removing {WIDTH_FRACTION:.0%} of the MLP channels cuts the bytes read per token more than INT4 weights do",
        width_share < int4_share,
        f"width-pruned: {width_share:.0%} of the 16-bit bytes; INT4 g64: {int4_share:.0%}. The checkpoint itself is "
        f"published as GGUF Q4_1 ({gguf_bytes / 1e6:.0f} MB, {gguf_bytes / dense_bytes_16:.0%} of 16 bits), a 4-bit "
        "format for CPU runtimes such as llama.cpp. " + perplexities(("INT4 AWQ g64", awq), ("30%-MLP student after KD", student)),
        ""))
    in_flight = SERVING_BATCH * LONG_CONTEXT
    rows.append(Row(
        "long context", "KV-cache quantization",
        f"at batch {SERVING_BATCH} and {LONG_CONTEXT:,} tokens of context the 16-bit KV cache outgrows the weights",
        in_flight * kv_per_token > dense_bytes_16,
        f"K+V {kv_per_token / 1e3:.1f} kB per token: one {LONG_CONTEXT:,}-token sequence "
        f"{LONG_CONTEXT * kv_per_token / dense_bytes_16:.2f}x the 16-bit weights, batch {SERVING_BATCH} "
        f"{in_flight * kv_per_token / dense_bytes_16:.1f}x; equal at {dense_bytes_16 / kv_per_token:,.0f} tokens in flight",
        ""))
    rows.append(Row(
        "≥ 45% compression", "structured + distillation recovery",
        "reaching 45% compression takes structured pruning + distillation",
        int4_share > 0.55,
        f"INT4 g64 alone keeps {int4_share:.0%} of the 16-bit bytes ({1 - int4_share:.0%} compression); the "
        f"{WIDTH_FRACTION:.0%}-MLP student keeps {width_share:.0%}. "
        + perplexities(("INT4 AWQ g64", awq), ("30%-MLP student after KD", student)),
        ""))
    return rows
