"""Low-rank factorization: replace a linear layer W [out, in] by two thinner ones, B [out, r] @ A [r, in].

Plain SVD keeps the top-r singular directions of W, which minimises ||W - W_r|| but not the error on
real inputs. Activation-aware SVD (SVD-LLM-style whitening) factorizes W S instead, with S the
Cholesky factor of the calibration Gram matrix H = X^T X / n (so ||X W^T|| = ||S^T W^T||), truncates
it, and folds S^-1 back into A: the truncation then minimises the output error on calibration text.
The rank of each layer is set by an energy threshold (keep singular values until this fraction of
sum(sigma^2)) or by a parameter budget (keep this fraction of the layer's parameters). A layer is left
dense when its factors would not be smaller than it.

The factorized model is a plain nn.Module (each linear becomes nn.Sequential(A, B)); it is not a
standard transformers architecture, so it saves with torch.save / state_dict, not from_pretrained.
"""
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import WorkshopError
from ..calibration import linear_input_grams, linear_layers, require_calibration, walk_layers

TARGETS = {"mlp": ("mlp.",), "attention": ("self_attn.",), "all": ("mlp.", "self_attn.")}


@dataclass(frozen=True)
class LowRankConfig:
    param_fraction: float | None = 0.5  # keep this fraction of each targeted layer's parameters ...
    energy: float | None = None         # ... or keep singular values up to this fraction of energy
    activation_aware: bool = True       # whiten by calibration activations before the SVD
    targets: str = "mlp"                # "mlp", "attention" or "all"
    damp: float = 0.01                  # added to H's diagonal (fraction of its mean) before Cholesky

    def __post_init__(self):
        if (self.param_fraction is None) == (self.energy is None):
            raise WorkshopError("Give exactly one of param_fraction and energy.",
                                "e.g. LowRankConfig(param_fraction=0.5) or LowRankConfig(energy=0.9, param_fraction=None).")
        value = self.energy if self.energy is not None else self.param_fraction
        if not 0 < value <= 1:
            raise WorkshopError(f"{'energy' if self.energy is not None else 'param_fraction'}={value} is outside (0, 1].",
                                "Give a fraction such as 0.5.")
        if self.targets not in TARGETS:
            raise WorkshopError(f"Unknown targets {self.targets!r}.", f"Use one of {', '.join(TARGETS)}.")

    @property
    def needs_calibration(self) -> bool:
        return self.activation_aware


def rank_for(linear: nn.Linear, singular_values: torch.Tensor, config: LowRankConfig) -> int:
    out_f, in_f = linear.weight.shape
    if config.energy is not None:
        energy = singular_values.pow(2).cumsum(0) / singular_values.pow(2).sum()
        return min(int((energy < config.energy).sum()) + 1, singular_values.numel())
    return max(1, int(config.param_fraction * out_f * in_f / (out_f + in_f)))


def factorize(weight: torch.Tensor, gram: torch.Tensor | None = None, damp: float = 0.01):
    """SVD of `weight` (gram None) or of weight @ L with H = L L^T (then ||X W^T||^2 = n ||W L||^2):
    returns (u, s, vh_unwhitened) such that weight = u @ diag(s) @ vh_unwhitened and truncating to the
    first r terms gives the best rank-r approximation in the weights' (or the outputs') norm."""
    w = weight.float()
    if gram is None:
        return torch.linalg.svd(w, full_matrices=False)
    h = gram.float() + damp * gram.diagonal().mean() * torch.eye(gram.size(0), device=gram.device)
    chol = torch.linalg.cholesky(h)
    u, s, vh = torch.linalg.svd(w @ chol, full_matrices=False)
    return u, s, torch.linalg.solve_triangular(chol, vh, upper=False, left=False)  # vh L^-1


def factorized_linear(linear: nn.Linear, a: torch.Tensor, b: torch.Tensor) -> nn.Sequential:
    first = nn.Linear(a.size(1), a.size(0), bias=False, device=linear.weight.device, dtype=linear.weight.dtype)
    second = nn.Linear(b.size(1), b.size(0), bias=linear.bias is not None,
                       device=linear.weight.device, dtype=linear.weight.dtype)
    first.weight.data.copy_(a)
    second.weight.data.copy_(b)
    if linear.bias is not None:
        second.bias.data.copy_(linear.bias.data)
    return nn.Sequential(first, second)


@torch.no_grad()
def prune_lowrank(model, config: LowRankConfig, calib_batch=None, progress: bool = True):
    """Factorize the targeted linears of every decoder layer; returns the model (fewer parameters)."""
    require_calibration(config, calib_batch, instead="set activation_aware=False")
    if config.activation_aware:
        return walk_layers(model, calib_batch, lambda index, layer, hidden, kwargs: factorize_layer(
            layer, config, linear_input_grams(layer, hidden, kwargs).get), progress, desc="svd")
    for layer in model.model.layers:
        factorize_layer(layer, config, lambda name: None)
    return model


def factorize_layer(layer, config: LowRankConfig, gram_of) -> None:
    """Replace the targeted linears of one decoder layer by their factors (gram_of(name): H or None)."""
    for name, linear in linear_layers(layer).items():
        if not name.startswith(TARGETS[config.targets]):
            continue
        u, s, vh = factorize(linear.weight, gram_of(name), config.damp)
        rank = rank_for(linear, s, config)
        out_f, in_f = linear.weight.shape
        if rank * (out_f + in_f) >= out_f * in_f:
            continue  # the factors would be no smaller than the layer
        layer.set_submodule(name, factorized_linear(linear, s[:rank, None] * vh[:rank], u[:, :rank]))
