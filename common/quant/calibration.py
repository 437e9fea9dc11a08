"""What every post-training quantizer shares: walking the decoder on calibration data, the inputs
each linear layer sees, their statistics (GPTQ's Hessian, AWQ's and SmoothQuant's channel
magnitudes), and the bytes a quantized model really stores.

The walk is sequential, as in GPTQ: the calibration batch goes through the embedding once, then
through one decoder layer at a time. A layer is quantized from the inputs it receives from the
layers before it, which are already quantized, so each layer corrects for the errors upstream;
its outputs are recomputed after quantization and become the next layer's inputs.
"""
import torch
from torch import nn
from tqdm.auto import tqdm


class _StopForward(Exception):
    pass


def decoder_layers(model) -> nn.ModuleList:
    return model.model.layers


def linear_layers(module: nn.Module) -> dict:
    """{name: nn.Linear} inside `module` (a decoder layer: q/k/v/o and gate/up/down projections)."""
    return {name: m for name, m in module.named_modules() if isinstance(m, nn.Linear)}


def _first_layer_inputs(model, calib_batch: torch.Tensor):
    """Hidden states entering decoder layer 0, and the keyword arguments the model passes every
    layer (rotary position embeddings, attention mask); the rest of the model is not run."""
    captured = {}

    def grab(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs.pop("hidden_states")
        captured["kwargs"] = kwargs
        raise _StopForward

    handle = decoder_layers(model)[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(calib_batch.to(next(model.parameters()).device), use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return captured["hidden"], captured["kwargs"]


def _run_layer(layer, hidden, kwargs):
    out = layer(hidden, **kwargs)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def record_linear_inputs(layer: nn.Module, hidden: torch.Tensor, kwargs: dict, names=None) -> dict:
    """{name: X} with X [tokens, in_features] (float32) the input of each linear of `layer`."""
    inputs, handles = {}, []
    for name, linear in linear_layers(layer).items():
        if names is None or name in names:
            def hook(module, args, name=name):
                inputs[name] = args[0].reshape(-1, args[0].shape[-1]).float()
            handles.append(linear.register_forward_pre_hook(hook))
    try:
        _run_layer(layer, hidden, kwargs)
    finally:
        for h in handles:
            h.remove()
    return inputs


@torch.no_grad()
def quantize_layer_by_layer(model, calib_batch: torch.Tensor, quantize_layer, progress: bool = True,
                            desc: str = "quantizing"):
    """Call `quantize_layer(index, layer, hidden, kwargs)` on each decoder layer in order.

    `hidden` is what the (already quantized) layers before it output on the calibration batch;
    `quantize_layer` changes `layer` in place. Returns the model.
    """
    hidden, kwargs = _first_layer_inputs(model, calib_batch)
    for index, layer in enumerate(tqdm(decoder_layers(model), desc=desc, disable=not progress, leave=False)):
        quantize_layer(index, layer, hidden, kwargs)
        hidden = _run_layer(layer, hidden, kwargs)
    return model


# ---------------------------------------------------------------------------------------------
# Statistics of a linear layer's inputs X [tokens, in_features]
# ---------------------------------------------------------------------------------------------
def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2 X^T X / n: the Hessian of the layer's squared output error ||W X - Q X||^2 / n in W's rows."""
    x = x.float()
    return 2 * x.T @ x / x.shape[0]


def channel_abs_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean |x| of each input channel: AWQ's measure of how much a channel matters."""
    return x.abs().float().mean(dim=0)


def channel_abs_max(x: torch.Tensor) -> torch.Tensor:
    """Max |x| of each input channel: where activation outliers live (SmoothQuant)."""
    return x.abs().float().amax(dim=0)


# ---------------------------------------------------------------------------------------------
# Stored bytes
# ---------------------------------------------------------------------------------------------
SCALE_BYTES = 2  # scales and zero points stored as fp16, as the INT4 kernels and checkpoints do


def mark_quantized(linear: nn.Linear, bits: float, values_per_scale: int, zero_points: bool) -> None:
    """Record the storage of `linear`'s (fake-quantized) weight: `bits` per code, one fp16 scale per
    `values_per_scale` weights, plus an fp16 zero point per scale for asymmetric grids."""
    n = linear.weight.numel()
    scales = -(-n // values_per_scale)
    linear.packed_weight_bytes = int(-(-n * bits // 8) + scales * SCALE_BYTES * (2 if zero_points else 1))


def true_bytes(model) -> int:
    """Bytes the model would take with its quantized weights packed: each tensor once (a tied
    embedding too), a weight marked by `mark_quantized` at its packed size, the rest as stored."""
    from ..eval import _unique_tensors
    packed = {f"{name}.weight": m.packed_weight_bytes for name, m in model.named_modules()
              if hasattr(m, "packed_weight_bytes")}
    return sum(packed.get(name, t.numel() * t.element_size()) for name, t in _unique_tensors(model)
               if "_quantizer." not in name)  # modelopt's quantizer state: the packed scales count it
