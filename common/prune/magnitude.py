"""Magnitude pruning: drop the weights with the smallest |w|, with no calibration data.

The baseline every one-shot method is measured against. It ignores how large each input is, so a
small weight on a channel with huge activations (LLMs have such outlier channels) is pruned as
readily as one on a quiet channel; that is why it collapses first as sparsity grows.

Ties: weights stored on a coarse grid (the embedded checkpoint was published at Q4_1, 16 levels per
block of 32) often have equal |w| at the edge of the mask, and which of them is kept is then up to the
sort. `tie_break_seed` adds a jitter far below any grid step, so ties go at random and nothing else moves.
"""
from dataclasses import dataclass

import torch

from ..calibration import decoder_layers, linear_layers
from .masks import SparsityConfig, apply_mask, mask_from_scores


@dataclass(frozen=True)
class MagnitudeConfig(SparsityConfig):
    per_row: bool = False  # compare weights within each output row instead of the whole matrix
    tie_break_seed: int | None = None  # break ties of |w| at random (this seed) instead of by the sort
    needs_calibration = False          # |w| alone


def magnitude_scores(weight: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """|w|; with a generator, plus a random jitter of at most 1e-6 x max|w| that only decides ties."""
    scores = weight.detach().abs().float()
    if generator is None:
        return scores
    jitter = torch.rand(scores.shape, generator=generator).to(scores.device)
    return scores + 1e-6 * scores.max() * jitter


@torch.no_grad()
def prune_magnitude(model, config: MagnitudeConfig, calib_batch=None, progress: bool = True):
    """Zero the smallest-magnitude weights of every decoder-layer linear; `calib_batch` is not used."""
    layers = decoder_layers(model)
    config.validate(len(layers))
    nm = config.nm()
    generator = None if config.tie_break_seed is None else torch.Generator().manual_seed(config.tie_break_seed)
    for index, layer in enumerate(layers):
        sparsity = config.for_layer(index)
        if sparsity == 0:
            continue
        for linear in linear_layers(layer).values():
            keep = mask_from_scores(magnitude_scores(linear.weight, generator), sparsity, nm, config.per_row)
            apply_mask(linear, keep, config.store_masks)
    return model
