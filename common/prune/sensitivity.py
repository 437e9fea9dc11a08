"""Where pruning hurts: per-layer and per-module sensitivity, and non-uniform sparsity allocation.

Sensitivity = perplexity after pruning ONE part (a decoder layer, or one kind of projection in every
layer) with everything else intact; the part is restored afterwards. The same measurement answers
"are later layers more sensitive?" and tells where to spend a sparsity budget. The coarser view of
SparseGPT's paper keeps one third of the layers dense (first, middle or last) and prunes the rest:
`ppl_with_dense_layers` evaluates a pruned model with some of its layers swapped back to dense.

Non-uniform allocation (OWL, Yin et al. 2024): layers whose Wanda scores have more outliers (scores
above `threshold` x their mean) hold more of the model's important weights, so they get a lower
sparsity and quieter layers a higher one, within target +- lam and with the same mean as uniform.
"""
import copy
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..eval import perplexity
from ..calibration import decoder_layers, linear_input_grams, linear_layers, walk_layers
from .masks import apply_mask, nm_mask, parse_pattern
from .wanda import wanda_scores

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class EvalSettings:
    """How each sensitivity point is evaluated (a sweep evaluates many models: keep it small)."""
    seqlen: int = 512
    max_windows: int | None = 2
    data: str = "wiki"


def evaluate(model, tokenizer, settings: EvalSettings) -> float:
    return perplexity(model, tokenizer, settings.data, seqlen=settings.seqlen,
                      max_windows=settings.max_windows, progress=False).ppl


@torch.no_grad()
def nm_magnitude_layer(layer, pattern: str = "2:4", names=PROJECTIONS) -> None:
    """N:M magnitude pruning of the named projections of one decoder layer."""
    n, m = parse_pattern(pattern)
    for name, linear in linear_layers(layer).items():
        if name.rsplit(".", 1)[-1] in names:
            apply_mask(linear, nm_mask(linear.weight.abs().float(), n, m))


@torch.no_grad()
def zero_mlp_channels(layer, fraction: float = 0.5) -> None:
    """Structured: zero the `fraction` of MLP channels with the smallest weight norm (same output as
    removing them, without reshaping anything)."""
    mlp = layer.mlp
    norms = torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight.T], 1).float().norm(dim=1)
    drop = norms.topk(int(fraction * norms.numel()), largest=False).indices
    mlp.up_proj.weight[drop] = 0
    mlp.down_proj.weight[:, drop] = 0


def spread_layers(num_layers: int, count: int) -> list:
    """`count` layer indices spread evenly from the first to the last."""
    count = max(1, min(count, num_layers))
    return sorted({round(i * (num_layers - 1) / max(count - 1, 1)) for i in range(count)})


def layer_sensitivity(model, tokenizer, layers, prune_layer, settings: EvalSettings, progress: bool = True) -> dict:
    """{layer index: perplexity with only that layer pruned by `prune_layer(layer)`}."""
    result = {}
    for index in tqdm(layers, desc="layer sensitivity", disable=not progress, leave=False):
        original = decoder_layers(model)[index]
        decoder_layers(model)[index] = pruned = copy.deepcopy(original)
        prune_layer(pruned)
        try:
            result[index] = evaluate(model, tokenizer, settings)
        finally:
            decoder_layers(model)[index] = original
    return result


def module_sensitivity(model, tokenizer, settings: EvalSettings, groups: dict | None = None,
                       pattern: str = "2:4", progress: bool = True) -> dict:
    """{group name: perplexity with that group of projections N:M-pruned (magnitude) in every layer}.
    `groups` maps a name to projection names; default: each projection on its own."""
    groups = groups or {name: (name,) for name in PROJECTIONS}
    result = {}
    for group, names in tqdm(groups.items(), desc="module sensitivity", disable=not progress, leave=False):
        pruned = copy.deepcopy(model)
        for layer in decoder_layers(pruned):
            nm_magnitude_layer(layer, pattern, names=names)
        result[group] = evaluate(pruned, tokenizer, settings)
        del pruned
    return result


THIRDS = ("first", "middle", "last")


def third_layers(num_layers: int, which: str) -> range:
    """The decoder layers of the first, middle or last third (num_layers // 3 each; the middle one is
    centred, so with 31 layers it leaves one layer on each side of it)."""
    if which not in THIRDS:
        raise ValueError(f"which third: one of {', '.join(THIRDS)}, not {which!r}")
    third = num_layers // 3
    start = {"first": 0, "middle": (num_layers - third) // 2, "last": num_layers - third}[which]
    return range(start, start + third)


def skip_third_sparsities(num_layers: int, sparsity: float, skip: str) -> tuple:
    """Per-layer sparsities that leave the first, middle or last third of the layers dense."""
    dense = third_layers(num_layers, skip)
    return tuple(0.0 if i in dense else sparsity for i in range(num_layers))


@torch.no_grad()
def ppl_with_dense_layers(pruned, dense, indices, tokenizer, settings: EvalSettings) -> float:
    """Perplexity of `pruned` with its decoder layers `indices` taken from `dense` for the evaluation (the
    pruned layers are put back afterwards). With a sequentially calibrated method (Wanda, SparseGPT) and
    the LAST layers restored this equals a run that skipped them; restoring earlier layers leaves the
    later ones with masks chosen when their inputs came through pruned layers."""
    layers, dense_layers = decoder_layers(pruned), decoder_layers(dense)
    saved = {i: layers[i] for i in indices}
    for i in indices:
        layers[i] = dense_layers[i]
    try:
        return evaluate(pruned, tokenizer, settings)
    finally:
        for i, layer in saved.items():
            layers[i] = layer


@torch.no_grad()
def wanda_outlier_ratios(model, calib_batch, threshold: float = 5.0, progress: bool = True) -> torch.Tensor:
    """Per layer, the fraction of Wanda scores above `threshold` x the mean score of their matrix."""
    ratios = []

    def process(index, layer, hidden, kwargs):
        above = total = 0
        grams = linear_input_grams(layer, hidden, kwargs)
        for name, linear in linear_layers(layer).items():
            scores = wanda_scores(linear.weight, grams[name])
            above += int((scores > threshold * scores.mean()).sum())
            total += scores.numel()
        ratios.append(above / total)

    walk_layers(model, calib_batch, process, progress, desc="outliers")
    return torch.tensor(ratios)


def owl_layer_sparsities(outlier_ratios: torch.Tensor, target: float, lam: float = 0.08) -> tuple:
    """Sparsities in [target - lam, target + lam], lower where outliers are more frequent, mean = target."""
    r = outlier_ratios.float()
    spread = (r - r.min()) / (r.max() - r.min()).clamp_min(1e-12)
    s = target + lam - 2 * lam * spread
    s = (s + target - s.mean()).clamp(0.0, 0.99)
    return tuple(float(v) for v in s)
