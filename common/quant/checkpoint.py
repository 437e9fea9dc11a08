"""Checkpoints of packed models: which layers are QuantLinear (saved in config.json), and loading them back.

`load_state` is the one safetensors loader of the course (packed checkpoints here, distillation's
resumable checkpoints too): every stored tensor, strictly, except an output head tied to the
embedding, which save_pretrained does not store.
"""
from pathlib import Path

import torch
from torch import nn

from ..errors import WorkshopError
from .qlinear import QuantLinear


def packed_layout(model: nn.Module) -> dict:
    """{name: the arguments that rebuild its empty QuantLinear}: saved in the config as `workshop_packed`."""
    return {name: {"in_features": m.in_features, "out_features": m.out_features, "fmt": m.fmt,
                   "group_size": m.group_size, "bias": m.bias is not None, "activations": m.activations}
            for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def load_state(model: nn.Module, directory, fix: str) -> None:
    """Every tensor of the *.safetensors files in `directory` loaded into `model`; a WorkshopError that
    ends with `fix` where they do not match (a tensor missing, other than a tied head, or one too many)."""
    from safetensors.torch import load_file
    state = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        state |= load_file(file)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    if unexpected or set(missing) - tied:
        raise WorkshopError(f"The checkpoint in {directory} does not match this model "
                            f"(missing {sorted(set(missing) - tied)[:3]}, unexpected {sorted(unexpected)[:3]}).", fix)
    if tied:
        model.tie_weights()


def load_packed(path, dtype: torch.dtype):
    """A model saved with packed QuantLinear layers: the architecture from config.json, each packed
    linear rebuilt empty from `workshop_packed`, then every stored tensor loaded (strictly)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(path)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)  # (its random weights are overwritten)
    for name, args in config.workshop_packed.items():
        model.set_submodule(name, QuantLinear(**args, dtype=dtype))
    load_state(model, path, "Save it again with `workshop quantize ... --out DIR`.")
    return model
