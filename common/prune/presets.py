"""Pruning methods by name, with the defaults the command line and the labs share, and lab 03's rows.

`sparsity` is the fraction removed, for every method: of the decoder weights (magnitude, wanda,
sparsegpt), of the MLP channels (width; `heads_fraction` for attention heads), of the decoder layers
(depth), of the targeted layers' parameters (svd). `pattern` N:M asks for semi-structured sparsity
(magnitude, wanda, sparsegpt; modelopt is always 2:4).
"""
from ..errors import WorkshopError
from .masks import check_sparsity, parse_pattern

METHODS = ("magnitude", "wanda", "sparsegpt", "width", "depth", "svd", "modelopt:sparse_magnitude",
           "modelopt:sparsegpt")


def build_pruner(method: str, num_layers: int, sparsity: float | None = None, pattern: str | None = None,
                 heads_fraction: float = 0.0, importance: str = "activation", true_sequential: bool = False,
                 allocation: str = "uniform"):
    """(function, config) for a method name; `sparsity` is the fraction removed (default 0.5).
    `true_sequential`: SparseGPT prunes each group of a layer's linears after the groups before it.
    `allocation`: width's MLP channels per layer, "uniform" or "adaptive" (with importance "taylor")."""
    from .depth import DepthPruneConfig, prune_depth
    from .lowrank import LowRankConfig, prune_lowrank
    from .magnitude import MagnitudeConfig, prune_magnitude
    from .modelopt_sparsity import ModeloptSparsityConfig, prune_modelopt
    from .sparsegpt import SparseGPTConfig, prune_sparsegpt
    from .wanda import WandaConfig, prune_wanda
    from .width import WidthPruneConfig, prune_width
    if method not in METHODS:
        raise WorkshopError(f"Unknown pruning method {method!r}.", f"Use one of {', '.join(METHODS)}.")
    if pattern and method not in ("magnitude", "wanda", "sparsegpt"):
        raise WorkshopError(f"--pattern applies to magnitude, wanda and sparsegpt, not {method}.",
                            "Leave --pattern out (modelopt is always 2:4), or pick one of those methods.")
    if true_sequential and method != "sparsegpt":
        raise WorkshopError(f"--true-sequential applies to sparsegpt, not {method}.", "Leave out --true-sequential.")
    if allocation != "uniform" and method != "width":
        raise WorkshopError(f"--allocation applies to width, not {method}.", "Leave out --allocation.")
    if pattern or method.startswith("modelopt:"):
        n, m = parse_pattern(pattern or "2:4")
        if sparsity is not None and abs(sparsity - (m - n) / m) > 1e-9:
            raise WorkshopError(f"--sparsity {sparsity} contradicts the pattern {n}:{m}, which removes {(m - n) / m:g} "
                                "of the weights by construction.", f"Leave --sparsity out with {'--pattern' if pattern else method}, "
                                "or drop --pattern for unstructured sparsity at that level.")
    sparsity = 0.5 if sparsity is None else sparsity
    check_sparsity(sparsity)   # before any config: depth and svd turn it into other numbers
    if method.startswith("modelopt:"):
        return prune_modelopt, ModeloptSparsityConfig(mode=method.split(":", 1)[1])
    if method in ("magnitude", "wanda", "sparsegpt"):
        function, config_type = {"magnitude": (prune_magnitude, MagnitudeConfig), "wanda": (prune_wanda, WandaConfig),
                                 "sparsegpt": (prune_sparsegpt, SparseGPTConfig)}[method]
        options = {"true_sequential": true_sequential} if method == "sparsegpt" else {}
        return function, config_type(sparsity=sparsity, pattern=pattern, **options)
    if method == "width":
        return prune_width, WidthPruneConfig(mlp_fraction=sparsity, heads_fraction=heads_fraction,
                                             importance=importance, allocation=allocation)
    if method == "depth":
        return prune_depth, DepthPruneConfig(layers_removed=int(round(sparsity * num_layers)))
    if sparsity == 0:
        raise WorkshopError("--sparsity 0 with svd keeps every parameter: nothing to factorize.",
                            "Give the fraction of parameters removed, e.g. 0.3.")
    return prune_lowrank, LowRankConfig(param_fraction=1 - sparsity)


def lab03_table() -> list:
    """The rows of lab 03's main comparison, in its order: (name, prune function, config).
    The lab calls each of these itself; tests/test_prune.py checks that both say the same."""
    from .magnitude import MagnitudeConfig, prune_magnitude
    from .modelopt_sparsity import ModeloptSparsityConfig, prune_modelopt
    from .sparsegpt import SparseGPTConfig, prune_sparsegpt
    from .wanda import WandaConfig, prune_wanda
    return [("magnitude 50%", prune_magnitude, MagnitudeConfig(sparsity=0.5)),
            ("Wanda 50%", prune_wanda, WandaConfig(sparsity=0.5)),
            ("SparseGPT 50%", prune_sparsegpt, SparseGPTConfig(sparsity=0.5)),
            ("magnitude 2:4", prune_magnitude, MagnitudeConfig(pattern="2:4")),
            ("Wanda 2:4", prune_wanda, WandaConfig(pattern="2:4")),
            ("SparseGPT 2:4", prune_sparsegpt, SparseGPTConfig(pattern="2:4")),
            ("modelopt sparse_magnitude 2:4", prune_modelopt, ModeloptSparsityConfig(mode="sparse_magnitude")),
            ("modelopt sparsegpt 2:4", prune_modelopt, ModeloptSparsityConfig(mode="sparsegpt"))]


