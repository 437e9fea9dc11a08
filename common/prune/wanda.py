"""Wanda (Sun et al., 2023): prune by |w_ij| * ||x_j||, weight magnitude times input-channel norm.

A weight matters as much as the signal it multiplies: |w_ij| * ||x_j||_2 (the norm over calibration
tokens of input channel j) estimates its contribution to the output. Weights compete within their
output row. No weight update, one forward pass per layer: nearly as cheap as magnitude.
With `row_spread` the rows of a matrix get different sparsities (row_sparsity.py, after TRIM).
"""
from dataclasses import dataclass

import torch

from ..calibration import linear_input_grams, linear_layers, walk_layers
from ..errors import WorkshopError
from .masks import SparsityConfig, apply_mask, mask_from_scores
from .row_sparsity import check_row_spread, mask_with_row_counts, trim_row_counts


@dataclass(frozen=True)
class WandaConfig(SparsityConfig):
    per_row: bool = True      # the paper's comparison group: each output row
    row_spread: float = 0.0   # > 0: each row's sparsity within target +- row_spread, lower for larger outputs

    def __post_init__(self):
        super().__post_init__()
        check_row_spread(self.row_spread, self.pattern)
        if self.row_spread and not self.per_row:
            raise WorkshopError("row_spread sets a sparsity for every output row, so weights must compete "
                                "within their row.", "Keep per_row=True with row_spread.")


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
            scores = wanda_scores(linear.weight, grams[name])
            if config.row_spread:
                counts = trim_row_counts(linear.weight, grams[name], sparsity, config.row_spread)
                keep = mask_with_row_counts(scores, counts)
            else:
                keep = mask_from_scores(scores, sparsity, nm, config.per_row)
            apply_mask(linear, keep, config.store_masks)

    return walk_layers(model, calib_batch, process, progress, desc="wanda")
