"""A packed model written in the compressed-tensors format (vLLM's native checkpoint format).

The checkpoint is a Hugging Face folder: config.json carries a `quantization_config` with
`"quant_method": "compressed-tensors"`, and each quantized linear stores, instead of `weight`:
  INT4 ("pack-quantized"): `weight_packed` int32 [out, in / 8], eight 4-bit codes per word, the first
      in the lowest bits, each code stored as signed + 8; `weight_scale` [out, in / group];
      `weight_zero_point` (asymmetric grids only) as signed codes packed eight per int32 along the
      output dimension; `weight_shape` [2];
  INT8 ("int-quantized"): `weight` int8 [out, in] and `weight_scale` [out, 1];
  FP8 ("float-quantized"): `weight` float8_e4m3fn and `weight_scale`, with `input_scale` for static
      activations.
The codes and scales are our packed layers' own (no re-quantization), so whatever loads the folder
computes what our model computes. The check reads it back through the compressed-tensors library.
"""
from pathlib import Path

import torch

from ..errors import WorkshopError

FORMATS = {"int4": "pack-quantized", "int8": "int-quantized", "fp8": "float-quantized"}


def pack_int4_words(codes: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Signed 4-bit codes (-8..7) packed eight per int32 along `dim`, the first in the lowest bits."""
    if dim == 0:
        return pack_int4_words(codes.T, 1).T.contiguous()
    rows, cols = codes.shape
    if cols % 8:
        raise WorkshopError(f"{cols} codes per row do not fill int32 words of eight.", "Use a width divisible by 8.")
    nibbles = (codes.to(torch.int64) + 8).reshape(rows, cols // 8, 8)
    words = (nibbles << (4 * torch.arange(8, dtype=torch.int64))).sum(-1)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)   # the int32 bit pattern


def _scheme(layer) -> dict:
    """The `weights` (and `input_activations`) entries of compressed-tensors' config for one layer."""
    if layer.fmt == "int4":
        weights = {"num_bits": 4, "type": "int", "symmetric": layer.int4_symmetric(), "strategy": "group",
                   "group_size": layer.group_size}
    elif layer.fmt == "int8":
        weights = {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "channel"}
    else:
        per_tensor = layer.scales.numel() == 1
        weights = {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "tensor" if per_tensor else "channel"}
    activations = ({"num_bits": 8, "type": "float", "symmetric": True, "strategy": "tensor", "dynamic": False}
                   if layer.activations == "fp8_static" else None)
    return {"weights": weights | {"dynamic": False}, "input_activations": activations}


def _tensors(layer, dtype: torch.dtype) -> dict:
    """The tensors that replace one layer's `weight` in the checkpoint."""
    if layer.fmt == "int4":
        tensors = {"weight_packed": pack_int4_words(layer.int4_signed_codes()), "weight_scale": layer.scales.to(dtype),
                   "weight_shape": torch.tensor([layer.out_features, layer.in_features], dtype=torch.int32)}
        if not layer.int4_symmetric():
            tensors["weight_zero_point"] = pack_int4_words(layer.zeros.to(torch.int16) - 8, dim=0)
        return tensors
    tensors = {"weight": layer.qweight, "weight_scale": layer.scales.to(dtype if layer.fmt == "int8" else torch.float32)}
    if layer.activations == "fp8_static":
        tensors["input_scale"] = layer.input_scale.float()
    return tensors


def save_compressed_tensors(model, tokenizer, out) -> Path:
    """Write the packed `model` (INT4, INT8 or FP8 layers, one format) and its tokenizer to the new
    folder `out` in the compressed-tensors format; returns the folder."""
    import json

    from safetensors.torch import save_file

    from ..models import written_aside
    from ..quant.qlinear import QuantLinear
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not layers:
        raise WorkshopError("The model has no packed layers to write in the compressed-tensors format.",
                            "Quantize and pack it first (workshop quantize --out, or pack_quantized).")
    kinds = {m.fmt for m in layers.values()}
    if not kinds <= set(FORMATS) or len(kinds) > 1:
        raise WorkshopError(f"The packed layers are {', '.join(sorted(kinds))}; compressed-tensors is written here for "
                            "one of INT4, INT8 or FP8 at a time.", "Quantize every layer with one method.")
    if any(m.activations == "int8_per_token" for m in layers.values()):
        raise WorkshopError("SmoothQuant's INT8 activations are quantized per token at run time, which this writer "
                            "does not describe.", "Write its weights only, or FP8 with static scales.")
    schemes = {json.dumps(_scheme(m), sort_keys=True) for m in layers.values()}
    if len(schemes) > 1:
        raise WorkshopError("The packed layers use different grids (group sizes or symmetry).",
                            "Quantize every layer with one configuration.")
    target = Path(out).expanduser().resolve()
    if target.exists():
        raise WorkshopError(f"--out {target} exists.", "Give a new folder, or remove it first.")
    dtype = next(model.parameters()).dtype
    state = {}
    for name, tensor in model.state_dict().items():
        owner = name.rsplit(".", 1)[0]
        if owner not in layers:
            state[name] = tensor
    for name, layer in layers.items():
        state |= {f"{name}.{key}": value.contiguous() for key, value in _tensors(layer, dtype).items()}
        if layer.bias is not None:
            state[f"{name}.bias"] = layer.bias
    if getattr(model.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)   # the tied head is the embedding, stored once
    config = model.config.to_dict()
    config.pop("workshop_packed", None)
    scheme, layout = json.loads(schemes.pop()), FORMATS[kinds.pop()]
    # the group's own "format" decides how the library reads it (without it, integer weights are read as packed)
    config["quantization_config"] = {
        "quant_method": "compressed-tensors", "format": layout, "quantization_status": "compressed",
        "config_groups": {"group_0": {"targets": ["Linear"], **scheme, "output_activations": None, "format": layout}},
        "ignore": ["lm_head"], "kv_cache_scheme": None}
    with written_aside(target) as tmp:
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(tmp)
    return target


def check_round_trip(model, path, input_ids: torch.Tensor) -> dict:
    """Read `path` back through the compressed-tensors library and compare it with the packed `model`:
    the largest weight difference over the quantized layers, and the largest logit difference."""
    from ..quant.qlinear import QuantLinear
    loaded = load_with_compressed_tensors(path)
    modules = dict(loaded.named_modules())
    weight_difference = max(float((layer.dequantized_weight(torch.float32) - modules[name].weight.float()).abs().max())
                            for name, layer in model.named_modules() if isinstance(layer, QuantLinear))
    with torch.no_grad():
        logit_difference = float((loaded(input_ids).logits.float() - model(input_ids).logits.float()).abs().max())
    return {"max_abs_weight_difference": weight_difference, "max_abs_logit_difference": logit_difference}


def load_with_compressed_tensors(path):
    """The folder loaded by transformers through the compressed-tensors library, decompressed to
    dense float weights (the library's own unpacking: the round-trip check)."""
    import warnings

    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig
    with warnings.catch_warnings():   # "the model's own quantization_config will be used": that is the point
        warnings.simplefilter("ignore", UserWarning)
        return AutoModelForCausalLM.from_pretrained(path, quantization_config=CompressedTensorsConfig(run_compressed=False),
                                                    dtype=torch.float32).eval()
