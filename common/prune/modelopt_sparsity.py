"""NVIDIA Model Optimizer's 2:4 sparsity (`mts.sparsify`), run on the same model and calibration data.

modelopt 0.47 offers two modes: "sparse_magnitude" (2:4 by |w|, no data) and "sparsegpt" (2:4 with
the OBS weight update; it collects every layer's Hessian in ONE forward pass of the dense model,
where our sparsegpt.py walks the layers so each sees the already-pruned ones before it). Both run on
the CPU (pass device="cpu" for sparsegpt's Hessians; its default is "cuda").

Traps, each shown by `trap_*` below on any small model:
  - after `mts.sparsify` the linears are modelopt SparseLinear modules: the state_dict keeps the DENSE
    weight plus a `_weight_mask` buffer, and the mask is applied only when `.weight` is read. Anything
    that writes the state_dict (save_pretrained, a quantize-then-export chain) writes dense weights
    unless `mts.export(model)` runs first and bakes the mask in.
  - the conversion unties a tied output head (a second copy of the embedding); we tie it again.
  - quantizing first and sparsifying afterwards leaves the QuantLinear modules untouched: no mask,
    no error, the weights stay dense. Sparsify (then fine-tune), then quantize.
"""
import contextlib
import io
import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..calibration import require_calibration
from ..errors import WorkshopError

MODES = ("sparse_magnitude", "sparsegpt")


@dataclass(frozen=True)
class ModeloptSparsityConfig:
    mode: str = "sparsegpt"  # "sparse_magnitude" or "sparsegpt" (always 2:4)
    export: bool = True      # mts.export: plain nn.Linear with the zeros in the weights

    def __post_init__(self):
        if self.mode not in MODES:
            raise WorkshopError(f"Unknown modelopt sparsity mode {self.mode!r}.",
                                f"Use modelopt:{' or modelopt:'.join(MODES)}.")

    @property
    def needs_calibration(self) -> bool:
        return self.mode == "sparsegpt"


def _import_mts():
    try:
        import modelopt.torch.sparsity as mts
    except ImportError as e:
        raise WorkshopError(f"nvidia-modelopt is not importable ({e}).", "pip install nvidia-modelopt==0.47.0")
    return mts


def prune_modelopt(model, config: ModeloptSparsityConfig, calib_batch=None, progress: bool = True):
    """2:4-sparsify every linear modelopt selects (decoder projections) with modelopt; in place."""
    require_calibration(config, calib_batch, instead="use mode='sparse_magnitude'")
    mts = _import_mts()
    device = next(model.parameters()).device
    search = {"device": str(device)} if config.mode == "sparsegpt" else {}
    if calib_batch is not None:
        search |= {"data_loader": calib_batch.to(device).split(1), "collect_func": lambda batch: batch}
    quiet = contextlib.redirect_stdout(io.StringIO()) if not progress else contextlib.nullcontext()
    with quiet, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns about every layer it skips and about versions
        mts.sparsify(model, config.mode, config=search)
        if config.export:
            mts.export(model)
    if getattr(model.config, "tie_word_embeddings", False) and model.get_output_embeddings() is not None:
        # modelopt's conversion leaves the output head a separate copy of the (unchanged) embedding:
        # tie them again, or the model stores (and counts) the embedding twice
        if torch.equal(model.get_output_embeddings().weight, model.get_input_embeddings().weight):
            model.get_output_embeddings().weight = model.get_input_embeddings().weight
    return model


def stored_zero_fraction(model, name: str) -> float:
    """Fraction of zeros in the state_dict's copy of weight `name` (what a checkpoint would hold)."""
    weight = model.state_dict()[name]
    return float((weight == 0).float().mean())


def effective_zero_fraction(module: nn.Module) -> float:
    """Fraction of zeros in the weight the forward pass uses (modelopt applies its mask on access)."""
    return float((module.weight == 0).float().mean())


def trap_sparsify_without_export(model, calib_batch) -> dict:
    """sparse_magnitude without mts.export: the forward pass is sparse, the state_dict is not."""
    prune_modelopt(model, ModeloptSparsityConfig("sparse_magnitude", export=False), calib_batch, progress=False)
    module = model.model.layers[0].mlp.down_proj
    return {"module": type(module).__name__,
            "forward_zeros": effective_zero_fraction(module),
            "state_dict_zeros": stored_zero_fraction(model, "model.layers.0.mlp.down_proj.weight"),
            "state_dict_extra_keys": [k for k in model.state_dict() if k.endswith("_weight_mask")][:2]}


def trap_quantize_then_sparsify(model, calib_batch) -> dict:
    """INT8 fake quantization first, 2:4 magnitude second: modelopt leaves the weights dense."""
    import modelopt.torch.quantization as mtq
    device = next(model.parameters()).device

    def forward_loop(m):
        for ids in calib_batch.to(device).split(1):
            m(ids)

    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop=forward_loop)
        prune_modelopt(model, ModeloptSparsityConfig("sparse_magnitude", export=False), calib_batch, progress=False)
    module = model.model.layers[0].mlp.down_proj
    return {"module": type(module).__name__, "forward_zeros": effective_zero_fraction(module)}
