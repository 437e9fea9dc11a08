"""Structured width pruning of a Llama-family model: fewer MLP channels and fewer attention heads.

The result is a physically smaller transformers model (every matrix is sliced, the config updated),
so it is faster on any device. With the default uniform allocation every layer keeps the same number
of channels and heads (which ones it keeps is decided per layer), so the model round-trips plain
save_pretrained / from_pretrained. Adaptive allocation (MLP channels only) gives each layer its own
width, which a Llama config cannot state (intermediate_size is one int): `save_pretrained_atomic`
(`workshop prune --out`) records the widths in config.json as `workshop_mlp_widths` and `load_model`
rebuilds them (`load_varied_width`); plain from_pretrained refuses such a checkpoint (size mismatch).

Importance (Minitron's activation-based recipe, LLM-Pruner's gradient saliency, or a weight-magnitude
baseline):
  - an MLP channel i: the RMS over calibration tokens of act(gate_i x) * up_i x, the value that
    down_proj reads; magnitude: the norm of its weights in gate, up and down together.
  - "study" (MLP channels only; the ordering study, arXiv 2511.19495): 0.5 x the L1 norm of its gate and
    up rows + 0.5 x the mean |gate activation| over calibration tokens, each half divided by its mean;
  - an attention head: the RMS of its slice of the attention output (what o_proj reads); magnitude:
    the norm of its rows in q_proj and columns in o_proj.
  - "taylor" (LLM-Pruner, Ma et al. 2023; NIRVANA's saliency is of the same first-order kind): from one
    gradient g = dL/dW of the model's own next-token loss on the calibration text, the sum of |g * w|
    over the structure's weights (an MLP channel: gate row, up row, down column; a query head: its q rows
    and o columns, plus its share of its key/value group's k and v rows). This is LLM-Pruner's
    "element-wise" first-order score, not its "vector-wise" |sum of g * w|: the signed sum is the exact
    first-order loss change of removing the structure, but its terms cancel, so with a small calibration
    batch near a trained minimum it is mostly noise. LLM-Pruner (LLaMA-7B, 20%): 19.09 vs 22.28
    wikitext-2 PPL; the embedded model at 30% MLP width (quick mode): wiki 42.3 vs 74.2, python-docs 69.0
    vs 105.4.
Allocation "adaptive" (MLP channels; taylor only, because its scores are loss changes, one unit in every
layer, which activation RMS and weight norms are not): blocks of `round_to` channels, each layer's
ranked by score, compete across layers; the best blocks are kept until the total equals the uniform
allocation's, every layer keeping at least MIN_KEEP_SHARE of the uniform count. The parameter count
is the uniform one exactly (an MLP channel costs 3 x hidden_size parameters in every layer). The raw
scores are compared, not scores divided by their layer's mean: that would discard what the unit says
(embedded model, 30%: wiki 32.1 vs 35.5, python-docs 46.0 vs 52.8).

Grouped-query attention ties query heads to key/value heads, so heads are removed either as the same
number of query heads inside every key/value group ("query"), or as whole groups with their key and
value heads ("group"); both keep num_attention_heads a multiple of num_key_value_heads.
"""
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import WorkshopError
from ..calibration import decoder_layers, input_channel_rms, mean_abs_output, require_calibration

IMPORTANCES = ("activation", "magnitude", "study", "taylor")
HEAD_GRANULARITIES = ("query", "group")
ALLOCATIONS = ("uniform", "adaptive")
MIN_KEEP_SHARE = 0.5  # adaptive: no layer keeps fewer than half the channels a uniform allocation keeps
GRAD_CHUNK = 2        # taylor: calibration sequences per backward pass (their saved activations bound memory)


@dataclass(frozen=True)
class WidthPruneConfig:
    mlp_fraction: float = 0.3        # fraction of MLP channels removed (in every layer, or on average)
    heads_fraction: float = 0.0      # fraction of query heads (or key/value groups) removed
    importance: str = "activation"   # "activation", "study", "taylor" (need calibration text), or "magnitude"
    round_to: int = 8                # kept MLP channels rounded to a multiple of this (tensor cores); 1: off
    head_granularity: str = "query"  # "query": heads inside each group; "group": whole key/value groups
    allocation: str = "uniform"      # MLP channels per layer: "uniform" (the same) or "adaptive" (taylor)

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
        if self.allocation not in ALLOCATIONS:
            raise WorkshopError(f"Unknown allocation {self.allocation!r}.", f"Use one of {', '.join(ALLOCATIONS)}.")
        if self.allocation == "adaptive" and self.importance != "taylor":
            raise WorkshopError(f"allocation='adaptive' compares channels of different layers, and {self.importance} "
                                "scores are not in one unit across layers (taylor's are loss changes).",
                                "Use importance='taylor' with allocation='adaptive', or allocation='uniform'.")

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


def slice_mlp(mlp: nn.Module, channels: torch.Tensor) -> None:
    """Keep MLP channels `channels` (gate and up rows, down columns) of a Llama MLP, in place."""
    mlp.gate_proj = slice_linear(mlp.gate_proj, channels, 0)
    mlp.up_proj = slice_linear(mlp.up_proj, channels, 0)
    mlp.down_proj = slice_linear(mlp.down_proj, channels, 1)
    mlp.intermediate_size = channels.numel()


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


def loss_gradient_products(model, calib_batch: torch.Tensor, names: list) -> dict:
    """{name: g * W} (float32) for the named weights, g = dL/dW of the mean next-token cross-entropy of
    the model on `calib_batch` [n, seqlen] (its own loss, no teacher). Zeroing weights changes L by about
    -sum(g * W) over them (first order). Only these weights take gradients, GRAD_CHUNK sequences a pass."""
    parameters, names = dict(model.named_parameters()), set(names)
    trainable = {name: p.requires_grad for name, p in parameters.items()}
    device = next(model.parameters()).device
    targets = calib_batch[:, 1:].numel()
    try:
        for name, p in parameters.items():
            p.requires_grad_(name in names)
            p.grad = None
        with torch.enable_grad():
            for ids in calib_batch.split(GRAD_CHUNK):
                ids = ids.to(device)
                loss = model(ids, labels=ids, use_cache=False).loss  # the mean over this chunk's targets
                (loss * ids[:, 1:].numel() / targets).backward()     # summed over chunks: the batch's mean
        return {name: (parameters[name].grad.float() * parameters[name].detach().float()) for name in names}
    finally:
        for name, p in parameters.items():
            p.grad = None
            p.requires_grad_(trainable[name])


def taylor_importance(model, calib_batch: torch.Tensor, head_dim: int, mlp: bool, heads: bool) -> tuple:
    """(per layer MLP channel scores or None, per layer query-head scores or None): sum of |g * W| over
    each structure's weights (see the module's docstring for the coupled weights and why element-wise)."""
    parts = (("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj") if mlp else ()) + \
        (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj") if heads else ())
    layers = range(len(decoder_layers(model)))
    products = loss_gradient_products(model, calib_batch, [f"model.layers.{i}.{part}.weight" for i in layers
                                                           for part in parts])
    mlp_scores, head_scores = [] if mlp else None, [] if heads else None
    for i in layers:
        s = {part.split(".")[1]: products.pop(f"model.layers.{i}.{part}.weight").abs() for part in parts}
        if mlp:
            mlp_scores.append(s["gate_proj"].sum(1) + s["up_proj"].sum(1) + s["down_proj"].sum(0))
        if heads:
            q = s["q_proj"].view(-1, head_dim * s["q_proj"].size(1)).sum(1)
            o = s["o_proj"].T.reshape(-1, head_dim * s["o_proj"].size(0)).sum(1)
            kv = (s["k_proj"] + s["v_proj"]).view(-1, head_dim * s["k_proj"].size(1)).sum(1)
            per_group = q.numel() // kv.numel()  # a key/value group's cost shared by its query heads
            head_scores.append(q + o + kv.repeat_interleave(per_group) / per_group)
    return mlp_scores, head_scores


def adaptive_keep_counts(scores: list, keep: int, round_to: int) -> list:
    """Channels each layer keeps: multiples of `round_to` that add up to `keep` x layers, each layer at
    least MIN_KEEP_SHARE of `keep`, chosen to keep the largest total score. Each layer's channels, best
    first, form blocks of `round_to`; a block's value is its channels' summed score, falling from block
    to block, so taking the best blocks across all layers takes a prefix of each layer's."""
    least = -(-int(MIN_KEEP_SHARE * keep) // round_to)  # blocks, rounded up
    free = []  # (-value, rank in its layer, layer) of every block beyond a layer's guaranteed ones
    for layer, s in enumerate(scores):
        blocks = s.float().sort(descending=True).values[:s.numel() // round_to * round_to].view(-1, round_to).sum(1)
        free += [(-float(value), rank, layer) for rank, value in enumerate(blocks.tolist()) if rank >= least]
    counts = [least] * len(scores)
    for _, _, layer in sorted(free)[:len(scores) * keep // round_to - least * len(scores)]:  # ties: lower ranks first
        counts[layer] += 1
    return [count * round_to for count in counts]


def keep_mlp_channels(model, scores: list, widths: list):
    """Keep in decoder layer i its widths[i] MLP channels of highest scores[i], in place; returns the model."""
    for layer, layer_scores, width in zip(decoder_layers(model), scores, widths, strict=True):
        slice_mlp(layer.mlp, layer_scores.topk(width).indices.sort().values)
    model.config.intermediate_size = max(widths)  # the widest layer's: one int cannot say more (load_varied_width)
    return model


def mlp_widths(model) -> list:
    """Each decoder layer's MLP channel count (all equal unless adaptive allocation pruned it)."""
    return [layer.mlp.gate_proj.out_features for layer in decoder_layers(model)]


def record_mlp_widths(model) -> None:
    """Before saving: the config lists each layer's MLP width as `workshop_mlp_widths` where they
    differ (load_model reads it), and lists none where they are equal."""
    widths = mlp_widths(model) if hasattr(model, "model") and hasattr(decoder_layers(model)[0], "mlp") else []
    if len(set(widths)) > 1:
        model.config.workshop_mlp_widths = widths
    elif hasattr(model.config, "workshop_mlp_widths"):
        del model.config.workshop_mlp_widths


def load_varied_width(path, dtype: torch.dtype):
    """A model whose layers have different MLP widths (config.json's `workshop_mlp_widths`, written by
    save_pretrained_atomic): the architecture from the config, each MLP rebuilt at its width, then every
    stored tensor loaded (strictly)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from ..quant.checkpoint import load_state
    config = AutoConfig.from_pretrained(path)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)  # (its random weights are overwritten)
    for layer, width in zip(decoder_layers(model), config.workshop_mlp_widths, strict=True):
        slice_mlp(layer.mlp, torch.arange(width))
    load_state(model, path, "Save it again with `workshop prune ... --out DIR`.")
    return model


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
    prune_mlp = keep_mlp < cfg.intermediate_size
    if config.importance == "taylor":
        mlp_scores, head_scores = taylor_importance(model, calib_batch, head_dim, prune_mlp, prune_heads)
    else:
        mlp_scores = mlp_importance(model, config, calib_batch) if prune_mlp else None
        head_scores = head_importance(model, config, calib_batch, head_dim) if prune_heads else None
    widths = [keep_mlp] * cfg.num_hidden_layers
    if prune_mlp and config.allocation == "adaptive":
        widths = adaptive_keep_counts(mlp_scores, keep_mlp, config.round_to)
    if mlp_scores is not None:
        keep_mlp_channels(model, mlp_scores, widths)
    if head_scores is not None:
        for layer, scores in zip(decoder_layers(model), head_scores):
            heads, groups = kept_heads(scores, n_kv, config)
            attn = layer.self_attn
            attn.q_proj = slice_linear(attn.q_proj, head_rows(heads, head_dim), 0)
            attn.k_proj = slice_linear(attn.k_proj, head_rows(groups, head_dim), 0)
            attn.v_proj = slice_linear(attn.v_proj, head_rows(groups, head_dim), 0)
            attn.o_proj = slice_linear(attn.o_proj, head_rows(heads, head_dim), 1)
            attn.num_key_value_groups = heads.numel() // groups.numel()
        cfg.num_attention_heads, cfg.num_key_value_heads = heads.numel(), groups.numel()
    cfg.head_dim = head_dim  # explicit: hidden_size / num_attention_heads no longer gives it
    return model
