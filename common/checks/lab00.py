"""Checkers of lab 00 (Baseline).

Each reference is computed here, from the model and texts in front of the learner: parameter counts by
building the model for a config on PyTorch's meta device (shapes only, no memory), perplexity with the
course's protocol (`common.data.eval_windows`, `common.eval.window_nll`).
"""
import copy
import math

import torch

from . import check, not_solved

# Configs other than the embedded model's on which a parameter count must hold too: the same model with
# untied embeddings and as many key/value heads as query heads, and SmolLM2-360M's published shapes.
_OTHER_CONFIGS = {
    "the same model with an untied output head and 9 key/value heads (no grouped-query attention)":
        dict(tie_word_embeddings=False, num_key_value_heads=9),
    "SmolLM2-360M's shapes (hidden 960, MLP 2560, 32 layers, 15 query and 5 key/value heads)":
        dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
             num_key_value_heads=5, head_dim=64),
}


def _parameter_count(config) -> int:
    """Parameters of the causal LM that `config` describes, each tensor once (a tied head is the embedding)."""
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _variant(config, **changes):
    variant = copy.deepcopy(config)
    for key, value in changes.items():
        setattr(variant, key, value)
    return variant


def check_parameter_count(count_fn, config):
    """`count_fn(config)` must give the parameter count of the embedded model's config and of two others."""
    name = "parameters of a Llama-style model from its config"
    configs = {"the embedded model's config": config} | {
        what: _variant(config, **changes) for what, changes in _OTHER_CONFIGS.items()}
    for what, cfg in configs.items():
        try:
            answer = count_fn(cfg)
        except NotImplementedError:
            return not_solved(name, _parameter_count)
        expected = _parameter_count(cfg)
        ok = answer is not None and not isinstance(answer, bool) and math.isclose(float(answer), expected)
        check(f"{name}: {what}" if ok else f"{name}: {what}: got {answer!r}, expected {expected:,}", ok,
              "per layer: q and o are hidden x hidden; k and v are hidden x (key/value heads x head dim); the "
              "MLP has gate, up (hidden x intermediate) and down (intermediate x hidden); two RMSNorm weight "
              "vectors of size hidden. Then the embedding (vocabulary x hidden), the final norm, and an output "
              "head only if tie_word_embeddings is False (a tied head is the embedding itself).")
    return count_fn


def _perplexity(model, ids, seqlen: int, max_windows: int | None = None) -> float:
    """The course's protocol (common/eval.py): non-overlapping windows, tail dropped, exp(mean NLL)."""
    from ..data import eval_windows
    from ..eval import window_nll
    windows = eval_windows(ids, seqlen, max_windows)
    device = next(model.parameters()).device
    total = sum(window_nll(model, window[None].to(device)).item() for window in windows)
    return math.exp(total / (windows.size(0) * (seqlen - 1)))


def check_perplexity(perplexity_fn, model, ids, seqlen: int = 128, windows: int = 3):
    """Run `perplexity_fn(model, tokens, seqlen)` on the first `windows` windows of `ids` plus half a window of
    tail (which the protocol drops) and compare it with the protocol's perplexity of the same tokens. Short
    windows keep the check cheap: the protocol is the same at any length."""
    n = min(windows, ids.numel() // seqlen)
    tokens = ids[: n * seqlen + seqlen // 2]
    name = f"perplexity over {n} window{'s' if n > 1 else ''} of {seqlen} tokens (and a tail to drop)"
    try:
        answer = perplexity_fn(model, tokens, seqlen)
    except NotImplementedError:
        return not_solved(name, _perplexity)
    expected = _perplexity(model, tokens, seqlen)
    ok = isinstance(answer, (int, float, torch.Tensor)) and math.isclose(float(answer), expected, rel_tol=1e-3)
    shown = f"{float(answer):.4f}" if isinstance(answer, (int, float, torch.Tensor)) else repr(answer)
    check(name if ok else f"{name}: got {shown}, expected {expected:.4f} (within 0.1%)", ok,
          "cut ids into ids.numel() // seqlen windows of seqlen tokens (drop the rest); in each window the logits "
          "at positions 0..seqlen-2 predict the tokens at 1..seqlen-1 (take log_softmax in float32); sum the "
          "negative log-probabilities over all windows, divide by the number of predicted tokens "
          "(windows x (seqlen - 1)), and return exp of that mean as a float.")
    return perplexity_fn
