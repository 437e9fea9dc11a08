"""AWQ (Lin et al., 2023): activation-aware weight quantization.

Weights that meet large activations matter most. Scaling input channel j of a weight up by s_j
(and its input down by s_j, folded into whatever produces that input) leaves the float layer
unchanged but shrinks the relative rounding error of those weights. AWQ takes s = mean|x|^alpha and
searches alpha on a grid, for each group of linears that share one input (q/k/v after the attention
norm, gate/up after the MLP norm, down after up), choosing the alpha whose quantized outputs are
closest to the float outputs. An optional clip search then shrinks each group's range.
"""
from dataclasses import dataclass

import torch

from ..calibration import record_linear_inputs, walk_layers
from ..errors import WorkshopError
from .formats import check_int_grid, fake_quant_int
from .rtn import rtn_into


@dataclass(frozen=True)
class AWQConfig:
    bits: int = 4
    group_size: int | None = 128
    symmetric: bool = False
    alpha_points: int = 10         # alphas tried: 0, 1/10, ..., 9/10 (alpha_grid)
    clip_search: bool = True
    clip_ratios: tuple = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75)
    search_tokens: int = 512       # calibration tokens the searches use (a strided subset): enough for
                                   # a per-channel statistic, and the searches' cost grows with it
    needs_calibration = True       # the scales come from the calibration activations

    def __post_init__(self):
        check_int_grid(self.bits, self.group_size)
        if not isinstance(self.alpha_points, int) or self.alpha_points < 1:
            raise WorkshopError(f"alpha_points={self.alpha_points!r} is not a number of alphas to try.",
                                "Give a positive count, e.g. 10 (alphas 0, 0.1, ..., 0.9).")
        if not self.clip_ratios or not all(0 < r <= 1 for r in self.clip_ratios):
            raise WorkshopError(f"clip_ratios={self.clip_ratios!r}: each is the fraction of a group's range kept, "
                                "in (0, 1].", "Give e.g. (1.0, 0.95, 0.9); 1.0 keeps the whole range.")
        if not isinstance(self.search_tokens, int) or self.search_tokens < 1:
            raise WorkshopError(f"search_tokens={self.search_tokens!r} is not a number of tokens.",
                                "Give a positive count, e.g. 512.")


def scaling_groups(layer) -> list:
    """(what produces the input, [linears reading it]) of a Llama decoder layer. v -> o is left out
    under grouped-query attention, where v's outputs are repeated before o reads them."""
    attn, mlp = layer.self_attn, layer.mlp
    groups = [(layer.input_layernorm, ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]),
              (layer.post_attention_layernorm, ["mlp.gate_proj", "mlp.up_proj"]),
              (mlp.up_proj, ["mlp.down_proj"])]
    if attn.v_proj.out_features == attn.o_proj.in_features:
        groups.append((attn.v_proj, ["self_attn.o_proj"]))
    return groups


def alpha_grid(points: int) -> list:
    """The alphas a scale search tries: 0, 1/points, ..., (points - 1)/points."""
    return [i / points for i in range(points)]


def channel_abs_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean |x| of each input channel [tokens, channels]: AWQ's measure of how much a channel matters."""
    return x.abs().float().mean(dim=0)


@torch.no_grad()
def fold_scales(previous, linears, s: torch.Tensor) -> None:
    """Divide the input of `linears` by s (in `previous`: a norm's weight, or a linear's output rows)
    and multiply their input columns by s: the float function is unchanged."""
    if isinstance(previous, torch.nn.Linear):
        previous.weight.div_(s.view(-1, 1).to(previous.weight.dtype))
        if previous.bias is not None:
            previous.bias.div_(s.to(previous.bias.dtype))
    else:
        previous.weight.div_(s.to(previous.weight.dtype))
    for linear in linears:
        linear.weight.mul_(s.view(1, -1).to(linear.weight.dtype))


def _output_error(x, weights, quantize) -> float:
    return sum(((x @ (w - quantize(w)).T) ** 2).mean().item() for w in weights)


@torch.no_grad()
def search_scale(x: torch.Tensor, weights: list, config: AWQConfig) -> torch.Tensor:
    """The per-input-channel scale s = mean|x|^alpha whose alpha minimises the quantized output error."""
    x_mean = channel_abs_mean(x)
    best, best_s = float("inf"), torch.ones_like(x_mean)
    for alpha in alpha_grid(config.alpha_points):
        s = x_mean.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()      # centre the scales around 1 (only ratios matter)
        error = _output_error(x / s, [w * s for w in weights],
                              lambda w: fake_quant_int(w, config.bits, config.group_size, config.symmetric))
        if error < best:
            best, best_s = error, s
    return best_s


@torch.no_grad()
def clip_weight(x: torch.Tensor, weight: torch.Tensor, config: AWQConfig) -> torch.Tensor:
    """`weight` clipped to r * max|w| in each (row, group), r chosen per group from `clip_ratios` to
    best match the group's float outputs after quantization: a narrower range rounds the bulk of
    the weights more finely at the cost of the few largest."""
    group = config.group_size or weight.shape[1]
    w = weight.float().reshape(weight.shape[0], -1, group)              # [out, groups, group]
    xg = x.reshape(x.shape[0], -1, group)                                # [tokens, groups, group]
    reference = torch.einsum("ngk,tgk->tng", w, xg)
    w_max = w.abs().amax(dim=2, keepdim=True)
    best_err = torch.full(w.shape[:2], float("inf"), device=w.device)
    best = w
    for ratio in config.clip_ratios:
        clipped = w.clamp(-w_max * ratio, w_max * ratio)
        q = fake_quant_int(clipped.reshape(weight.shape), config.bits, config.group_size,
                           config.symmetric).reshape(w.shape)
        err = ((torch.einsum("ngk,tgk->tng", q, xg) - reference) ** 2).mean(dim=0)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better.unsqueeze(-1), clipped, best)
    return best.reshape(weight.shape).to(weight.dtype)


def search_subset(x: torch.Tensor, config: AWQConfig) -> torch.Tensor:
    """A strided subset of `config.search_tokens` of the tokens `x` [tokens, in]."""
    return x[:: max(1, x.shape[0] // config.search_tokens)]


def awq_layer(layer, hidden: torch.Tensor, kwargs: dict, config: AWQConfig) -> None:
    """One decoder layer, in place, from the hidden states `hidden` it receives on the calibration data:
    scales searched and folded, optional clip search, then round-to-nearest."""
    inputs = record_linear_inputs(layer, hidden, kwargs)
    for previous, names in scaling_groups(layer):
        linears = [layer.get_submodule(n) for n in names]
        # Folding leaves every output of the float layer unchanged, so the inputs recorded
        # before any folding hold for each group until its own scales divide them.
        s = search_scale(search_subset(inputs[names[0]], config), [lin.weight.float() for lin in linears], config)
        fold_scales(previous, linears, s)
        for name in names:
            inputs[name] = inputs[name] / s
    for name, x in inputs.items():
        linear = layer.get_submodule(name)
        w = linear.weight.data
        if config.clip_search:
            w = clip_weight(search_subset(x, config), w, config)
        rtn_into(linear, w, config.bits, config.group_size, config.symmetric)


def quantize_awq(model, config: AWQConfig, calib_batch: torch.Tensor, progress: bool = True):
    """AWQ on every decoder layer in order, each calibrated on what the layers before it (already
    quantized) output."""
    return walk_layers(model, calib_batch, lambda index, layer, hidden, kwargs: awq_layer(layer, hidden, kwargs, config),
                       progress, desc="AWQ")
