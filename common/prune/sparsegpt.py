"""SparseGPT (Frantar & Alistarh, 2023): prune, and update the kept weights to repair the output.

For one linear layer with inputs X (Hessian H = 2 X^T X / n, `calibration.hessian`), removing weight
w_q from a row costs w_q^2 / (2 [H^-1]_qq) in mean squared output error (Optimal Brain Surgeon), and
the best repair moves the row's not-yet-processed weights by -(w_q / [H^-1]_qq) * H^-1[q, :].
SparseGPT walks the input columns left to right in blocks: it chooses the mask of a block by that
cost, zeroes the pruned weights column by column while spreading each error onto the columns to its
right, then pushes the block's accumulated error onto the rest of the matrix at once. The upper Cholesky factor of H^-1 gives the
needed rows of the successive inverses without recomputing them.

Unstructured, the mask of a block is chosen over all its rows at once, so rows already end up with
somewhat different sparsities. With `row_spread` each row instead loses a number of weights set in
advance from its share of the output (row_sparsity.py, after TRIM), spread evenly over the blocks.
"""
from dataclasses import dataclass

import torch

from ..calibration import check_true_sequential, hessians_in_layer_order, walk_layers
from .masks import SparsityConfig, apply_mask, check_sparsity
from .row_sparsity import check_row_spread, mask_with_row_counts, trim_row_counts


@dataclass(frozen=True)
class SparseGPTConfig(SparsityConfig):
    block_size: int = 128  # columns whose mask is chosen together (a multiple of M for N:M)
    damp: float = 0.01     # added to H's diagonal, as a fraction of its mean, to keep it invertible
    row_spread: float = 0.0  # > 0: each row's sparsity within target +- row_spread, lower for larger outputs
    true_sequential: bool = False  # each group of a layer's linears calibrated on the outputs of the
                                   # groups before it, already pruned (calibration.hessians_in_layer_order)

    def __post_init__(self):
        super().__post_init__()
        check_row_spread(self.row_spread, self.pattern)
        check_true_sequential(self)


def inverse_hessian_factor(hessian: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1."""
    h = hessian.clone()
    h += damp * h.diagonal().mean() * torch.eye(h.size(0), device=h.device, dtype=h.dtype)
    h_inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(h_inv, upper=True)


@torch.no_grad()
def sparsegpt_weight(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, nm: tuple | None = None,
                     block_size: int = 128, damp: float = 0.01, row_counts: torch.Tensor | None = None) -> torch.Tensor:
    """The pruned and repaired weight [out, in] (float32) of one linear layer, given the input Hessian
    H [in, in] (any positive multiple of it gives the same weight: the damping is relative); zeros where
    pruned. `row_counts` [out]: how many weights each row loses (unstructured only), instead of `sparsity`."""
    check_sparsity(sparsity)
    w = weight.detach().float().clone()
    hessian = hessian.float().clone()
    dead = hessian.diagonal() == 0  # inputs that never fire: their weights can go at no cost
    hessian[dead, dead] = 1
    w[:, dead] = 0
    u = inverse_hessian_factor(hessian, damp)
    cols = w.size(1)
    if nm and block_size % nm[1]:
        block_size = nm[1] * max(1, block_size // nm[1])
    for start in range(0, cols, block_size):
        end = min(start + block_size, cols)
        block = w[:, start:end].clone()
        u_block = u[start:end, start:end]
        errors = torch.zeros_like(block)
        cost = block.pow(2) / u_block.diagonal().pow(2)[None, :]
        pruned = torch.zeros_like(block, dtype=torch.bool)
        if row_counts is not None:  # this block's share of each row's count (the shares add up exactly)
            share = row_counts * end // cols - row_counts * start // cols
            pruned = ~mask_with_row_counts(cost, share)
        elif not nm:
            n_pruned = int(sparsity * cost.numel())
            if n_pruned:
                pruned.view(-1)[cost.flatten().topk(n_pruned, largest=False).indices] = True
        for j in range(end - start):
            if nm and j % nm[1] == 0:  # choose this group's mask with the weights as updated so far
                group_cost = block[:, j: j + nm[1]].pow(2) / u_block.diagonal()[j: j + nm[1]].pow(2)[None, :]
                drop = group_cost.topk(nm[1] - nm[0], dim=1, largest=False).indices
                pruned[:, j: j + nm[1]].scatter_(1, drop, True)
            error = block[:, j] * pruned[:, j] / u_block[j, j]
            block[:, j:].addr_(error, u_block[j, j:], alpha=-1)  # in place: this loop runs once per column
            block[:, j].masked_fill_(pruned[:, j], 0)
            errors[:, j] = error
        w[:, start:end] = block
        w[:, end:] -= errors @ u[start:end, end:]
    return w


@torch.no_grad()
def sparsegpt_layer(layer, hidden: torch.Tensor, kwargs: dict, config: SparseGPTConfig, sparsity: float) -> None:
    """One decoder layer pruned to `sparsity` (N:M if the config has a pattern), in place, from the hidden
    states `hidden` it receives on the calibration data."""
    for names, hessians in hessians_in_layer_order(layer, hidden, kwargs, config.true_sequential):
        for name in names:
            linear = layer.get_submodule(name)
            # (TRIM ranks rows by w^T G w: H = 2 G ranks them alike)
            counts = (trim_row_counts(linear.weight, hessians[name], sparsity, config.row_spread)
                      if config.row_spread else None)
            w = sparsegpt_weight(linear.weight, hessians[name], sparsity, config.nm(), config.block_size, config.damp,
                                 counts)
            linear.weight.data.copy_(w.to(linear.weight.dtype))
            apply_mask(linear, w != 0, config.store_masks)


@torch.no_grad()
def prune_sparsegpt(model, config: SparseGPTConfig, calib_batch, progress: bool = True):
    config.validate(len(model.model.layers))

    def process(index, layer, hidden, kwargs):
        if sparsity := config.for_layer(index):   # 0 skips the layer
            sparsegpt_layer(layer, hidden, kwargs, config, sparsity)

    return walk_layers(model, calib_batch, process, progress, desc="sparsegpt")
