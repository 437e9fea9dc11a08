"""What a model stores: parameter counts and bytes, each tensor once, at the dtype it is kept in.

A leaf module (it imports nothing of the project), so the quantizers, the evaluation and the reports
all count bytes the same way.
"""
from collections import defaultdict


def parameter_kind(name: str) -> str:
    if "norm" in name:  # first: "post_attention_layernorm" is a norm, not attention
        return "norms"
    if "embed" in name or "lm_head" in name:
        return "embeddings"
    if "self_attn" in name or "attention" in name:
        return "attention"
    if "mlp" in name:
        return "mlp"
    return "other"


def parameter_breakdown(model) -> dict:
    """Parameter counts by kind (embeddings, attention, mlp, norms, other) and 'total'.

    Tied tensors (SmolLM2 shares the input embedding with the output head) are counted once.
    """
    counts = defaultdict(int)
    for name, p in model.named_parameters():
        counts[parameter_kind(name)] += p.numel()
    counts["total"] = sum(counts.values())
    return dict(counts)


def unique_tensors(model):
    """(name, tensor) of the model's state, each stored tensor once (a tied embedding and head: one)."""
    seen = set()
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel())
        if key not in seen:
            seen.add(key)
            yield name, t


def stored_bytes(model) -> int:
    """Bytes the model's state takes when saved: every tensor once, at its stored dtype.

    Quantized or pruned layers that keep packed weights, scales, zeros or masks as buffers are
    counted by what they really store, so this is the number to compare across methods.
    """
    return sum(t.numel() * t.element_size() for _, t in unique_tensors(model))


def stored_bytes_by_kind(model) -> dict:
    sizes = defaultdict(int)
    for name, t in unique_tensors(model):
        sizes[parameter_kind(name)] += t.numel() * t.element_size()
    sizes["total"] = sum(sizes.values())
    return dict(sizes)
