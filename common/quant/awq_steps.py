"""AWQ discovered step by step (after MIT HAN Lab 6.5940, lab 4), on the whole model (lab 02).

AWQ (`awq.py`) rests on one observation, which four measurements show:
1. keep the ~1% of input channels that meet the largest activations (mean |x|) in full precision and
   round the rest: much of round-to-nearest's loss goes;
2. keep a random 1% instead: hardly any goes, so it is *which* channels that matters, and the
   activations, not the weights, tell which;
3. keeping a few columns in full precision needs a mixed-precision layout; scaling those columns up by
   s before rounding (and their inputs down by s) protects them with every weight on the grid;
4. search s = mean|x|^alpha per group of linears that read one input, alpha chosen to minimise the
   quantized layer's output error on calibration inputs: that is AWQ's scale search (the library's
   AWQ adds a clipping search and walks the layers in order).

Every linear is fake-quantized on its own, from inputs measured once on the unquantized model (one
forward pass): `Q(W diag(s)) diag(s)^-1` is exactly what a layer computes once diag(s)^-1 is folded
into whatever produces its input. Steps 1 and 2 keep full-precision columns and are not deployable as
such (AWQ's paper uses them as the motivation too).
"""
from dataclasses import dataclass

import torch

from ..calibration import CHUNK, SHARED_INPUTS, decoder_layers, linear_layers
from .awq import alpha_grid
from .layer_study import rtn_weight


@dataclass
class LinearInputs:
    mean_abs: torch.Tensor   # [in]: mean |x| of each input channel over every calibration token
    sample: torch.Tensor     # [tokens, in]: a strided subset of the inputs, for the scale search
    inputs: torch.Tensor | None = None   # [tokens, in]: every input, for the groups asked for (else None)


@torch.no_grad()
def input_statistics(model, calib_batch: torch.Tensor, sample_tokens: int = 256, keep: tuple = ()) -> dict:
    """{(layer index, names of a group of SHARED_INPUTS): LinearInputs} from one forward pass of the
    unquantized model over the calibration batch (on the CPU, float32). The groups in `keep` also keep
    every input (a one-layer study reads them from the same pass)."""
    total = calib_batch.numel()
    stride = max(1, total // sample_tokens)
    sums, samples, seen, kept = {}, {}, {}, {}
    handles = []
    for index, layer in enumerate(decoder_layers(model)):
        for names in SHARED_INPUTS:
            key = (index, names)

            def hook(module, args, key=key):
                x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
                sums[key] = x.abs().sum(dim=0) + sums.get(key, 0)
                start = (-seen.get(key, 0)) % stride        # the same global stride across chunks
                samples.setdefault(key, []).append(x[start::stride].cpu())
                seen[key] = seen.get(key, 0) + x.shape[0]
                if key in keep:
                    kept.setdefault(key, []).append(x.cpu())
            handles.append(layer.get_submodule(names[0]).register_forward_pre_hook(hook))
    device = next(model.parameters()).device
    try:
        for ids in calib_batch.split(CHUNK):
            model.get_decoder()(ids.to(device), use_cache=False)   # the inputs are all inside: no logits needed
    finally:
        for h in handles:
            h.remove()
    return {key: LinearInputs((sums[key] / seen[key]).cpu(), torch.cat(samples[key])[:sample_tokens],
                              torch.cat(kept[key]) if key in kept else None)
            for key in sums}


def salient_channels(act_mean: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the max(1, round(fraction * channels)) input channels with the largest mean |x|."""
    k = max(1, round(fraction * act_mean.numel()))
    return act_mean.topk(k).indices


def random_channels(channels: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """As many input channels as salient_channels takes, drawn at random."""
    k = max(1, round(fraction * channels))
    return torch.randperm(channels, generator=generator)[:k]


def protect_channels(weight: torch.Tensor, channels: torch.Tensor, bits: int, group_size: int | None,
                     scale: float | None = None) -> torch.Tensor:
    """`weight` [out, in] rounded to nearest, except its input columns `channels`: kept as they are
    (scale None), or multiplied by `scale` before rounding and divided by it after."""
    weight = weight.float()
    if scale is None:
        w_hat = rtn_weight(weight, bits, group_size)
        w_hat[:, channels] = weight[:, channels]
        return w_hat
    s = torch.ones(weight.shape[1], device=weight.device)
    s[channels] = scale
    return rtn_weight(weight * s, bits, group_size) / s


def protect_salient(weight: torch.Tensor, act_mean: torch.Tensor, fraction: float, bits: int,
                    group_size: int | None, scale: float | None = None) -> torch.Tensor:
    """Steps 1 and 3: the `fraction` of input channels with the largest mean |x| kept (scale None) or
    scaled by `scale` around the rounding; the rest rounded to nearest."""
    return protect_channels(weight, salient_channels(act_mean, fraction), bits, group_size, scale)


def output_error(x: torch.Tensor, weights: list, w_hats: list) -> float:
    """Sum over the weights of the mean squared output error ||x (W - W_hat)^T||^2 / tokens."""
    return sum(float(((x @ (w.float() - w_hat).T) ** 2).sum()) / x.shape[0] for w, w_hat in zip(weights, w_hats))


@torch.no_grad()
def search_scale(weights: list, x: torch.Tensor, bits: int, group_size: int | None, points: int = 5) -> torch.Tensor:
    """Step 4: s = mean|x|^alpha (per input channel), alpha in alpha_grid(points), chosen to minimise the
    output error of Q(W diag(s)) diag(s)^-1 summed over `weights` (linears that read `x`). 5 points (0, 0.2,
    ..., 0.8) keep the search of every layer of the model within seconds on a CPU (each point rounds every
    weight of the layer once)."""
    x_mean = x.abs().float().mean(dim=0)
    best, best_s = float("inf"), torch.ones_like(x_mean)
    for alpha in alpha_grid(points):
        s = x_mean.pow(alpha).clamp(min=1e-4)
        error = output_error(x, weights, [rtn_weight(w.float() * s, bits, group_size) / s for w in weights])
        if error < best:
            best, best_s = error, s
    return best_s


@torch.no_grad()
def quantize_each_group(model, stats: dict, edit) -> None:
    """Set every decoder linear's weight to edit(weights of its group, the group's LinearInputs)[k], group
    by group of SHARED_INPUTS, in place (the model is fake-quantized; nothing is folded). `edit` sees
    float32 weights on the CPU, where the statistics are, whatever the model's device and dtype."""
    for index, layer in enumerate(decoder_layers(model)):
        linears = linear_layers(layer)
        for names in SHARED_INPUTS:
            weights = [linears[name].weight.data.float().cpu() for name in names]
            for name, w_hat in zip(names, edit(weights, stats[(index, names)])):
                target = linears[name].weight
                target.data = w_hat.to(device=target.device, dtype=target.dtype)
