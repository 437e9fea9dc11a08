"""Depth pruning: drop whole decoder layers, the ones that change their input the least (ShortGPT).

Block importance of layer i = 1 - mean over calibration tokens of cos(x_in, x_out), where x_in and
x_out are the hidden states entering and leaving the layer. A layer whose output points where its
input already pointed adds little through the residual stream; removing it costs little. The result
is a model with fewer layers (config.num_hidden_layers updated) that round-trips save_pretrained.
"""
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WorkshopError
from ..calibration import decoder_layers, first_layer_inputs, run_layer


@dataclass(frozen=True)
class DepthPruneConfig:
    layers_removed: int = 4  # how many decoder layers to drop (checked against the model's layer count)
    needs_calibration = True  # block importance: each layer's effect on the calibration hidden states

    def __post_init__(self):
        if not isinstance(self.layers_removed, int) or self.layers_removed < 0:
            raise WorkshopError(f"DepthPruneConfig(layers_removed={self.layers_removed!r}) is not a number of layers.",
                                "Give a count of 0 or more, e.g. 6 (prune --method depth --sparsity 0.2 on 30 layers).")


@torch.no_grad()
def block_importance(model, calib_batch: torch.Tensor) -> torch.Tensor:
    """[num_layers] ShortGPT block importance, each layer fed the unpruned model's hidden states."""
    hidden, kwargs = first_layer_inputs(model, calib_batch)
    scores = []
    for layer in decoder_layers(model):
        out = run_layer(layer, hidden, kwargs)
        scores.append(1 - F.cosine_similarity(hidden.float(), out.float(), dim=-1).mean())
        hidden = out
    return torch.stack(scores).cpu()


@torch.no_grad()
def remove_layers(model, indices) -> None:
    """Delete decoder layers `indices` in place and renumber the rest (their KV-cache slots)."""
    layers = decoder_layers(model)
    drop = set(int(i) for i in indices)
    kept = [layer for i, layer in enumerate(layers) if i not in drop]
    for new_index, layer in enumerate(kept):
        layer.self_attn.layer_idx = new_index
    model.model.layers = nn.ModuleList(kept)
    model.config.num_hidden_layers = len(kept)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [t for i, t in enumerate(model.config.layer_types) if i not in drop]


def keep_first_layers(model, count: int | None):
    """`model` with only its first `count` decoder layers (None: all of them), in place; returns it."""
    if count is not None:
        remove_layers(model, range(count, len(decoder_layers(model))))
    return model


def prune_depth(model, config: DepthPruneConfig, calib_batch, progress: bool = True):
    """Remove the `config.layers_removed` layers of lowest block importance; returns the shorter model."""
    n = len(decoder_layers(model))
    if not 0 <= config.layers_removed < n:
        raise WorkshopError(f"Cannot remove {config.layers_removed} of this model's {n} layers.",
                            f"Remove between 0 and {n - 1} layers.")
    if config.layers_removed == 0:
        return model
    scores = block_importance(model, calib_batch)
    removed = sorted(scores.topk(config.layers_removed, largest=False).indices.tolist())
    remove_layers(model, removed)
    model.removed_layers = removed  # reports name what was dropped
    return model
