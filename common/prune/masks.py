"""Sparsity masks: unstructured and N:M, applied to linear layers and kept with them.

A mask is a bool tensor shaped like the weight, True where the weight is KEPT. N:M keeps N weights
in every group of M consecutive weights along the input dimension (2:4 is what Ampere-and-later
sparse tensor cores run). Applying a mask zeroes the weights and attaches the mask to the module:
  - always as a non-persistent bool buffer `weight_mask`, re-applied before every forward, so that
    fine-tuning (e.g. distillation after pruning) cannot bring pruned weights back;
  - with `store=True` also as a persistent bit-packed uint8 buffer `weight_mask_bits` (1 bit per
    weight), so the mask is saved and counted by stored_bytes. It need not be: the zeros themselves
    survive save/load, and `masks_from_zeros` rebuilds the masks after loading.
"""
import re
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import WorkshopError


def parse_pattern(pattern: str) -> tuple:
    """'2:4' -> (2, 4)."""
    match = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", str(pattern))
    if not match or not 0 < int(match[1]) < int(match[2]):
        raise WorkshopError(f"Sparsity pattern {pattern!r} is not N:M with 0 < N < M.",
                            "Use e.g. --pattern 2:4 (keep 2 of every 4) or 4:8.")
    return int(match[1]), int(match[2])


def check_sparsity(sparsity: float) -> None:
    if not 0.0 <= sparsity < 1.0:
        raise WorkshopError(f"Sparsity {sparsity} is outside [0, 1): it is the fraction of weights set "
                            "to zero, and 1 would remove every weight.", "Give a sparsity such as 0.5.")


@dataclass(frozen=True)
class SparsityConfig:
    """What every one-shot weight-pruning method takes; checked when it is made."""
    sparsity: float = 0.5                 # fraction of zeros (ignored when pattern is set)
    pattern: str | None = None            # "2:4", "4:8": N:M semi-structured instead of unstructured
    layer_sparsities: tuple | None = None  # per decoder layer (non-uniform allocation); 0 skips a layer
    store_masks: bool = False             # keep masks as persistent bit-packed buffers (counted as stored)
    needs_calibration = True              # (magnitude pruning, which reads only the weights, says False)

    def __post_init__(self):
        self.nm()
        check_sparsity(self.sparsity)
        for s in self.layer_sparsities or ():
            check_sparsity(s)

    def nm(self) -> tuple | None:
        return parse_pattern(self.pattern) if self.pattern else None

    def validate(self, num_layers: int) -> None:
        """What only the model can tell: one layer sparsity per decoder layer."""
        if self.layer_sparsities is not None and len(self.layer_sparsities) != num_layers:
            raise WorkshopError(f"layer_sparsities has {len(self.layer_sparsities)} entries for a model "
                                f"of {num_layers} layers.", "Give one sparsity per decoder layer.")

    def for_layer(self, index: int) -> float:
        """This layer's sparsity (for N:M: 0 means skip the layer, anything else applies N:M)."""
        return self.sparsity if self.layer_sparsities is None else float(self.layer_sparsities[index])


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the `n` highest scores in every group of `m` consecutive inputs of each row."""
    rows, cols = scores.shape
    if cols % m:
        raise WorkshopError(f"An N:M pattern with M={m} needs the input dimension to be a multiple of {m}; "
                            f"this layer has {cols} inputs.", f"Use a pattern whose M divides {cols}, or "
                            "skip this layer.")
    groups = scores.reshape(rows, cols // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(2, groups.topk(n, dim=2).indices, True)
    return keep.reshape(rows, cols)


def nm_boundary_ties(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """[rows, cols // m] True where a group's n-th and (n+1)-th highest scores are equal: which of them
    the N:M mask keeps is then decided by the sort, not by the scores."""
    ordered = scores.reshape(scores.size(0), -1, m).sort(dim=2, descending=True).values
    return ordered[..., n - 1] == ordered[..., n]


def unstructured_mask(scores: torch.Tensor, sparsity: float, per_row: bool = False) -> torch.Tensor:
    """Zero the lowest-scoring `sparsity` fraction, over the whole matrix or within each output row."""
    check_sparsity(sparsity)
    if per_row:
        n_pruned = int(sparsity * scores.size(1))
        keep = torch.ones_like(scores, dtype=torch.bool)
        if n_pruned:
            keep.scatter_(1, scores.topk(n_pruned, dim=1, largest=False).indices, False)
        return keep
    n_pruned = int(sparsity * scores.numel())
    keep = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
    if n_pruned:
        keep[scores.flatten().topk(n_pruned, largest=False).indices] = False
    return keep.view_as(scores)


def mask_from_scores(scores: torch.Tensor, sparsity: float, nm: tuple | None, per_row: bool) -> torch.Tensor:
    return nm_mask(scores, *nm) if nm else unstructured_mask(scores, sparsity, per_row)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """bool [...] -> uint8 [ceil(numel/8)]: 1 bit per weight."""
    flat = mask.flatten().to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-flat.numel() % 8)]).view(-1, 8)
    return (flat << torch.arange(8, dtype=torch.uint8, device=flat.device)).sum(1, dtype=torch.uint8)


def unpack_bits(bits: torch.Tensor, shape) -> torch.Tensor:
    flat = (bits[:, None] >> torch.arange(8, dtype=torch.uint8, device=bits.device)) & 1
    return flat.flatten()[: torch.Size(shape).numel()].view(shape).bool()


def _reapply_mask(module, args):
    module.weight.data.mul_(module.weight_mask)


@torch.no_grad()
def apply_mask(linear: nn.Linear, keep: torch.Tensor, store: bool = False) -> None:
    """Zero the pruned weights of `linear` and keep its mask (see the module docstring)."""
    keep = keep.to(device=linear.weight.device, dtype=torch.bool)
    linear.weight.data.mul_(keep)
    linear.register_buffer("weight_mask", keep, persistent=False)
    if store:
        linear.register_buffer("weight_mask_bits", pack_bits(keep))
    if not getattr(linear, "_mask_hook", None):
        linear._mask_hook = linear.register_forward_pre_hook(_reapply_mask)


def masks_from_zeros(model) -> int:
    """After loading a pruned checkpoint: re-attach masks where weights are exactly zero. Returns how many."""
    count = 0
    for module in model.model.layers.modules():
        if isinstance(module, nn.Linear) and (module.weight == 0).any():
            apply_mask(module, module.weight != 0)
            count += 1
    return count


def sparsity_of(model) -> float:
    """Fraction of exact zeros among the decoder layers' linear weights."""
    zeros = total = 0
    for module in model.model.layers.modules():
        if isinstance(module, nn.Linear):
            zeros += int((module.weight == 0).sum())
            total += module.weight.numel()
    return zeros / total

