"""Structured width pruning of a Llama-family model: fewer MLP channels and fewer attention heads.

The result is a physically smaller transformers model (every matrix is sliced, the config updated),
so it is faster on any device and round-trips save_pretrained / from_pretrained. To keep plain
from_pretrained working, every layer keeps the same number of channels and heads; which ones it
keeps is decided per layer.

Importance (Minitron's activation-based recipe, or a weight-magnitude baseline):
  - an MLP channel i: the RMS over calibration tokens of act(gate_i x) * up_i x, the value that
    down_proj reads; magnitude: the norm of its weights in gate, up and down together.
  - "study" (MLP channels only; the ordering study, arXiv 2511.19495): 0.5 x the L1 norm of its gate and
    up rows + 0.5 x the mean |gate activation| over calibration tokens, each half divided by its mean;
  - an attention head: the RMS of its slice of the attention output (what o_proj reads); magnitude:
    the norm of its rows in q_proj and columns in o_proj.
Grouped-query attention ties query heads to key/value heads, so heads are removed either as the same
number of query heads inside every key/value group ("query"), or as whole groups with their key and
value heads ("group"); both keep num_attention_heads a multiple of num_key_value_heads.
"""
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import WorkshopError
from ..calibration import decoder_layers, input_channel_rms, mean_abs_output, require_calibration

IMPORTANCES = ("activation", "magnitude", "study")
HEAD_GRANULARITIES = ("query", "group")


@dataclass(frozen=True)
class WidthPruneConfig:
    mlp_fraction: float = 0.3        # fraction of MLP channels removed in every layer
    heads_fraction: float = 0.0      # fraction of query heads (or key/value groups) removed
    importance: str = "activation"   # "activation" or "study" (need calibration text), or "magnitude"
    round_to: int = 8                # kept MLP channels rounded to a multiple of this (tensor cores); 1: off
    head_granularity: str = "query"  # "query": heads inside each group; "group": whole key/value groups

    def __post_init__(self):
        for name in ("mlp_fraction", "heads_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise WorkshopError(f"{name}={value} is outside [0, 1): it is the fraction removed, and "
                                    "removing everything leaves no layer.", f"Give {name} between 0 and 0.99.")
        if self.importance not in IMPORTANCES:
            raise WorkshopError(f"Unknown importance {self.importance!r}.", f"Use one of {', '.join(IMPORTANCES)}.")
        if self.head_granularity not in HEAD_GRANULARITIES:
            raise WorkshopError(f"Unknown head_granularity {self.head_granularity!r}.",
                                f"Use one of {', '.join(HEAD_GRANULARITIES)}.")
        if self.round_to < 1:
            raise WorkshopError(f"round_to={self.round_to} must be 1 or more.", "Use 1 (no rounding), 8 or 64.")
        if self.importance == "study" and self.heads_fraction:
            raise WorkshopError("The study's importance scores MLP channels only.",
                                "Use importance='activation' or 'magnitude' to prune heads too.")

    @property
    def needs_calibration(self) -> bool:
        return self.importance != "magnitude"


def _check_model(model) -> None:
    if not hasattr(model, "model") or not hasattr(decoder_layers(model)[0], "mlp"):
        raise WorkshopError(f"{type(model).__name__} is not a Llama-style decoder (model.model.layers[i].mlp).",
                            "Width pruning here supports Llama, SmolLM2, Mistral and Qwen2-style models.")


def kept_count(total: int, fraction: float, round_to: int = 1, what: str = "channels") -> int:
    """How many of `total` units stay when `fraction` is removed, rounded to a multiple of `round_to`."""
    keep = total - int(round(fraction * total))
    if round_to > 1:
        keep = min(total, max(round_to, int(round(keep / round_to)) * round_to))
    if keep < 1:
        raise WorkshopError(f"Removing {fraction:.0%} of {total} {what} leaves none in the layer.",
                            f"Remove a smaller fraction (at most {(total - 1) / total:.2f}).")
    return keep


def slice_linear(linear: nn.Linear, index: torch.Tensor, dim: int) -> nn.Linear:
    """A new Linear keeping rows (dim=0, outputs) or columns (dim=1, inputs) `index` of `linear`."""
    weight = linear.weight.data.index_select(dim, index.to(linear.weight.device)).clone()
    out_features, in_features = weight.shape
    new = nn.Linear(in_features, out_features, bias=linear.bias is not None,
                    device=weight.device, dtype=weight.dtype)
    new.weight.data.copy_(weight)
    if linear.bias is not None:
        new.bias.data.copy_(linear.bias.data if dim == 1 else linear.bias.data[index.to(linear.bias.device)])
    return new


def mlp_importance(model, config: WidthPruneConfig, calib_batch) -> list:
    layers = decoder_layers(model)
    if config.importance == "study":
        names = [f"model.layers.{i}.mlp.gate_proj" for i in range(len(layers))]
        gate = mean_abs_output(model, calib_batch, names)
        scores = []
        for name, layer in zip(names, layers):
            l1 = layer.mlp.gate_proj.weight.float().abs().sum(1) + layer.mlp.up_proj.weight.float().abs().sum(1)
            scores.append(0.5 * l1 / l1.mean() + 0.5 * gate[name] / gate[name].mean())
        return scores
    if config.importance == "activation":
        names = [f"model.layers.{i}.mlp.down_proj" for i in range(len(layers))]
        rms = input_channel_rms(model, calib_batch, names)
        return [rms[name] for name in names]
    return [torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight, layer.mlp.down_proj.weight.T],
                      dim=1).float().norm(dim=1) for layer in layers]


def head_importance(model, config: WidthPruneConfig, calib_batch, head_dim: int) -> list:
    """Per layer, a tensor [num_attention_heads] of query-head importance."""
    layers = decoder_layers(model)
    if config.importance == "activation":
        names = [f"model.layers.{i}.self_attn.o_proj" for i in range(len(layers))]
        rms = input_channel_rms(model, calib_batch, names)
        return [rms[name].view(-1, head_dim).pow(2).mean(1).sqrt() for name in names]
    scores = []
    for layer in layers:
        q = layer.self_attn.q_proj.weight.float().view(-1, head_dim, layer.self_attn.q_proj.in_features)
        o = layer.self_attn.o_proj.weight.float().T.reshape(-1, head_dim, layer.self_attn.o_proj.out_features)
        scores.append((q.pow(2).sum((1, 2)) + o.pow(2).sum((1, 2))).sqrt())
    return scores


def kept_heads(importance: torch.Tensor, n_kv: int, config: WidthPruneConfig) -> tuple:
    """Indices of the query heads and key/value heads to keep, in their original order."""
    per_group = importance.numel() // n_kv
    grouped = importance.cpu().view(n_kv, per_group)  # indices are built on the CPU; slice_linear moves them  # query head h belongs to key/value head h // per_group
    if config.head_granularity == "group":
        keep_groups = kept_count(n_kv, config.heads_fraction, what="key/value groups")
        groups = grouped.sum(1).topk(keep_groups).indices.sort().values
        heads = (groups[:, None] * per_group + torch.arange(per_group)).flatten()
        return heads, groups
    keep = kept_count(per_group, config.heads_fraction, what="query heads per key/value group")
    inside = grouped.topk(keep, dim=1).indices.sort(dim=1).values
    heads = (torch.arange(n_kv)[:, None] * per_group + inside).flatten()
    return heads, torch.arange(n_kv)


def head_rows(heads: torch.Tensor, head_dim: int) -> torch.Tensor:
    return (heads[:, None] * head_dim + torch.arange(head_dim)).flatten()


@torch.no_grad()
def prune_width(model, config: WidthPruneConfig, calib_batch=None, progress: bool = True):
    """Remove MLP channels and attention heads in place; returns the (smaller) model."""
    require_calibration(config, calib_batch, instead="use importance='magnitude'")
    _check_model(model)
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    n_heads, n_kv = cfg.num_attention_heads, cfg.num_key_value_heads
    keep_mlp = kept_count(cfg.intermediate_size, config.mlp_fraction, config.round_to, "MLP channels")
    prune_heads = config.heads_fraction > 0
    if prune_heads:  # validate the head counts before any layer is touched
        kept_heads(torch.zeros(n_heads), n_kv, config)
    mlp_scores = mlp_importance(model, config, calib_batch) if keep_mlp < cfg.intermediate_size else None
    head_scores = head_importance(model, config, calib_batch, head_dim) if prune_heads else None

    for i, layer in enumerate(decoder_layers(model)):
        if mlp_scores is not None:
            channels = mlp_scores[i].topk(keep_mlp).indices.sort().values
            mlp = layer.mlp
            mlp.gate_proj = slice_linear(mlp.gate_proj, channels, 0)
            mlp.up_proj = slice_linear(mlp.up_proj, channels, 0)
            mlp.down_proj = slice_linear(mlp.down_proj, channels, 1)
            mlp.intermediate_size = keep_mlp
        if head_scores is not None:
            heads, groups = kept_heads(head_scores[i], n_kv, config)
            attn = layer.self_attn
            attn.q_proj = slice_linear(attn.q_proj, head_rows(heads, head_dim), 0)
            attn.k_proj = slice_linear(attn.k_proj, head_rows(groups, head_dim), 0)
            attn.v_proj = slice_linear(attn.v_proj, head_rows(groups, head_dim), 0)
            attn.o_proj = slice_linear(attn.o_proj, head_rows(heads, head_dim), 1)
            attn.num_key_value_groups = heads.numel() // groups.numel()
            new_heads, new_kv = heads.numel(), groups.numel()

    cfg.intermediate_size = keep_mlp
    cfg.head_dim = head_dim  # explicit: hidden_size / num_attention_heads no longer gives it
    if head_scores is not None:
        cfg.num_attention_heads, cfg.num_key_value_heads = new_heads, new_kv
    return model
