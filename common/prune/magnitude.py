"""Magnitude pruning: drop the weights with the smallest |w|, with no calibration data.

The baseline every one-shot method is measured against. It ignores how large each input is, so a
small weight on a channel with huge activations (LLMs have such outlier channels) is pruned as
readily as one on a quiet channel; that is why it collapses first as sparsity grows.
"""
from dataclasses import dataclass

import torch

from ..calibration import decoder_layers, linear_layers
from .masks import SparsityConfig, apply_mask, mask_from_scores


@dataclass
class MagnitudeConfig(SparsityConfig):
    per_row: bool = False  # compare weights within each output row instead of the whole matrix


@torch.no_grad()
def prune_magnitude(model, config: MagnitudeConfig, calib_batch=None, progress: bool = True):
    """Zero the smallest-magnitude weights of every decoder-layer linear; `calib_batch` is not used."""
    layers = decoder_layers(model)
    config.validate(len(layers))
    nm = config.nm()
    for index, layer in enumerate(layers):
        sparsity = config.for_layer(index)
        if sparsity == 0:
            continue
        for linear in linear_layers(layer).values():
            keep = mask_from_scores(linear.weight.abs().float(), sparsity, nm, config.per_row)
            apply_mask(linear, keep, config.store_masks)
    return model
