"""GPTQ (Frantar et al., 2022): quantize a weight matrix one input column at a time, and after each
column push its rounding error onto the columns not yet quantized, weighted by the inverse Hessian
of the layer's output error, so that the layer's outputs (not its weights) stay close.

For a linear layer with inputs X, the output error ||W X - Q X||^2 / n has Hessian H = 2 X^T X / n
in every row of W (`calibration.hessian`). Rounding column i by err_i moves the best values of the
later columns by -err_i * Hinv[i, i:] / Hinv[i, i]. With U the upper Cholesky factor of H^-1 the
same update reads -(err_i / U[i, i]) * U[i, i:], and the rows of U are all that is ever needed.
Updates are applied lazily: inside a block of 128 columns at once, to the rest of the matrix once
per block.
"""
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..calibration import check_true_sequential, hessians_in_layer_order, walk_layers
from .formats import check_act_bits, check_int_grid, dequantize_int, int_scale_zero, quantize_int, rounded_scale
from .storage import WeightFormat, mark_quantized, quantize_activations_per_token, stored_scale_dtype


@dataclass(frozen=True)
class GPTQConfig:
    bits: int = 4
    group_size: int | None = 128   # None: one scale per output channel
    symmetric: bool = False
    damp: float = 0.01             # damping: this fraction of the mean diagonal is added to H (SparseGPT's too)
    block_size: int = 128          # columns updated together before the rest of W is touched
    act_order: bool = True         # quantize columns with the largest H[i, i] (most input energy) first,
                                   # while many columns are left to absorb their error
    true_sequential: bool = False  # each group of a layer's linears calibrated on the outputs of the
                                   # groups before it, already quantized (calibration.hessians_in_layer_order)
    act_bits: int | None = None    # also round every linear's input per token to this many bits (after its
                                   # weights are fitted on float inputs, so later layers see the rounding)
    needs_calibration = True       # H comes from the calibration inputs

    def __post_init__(self):
        check_int_grid(self.bits, self.group_size)
        check_act_bits(self.act_bits)
        check_true_sequential(self)


@contextmanager
def _one_cpu_thread(device: torch.device):
    """The column loop is thousands of tiny operations: on a CPU, splitting each over threads costs
    more than it saves (10x slower on a busy 2-core machine), so run it on one."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def gptq_quantize_weight(weight: torch.Tensor, H: torch.Tensor, config: GPTQConfig):
    """(the GPTQ-quantized, dequantized `weight` [out, in], its scales [out, groups], its zero points
    [out, groups]), given the input Hessian H [in, in]. Scales are rounded to the 16 bits they are
    stored in, so packing the result loses nothing."""
    scale_dtype = stored_scale_dtype(weight.dtype)

    def grid(w):
        scale, zero = int_scale_zero(w, config.bits, config.symmetric)
        return rounded_scale(scale, scale_dtype), zero

    W = weight.detach().clone().float()
    H = H.clone().float()
    n_in = W.shape[1]
    dead = torch.diag(H) == 0          # inputs never active: their weights do not matter
    H[dead, dead] = 1
    W[:, dead] = 0

    group = config.group_size or n_in
    grids = {}  # group index -> (scale, zero), each [out, 1]
    if config.act_order:
        # Groups stay contiguous in the original order (so they pack) and their scales come from
        # the original weights, since columns of one group are now visited far apart.
        grids = {g // group: grid(W[:, g: g + group]) for g in range(0, n_in, group)}
        perm = torch.argsort(torch.diag(H), descending=True)
        W, H = W[:, perm], H[perm][:, perm]
    else:
        perm = torch.arange(n_in, device=W.device)

    H += config.damp * torch.mean(torch.diag(H)) * torch.eye(n_in, device=H.device)
    U = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)

    Q = torch.zeros_like(W)
    with _one_cpu_thread(W.device):
        for b1 in range(0, n_in, config.block_size):
            b2 = min(b1 + config.block_size, n_in)
            W1, U1 = W[:, b1:b2].clone(), U[b1:b2, b1:b2]
            errors = torch.zeros_like(W1)
            for i in range(b2 - b1):
                column = b1 + i
                if config.act_order:
                    scale, zero = grids[int(perm[column]) // group]
                elif column % group == 0:  # a new group: its scale from its weights as updated so far
                    upcoming = torch.cat([W1[:, i:], W[:, b2:]], dim=1)[:, :group]
                    scale, zero = grids[column // group] = grid(upcoming)
                w = W1[:, i:i + 1]
                q = dequantize_int(quantize_int(w, scale, zero, config.bits, config.symmetric), scale, zero)
                Q[:, column] = q[:, 0]
                err = (w - q) / U1[i, i]
                W1[:, i:] -= err @ U1[i:i + 1, i:]  # spread the error over the block's later columns
                errors[:, i] = err[:, 0]
            W[:, b2:] -= errors @ U[b1:b2, b2:]     # and, once per block, over the rest of the matrix
    scales, zeros = (torch.cat([grids[g][k] for g in range(len(grids))], dim=1) for k in (0, 1))
    return Q[:, torch.argsort(perm)].to(weight.dtype), scales, zeros


def gptq_layer(layer, hidden: torch.Tensor, kwargs: dict, config: GPTQConfig) -> None:
    """One decoder layer, in place, from the hidden states `hidden` it receives on the calibration data."""
    # Linears that read one input share its H, and since GPTQ treats rows independently, stacking
    # their weights into one matrix gives the same result in one pass.
    for names, hessians in hessians_in_layer_order(layer, hidden, kwargs, config.true_sequential):
        linears = [layer.get_submodule(name) for name in names]
        stacked = torch.cat([linear.weight.data for linear in linears])
        quantized, scales, zeros = gptq_quantize_weight(stacked, hessians[names[0]], config)
        rows = [lin.out_features for lin in linears]
        for linear, weight, scale, zero in zip(linears, quantized.split(rows), scales.split(rows), zeros.split(rows)):
            linear.weight.data = weight.contiguous()
            mark_quantized(linear, WeightFormat("int", config.bits, config.group_size, config.symmetric, scale, zero))
            if config.act_bits:
                quantize_activations_per_token(linear, config.act_bits)


def quantize_gptq(model, config: GPTQConfig, calib_batch: torch.Tensor, progress: bool = True):
    """GPTQ on every linear of the decoder, layer by layer on the calibration batch."""
    return walk_layers(model, calib_batch, lambda index, layer, hidden, kwargs: gptq_layer(layer, hidden, kwargs, config),
                       progress, desc="GPTQ")
