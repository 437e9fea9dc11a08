"""A packed model written in the compressed-tensors format (vLLM's native checkpoint format).

The checkpoint is a Hugging Face folder: config.json carries a `quantization_config` with
`"quant_method": "compressed-tensors"`, and each quantized linear stores, instead of `weight`:
  INT4 ("pack-quantized"): `weight_packed` int32 [out, in / 8], eight 4-bit codes per word, the first
      in the lowest bits, each code stored as signed + 8; `weight_scale` [out, in / group];
      `weight_zero_point` (asymmetric grids only) as signed codes packed eight per int32 along the
      output dimension; `weight_shape` [2];
  INT8 ("int-quantized"): `weight` int8 [out, in] and `weight_scale` [out, 1]; SmoothQuant's static
      activation scale as `input_scale` (per-token scales are refused: the library's grid differs);
  FP8 ("float-quantized"): `weight` float8_e4m3fn and `weight_scale`, with `input_scale` for static
      activations.
The codes and scales are our packed layers' own (no re-quantization), so whatever loads the folder
computes what our model computes. The check reads it back through the compressed-tensors library.

2:4 sparsity is written as dense weights (its zeros stay zeros), never as a `sparsity_config`: the
library's 2:4 forms (sparse-24-bitmask, marlin-24) have no compressor since compressed-tensors 0.15,
transformers reads no sparsity_config, and vLLM dropped its 2:4 kernels and now refuses a checkpoint
that declares one. `sparsity_summary(model)` says what the model's sparsity is and how it was written.
"""
import copy
from pathlib import Path

import torch

from ..errors import WorkshopError

FORMATS = {"int4": "pack-quantized", "int8": "int-quantized", "fp8": "float-quantized"}
SPARSE_FORMATS = ("sparse-24-bitmask", "marlin-24")   # the library's names for stored 2:4 (legacy)


def pack_int4_words(codes: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Signed 4-bit codes (-8..7) packed eight per int32 along `dim`, the first in the lowest bits."""
    if dim == 0:
        return pack_int4_words(codes.T, 1).T.contiguous()
    rows, cols = codes.shape
    if cols % 8:
        raise WorkshopError(f"{cols} codes per row do not fill int32 words of eight.", "Use a width divisible by 8.")
    nibbles = (codes.to(torch.int64) + 8).reshape(rows, cols // 8, 8)
    words = (nibbles << (4 * torch.arange(8, dtype=torch.int64, device=codes.device))).sum(-1)
    return torch.where(words >= 2 ** 31, words - 2 ** 32, words).to(torch.int32)   # the int32 bit pattern


def compressed_tensors_refusal(fmt: str, activations: str | None = None) -> tuple | None:
    """What this writer cannot put in a compressed-tensors checkpoint, the one list of it: (what is wrong,
    what to do) for a layer stored as QuantLinear stores it (`fmt`, `activations`), None if it can.
    save_compressed_tensors asks it of every packed layer; `workshop export` of the layers its --method
    will make, before any model loads (quant.presets.packed_form)."""
    if fmt not in FORMATS:
        return (f"{fmt.upper()} has no compressed-tensors type (written here: INT4, INT8 or FP8)",
                "Export INT4 (--method rtn|gptq|awq --bits 4), INT8 (--bits 8 --group-size 0 --symmetric, or "
                "--method smoothquant --static-activations) or --method fp8.")
    if activations == "int8_per_token":
        # the library's dynamic per-token INT8 divides max |x| by 127.5, ours by 127: a reader would
        # compute another function (largest logit difference 0.02 on tiny-random)
        return ("SmoothQuant's per-token INT8 activations are not the per-token grid compressed-tensors applies at "
                "run time (scale max|x| / 127.5 there, / 127 here)",
                "Quantize with static activation scales (--static-activations), or write the weights only.")
    return None


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
    activations = {"fp8_static": {"num_bits": 8, "type": "float", "symmetric": True, "strategy": "tensor", "dynamic": False},
                   "int8_static": {"num_bits": 8, "type": "int", "symmetric": True, "strategy": "tensor", "dynamic": False},
                   None: None}[layer.activations]
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
    if layer.activations in ("int8_static", "fp8_static"):
        tensors["input_scale"] = layer.input_scale.float()
    return tensors


def is_2_4(weight: torch.Tensor) -> bool:
    """At least two zeros in every group of 4 consecutive inputs of every row: what 2:4 kernels run."""
    rows, cols = weight.shape
    return cols % 4 == 0 and bool(((weight == 0).reshape(rows, cols // 4, 4).sum(-1) >= 2).all())


def sparsity_summary(model) -> dict:
    """How sparse the linear layers (lm_head aside) are, float or packed, and how they are written:
    {"sparsity": "2:4" | "partly 2:4" | "none", "layers_2_4": "k of n", "zero_fraction", "written", "note"}."""
    from ..quant.qlinear import QuantLinear
    weights = [m.dequantized_weight(torch.float32) if isinstance(m, QuantLinear) else m.weight.detach()
               for name, m in model.named_modules()
               if isinstance(m, (torch.nn.Linear, QuantLinear)) and name.rsplit(".", 1)[-1] != "lm_head"]
    two_four = sum(is_2_4(w) for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights) / max(1, sum(w.numel() for w in weights))
    sparsity = "none" if not two_four else "2:4" if two_four == len(weights) else "partly 2:4"
    note = (f"{two_four} of {len(weights)} linear layers are 2:4 sparse, {zeros:.1%} of the weights zero; written as "
            "dense weights" + (" (compressed-tensors no longer stores 2:4 sparsity)" if two_four else ""))
    return {"sparsity": sparsity, "layers_2_4": f"{two_four} of {len(weights)}", "zero_fraction": zeros,
            "written": "dense", "note": note}


def _refuse_sparse_format(sparse_format: str, model) -> None:
    """A checkpoint in the library's 2:4 formats cannot be read back by it: say so instead of writing one."""
    from importlib.metadata import version
    if sparse_format not in SPARSE_FORMATS:
        raise WorkshopError(f"Unknown sparse format {sparse_format!r}.",
                            f"Use one of {', '.join(SPARSE_FORMATS)}, or leave it out.")
    # checked against 0.20.1: the format name and its config class remain, its compressor was removed in
    # 0.15, so a loaded checkpoint leaves every sparse layer at fresh random weights (only a load warning)
    raise WorkshopError(
        f"compressed-tensors {version('compressed-tensors')} cannot read {sparse_format}: it keeps the name but "
        "has no compressor for it (2:4 storage was removed in 0.15), transformers reads no sparsity_config, and "
        "vLLM removed its 2:4 kernels and refuses a checkpoint that declares one (this model: "
        f"{sparsity_summary(model)['layers_2_4']} linear layers 2:4 sparse).",
        "Leave the sparse format out: the weights are then written dense, their zeros kept, and every reader "
        "loads them.")


def save_compressed_tensors(model, tokenizer, out, sparse_format: str | None = None) -> Path:
    """Write the packed `model` (INT4, INT8 or FP8 layers, one format) and its tokenizer to the new
    folder `out` in the compressed-tensors format; returns the folder. Sparse weights are written
    dense (see the module docstring; `sparsity_summary` says so); asking for a `sparse_format` of
    SPARSE_FORMATS raises a WorkshopError that says why."""
    import json

    from safetensors.torch import save_file

    from ..paths import written_aside
    from ..quant.qlinear import QuantLinear
    if sparse_format is not None:
        _refuse_sparse_format(sparse_format, model)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, QuantLinear)}
    if not layers:
        sparse = sparsity_summary(model)["sparsity"] != "none"
        raise WorkshopError("The model has no packed layers to write in the compressed-tensors format" +
                            (", and compressed-tensors stores 2:4 sparsity in no form of its own." if sparse else "."),
                            "Quantize and pack it first (workshop quantize --out, or pack_quantized)" +
                            ("; or save it as a plain Hugging Face folder, which vLLM loads dense." if sparse else "."))
    for name, layer in layers.items():
        refusal = compressed_tensors_refusal(layer.fmt, layer.activations)
        if refusal:
            raise WorkshopError(f"{name}: {refusal[0]}.", refusal[1])
    kinds = {m.fmt for m in layers.values()}
    if len(kinds) > 1:
        raise WorkshopError(f"The packed layers are {', '.join(sorted(kinds))}; compressed-tensors is written here for "
                            "one of INT4, INT8 or FP8 at a time.", "Quantize every layer with one method.")
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
            state[name] = tensor.cpu()
    for name, layer in layers.items():
        state |= {f"{name}.{key}": value.contiguous().cpu() for key, value in _tensors(layer, dtype).items()}
        if layer.bias is not None:
            state[f"{name}.bias"] = layer.bias.cpu()
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
    with written_aside(target, folder=True) as tmp:
        save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(tmp)
    return target


def check_round_trip(model, path, input_ids: torch.Tensor) -> dict:
    """Read `path` back through the compressed-tensors library and compare it with the packed `model`:
    the largest weight difference over the quantized layers, and the largest logit difference. The
    library loads on the CPU in float32, and the model is compared there too: on a GPU its FP8 layers
    take the tensor-core path (another function), and any GPU sums in another order than a CPU, which
    moves activations that lie at a rounding tie to the neighbouring code."""
    from ..quant.qlinear import QuantLinear
    loaded = load_with_compressed_tensors(path)
    modules = dict(loaded.named_modules())
    weight_difference = max(float((layer.dequantized_weight(torch.float32).cpu() - modules[name].weight.float()).abs().max())
                            for name, layer in model.named_modules() if isinstance(layer, QuantLinear))
    if next(model.parameters()).device.type != "cpu":
        model = copy.deepcopy(model).cpu()
    with torch.no_grad():
        ours = model(input_ids.cpu()).logits.float()
        logit_difference = float((loaded(input_ids.cpu()).logits.float() - ours).abs().max())
    return {"max_abs_weight_difference": weight_difference, "max_abs_logit_difference": logit_difference}


def load_with_compressed_tensors(path):
    """The folder loaded by transformers through the compressed-tensors library, decompressed to
    dense float weights (the library's own unpacking: the round-trip check)."""
    import contextlib
    import io
    import warnings

    from transformers import AutoModelForCausalLM
    from transformers.utils.quantization_config import CompressedTensorsConfig
    # "the model's own quantization_config will be used" is the point; the library's four progress bars per
    # load (apply, compress, dispatch, decompress) would fill a notebook cell
    with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore", UserWarning)
        return AutoModelForCausalLM.from_pretrained(path, quantization_config=CompressedTensorsConfig(run_compressed=False),
                                                    dtype=torch.float32).eval()
