"""Wanda (Sun et al., 2023): prune by |w_ij| * ||x_j||, weight magnitude times input-channel norm.

A weight matters as much as the signal it multiplies: |w_ij| * ||x_j||_2 (the norm over calibration
tokens of input channel j) estimates its contribution to the output. Weights compete within their
output row. No weight update, one forward pass per layer: nearly as cheap as magnitude.
"""
from dataclasses import dataclass

import torch

from ..calibration import linear_input_grams, linear_layers, walk_layers
from .masks import SparsityConfig, apply_mask, mask_from_scores


@dataclass
class WandaConfig(SparsityConfig):
    per_row: bool = True  # the paper's comparison group: each output row


def wanda_scores(weight: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """|W| * ||x_j|| with ||x_j||^2 the diagonal of the input Gram matrix (any common scale is harmless)."""
    return weight.abs().float() * gram.diagonal().clamp_min(0).sqrt()[None, :]


@torch.no_grad()
def prune_wanda(model, config: WandaConfig, calib_batch, progress: bool = True):
    config.validate(len(model.model.layers))
    nm = config.nm()

    def process(index, layer, hidden, kwargs):
        sparsity = config.for_layer(index)
        if sparsity == 0:
            return
        grams = linear_input_grams(layer, hidden, kwargs)
        for name, linear in linear_layers(layer).items():
            keep = mask_from_scores(wanda_scores(linear.weight, grams[name]), sparsity, nm, config.per_row)
            apply_mask(linear, keep, config.store_masks)

    return walk_layers(model, calib_batch, process, progress, desc="wanda")
