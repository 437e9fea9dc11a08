"""One linear layer pruned three ways and judged by its output error on held-out inputs (lab 03, section 2).

What a one-shot method really optimises is a layer's output: W x for the inputs x the layer meets. So
the fair yardstick for a pruned weight W' is the relative output error on inputs it was NOT
calibrated on,

    ||X (W - W')^T||^2 / ||X W^T||^2      (X: held-out inputs, one token per row),

and the three methods of the lab, applied to the same real layer at the same sparsity, rank in the
order the papers give: magnitude (|w| only), Wanda (|w| times the input channel's norm), SparseGPT
(the Optimal Brain Surgeon mask and weight update from the calibration Hessian). Lab 03's checkers
use the references here; the lab itself only captures inputs and measures errors with this module.
"""
import torch
from torch import nn

from .. import calibration
from .masks import unstructured_mask
from .sparsegpt import sparsegpt_weight
from .wanda import wanda_scores


def linear_inputs(model, linear: nn.Linear, batch: torch.Tensor) -> torch.Tensor:
    """The inputs [tokens, in_features] (float32) that `linear` receives when `model` reads `batch`
    [sequences, seqlen]; each forward stops at the layer, so a layer near the bottom is cheap to probe."""
    name = next(name for name, module in model.named_modules() if module is linear)
    return calibration.linear_inputs(model, [name], batch)[name]


def gram(inputs: torch.Tensor) -> torch.Tensor:
    """X^T X / tokens [in, in]: the calibration Hessian of the layer's squared output error (up to a factor 2)."""
    x = inputs.float()
    return x.T @ x / x.size(0)


def output_error(weight: torch.Tensor, pruned: torch.Tensor, inputs: torch.Tensor) -> float:
    """||X (W - W')^T||^2 / ||X W^T||^2 on the inputs X [tokens, in]: the share of the layer's output lost."""
    return calibration.relative_output_error(inputs, weight, pruned)


@torch.no_grad()
def magnitude_pruned(weight: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The weight with its smallest |w| zeroed, compared over the whole matrix (as `prune_magnitude`)."""
    w = weight.detach().float()
    return w * unstructured_mask(w.abs(), sparsity)


@torch.no_grad()
def wanda_pruned(weight: torch.Tensor, inputs: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The weight with the lowest |W_ij| * ||X_j|| of each output row zeroed (as `prune_wanda`)."""
    w = weight.detach().float()
    return w * unstructured_mask(wanda_scores(w, gram(inputs)), sparsity, per_row=True)


@torch.no_grad()
def sparsegpt_pruned(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float) -> torch.Tensor:
    """The weight pruned and repaired by SparseGPT from the calibration Hessian (as `prune_sparsegpt`)."""
    return sparsegpt_weight(weight, hessian, sparsity)
