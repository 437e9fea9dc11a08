"""Calibration statistics for pruning: decoder layers walked one at a time, and per-linear Gram matrices.

One-shot pruning (Wanda, SparseGPT, activation-aware SVD) needs, for each linear layer, what its
inputs look like on calibration text: the Gram matrix H = X^T X (SparseGPT's Hessian up to a factor
of 2; its diagonal gives Wanda's input norms). Layers are walked in order and each layer's inputs are
the outputs of the already-pruned layers before it, so later layers see, and compensate, earlier errors.
(The quantization issue writes common/quant/calibration.py with the same job; merge when both exist.)
"""
import torch
from torch import nn
from tqdm.auto import tqdm


def decoder_layers(model) -> nn.ModuleList:
    return model.model.layers


def chunks(batch: torch.Tensor, size: int):
    return [batch[i: i + size] for i in range(0, batch.size(0), size)]


class StopForward(Exception):
    """Raised by a hook once the first layer's inputs are captured: the rest need not run."""


@torch.no_grad()
def first_layer_inputs(model, calib_batch: torch.Tensor):
    """Hidden states entering layer 0 [n, seqlen, hidden] and the keyword arguments every layer gets
    (rotary position embeddings, attention mask, ...), from one forward pass stopped at layer 0."""
    captured = {}

    def hook(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs.pop("hidden_states")
        captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise StopForward

    device = next(model.parameters()).device
    handle = decoder_layers(model)[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        model(calib_batch.to(device), use_cache=False)
    except StopForward:
        pass
    finally:
        handle.remove()
    kwargs = captured["kwargs"]
    kwargs["past_key_values"] = None
    kwargs["use_cache"] = False
    return captured["hidden"], kwargs


def layer_output(output):
    return output[0] if isinstance(output, tuple) else output


@torch.no_grad()
def run_layer(layer, hidden: torch.Tensor, kwargs: dict, chunk: int = 8) -> torch.Tensor:
    """The layer applied to calibration hidden states, a few sequences at a time."""
    return torch.cat([layer_output(layer(h, **kwargs)) for h in chunks(hidden, chunk)])


class GramCollector:
    """Accumulates H = sum over tokens of x x^T (float32) at the input of each linear in `modules`."""

    def __init__(self, modules: dict):
        self.modules = modules
        self.gram = {name: None for name in modules}
        self.tokens = {name: 0 for name in modules}
        self.handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in modules.items()]

    def _hook(self, name):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].size(-1)).float()
            g = x.T @ x
            self.gram[name] = g if self.gram[name] is None else self.gram[name] + g
            self.tokens[name] += x.size(0)
        return hook

    def mean_gram(self, name: str) -> torch.Tensor:
        return self.gram[name] / max(self.tokens[name], 1)

    def remove(self):
        for h in self.handles:
            h.remove()


def linear_modules(layer) -> dict:
    return {name: m for name, m in layer.named_modules() if isinstance(m, nn.Linear)}


@torch.no_grad()
def for_each_layer_with_grams(model, calib_batch: torch.Tensor, process, desc: str, progress: bool = True):
    """Walk the decoder layers in order; for each, collect its linears' Gram matrices on the current
    calibration hidden states, call `process(index, layer, collector)` (which edits the layer), then
    push the hidden states through the edited layer to feed the next one."""
    hidden, kwargs = first_layer_inputs(model, calib_batch)
    for index, layer in enumerate(tqdm(decoder_layers(model), desc=desc, disable=not progress, leave=False)):
        collector = GramCollector(linear_modules(layer))
        try:
            run_layer(layer, hidden, kwargs)
        finally:
            collector.remove()
        process(index, layer, collector)
        hidden = run_layer(layer, hidden, kwargs)
    return model


@torch.no_grad()
def input_channel_rms(model, calib_batch: torch.Tensor, module_names: list, chunk: int = 4,
                      progress: bool = False) -> dict:
    """Root-mean-square over calibration tokens of every input channel of the named modules, from
    full forward passes of the (unedited) model: {name: tensor [in_features]}."""
    modules = dict(model.named_modules())
    sums = {name: None for name in module_names}
    count = {"tokens": 0}

    def hook_for(name):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].size(-1)).float()
            s = (x * x).sum(0)
            sums[name] = s if sums[name] is None else sums[name] + s
        return hook

    handles = [modules[name].register_forward_pre_hook(hook_for(name)) for name in module_names]
    device = next(model.parameters()).device
    try:
        for ids in tqdm(chunks(calib_batch, chunk), desc="activations", disable=not progress, leave=False):
            model(ids.to(device), use_cache=False)
            count["tokens"] += ids.numel()
    finally:
        for h in handles:
            h.remove()
    return {name: (s / count["tokens"]).sqrt() for name, s in sums.items()}
