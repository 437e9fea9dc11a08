"""Calibration passes shared by post-training quantization and one-shot pruning.

GPTQ, AWQ, SmoothQuant, FP8, Wanda, SparseGPT and activation-aware SVD all need to know what each
linear layer's inputs look like on calibration text. The walk is sequential, as in GPTQ: the
calibration batch goes through the embedding once, then through one decoder layer at a time. A
layer is edited (quantized, pruned) from the inputs it receives from the layers before it, which
are already edited, so each layer compensates the errors upstream; its outputs are recomputed after
the edit and become the next layer's inputs.

Per linear, a method reads either the inputs X [tokens, in_features] themselves (AWQ's and
SmoothQuant's searches) or only their Gram matrix G = X^T X / n (Wanda's input norms on its diagonal),
which stays small however many tokens are used. GPTQ and SparseGPT read the Hessian of the layer's
squared output error, H = 2 X^T X / n = 2 G (the convention of both papers' code): one accumulator,
`linear_input_grams`, serves all of them. The factor is immaterial to both, since they damp H by a
fraction of its own mean diagonal: any positive multiple of H gives the same weights.

Within a decoder layer, GPTQ and SparseGPT can also go group by group of linears ("true sequential"
in their reference code, `hessians_in_layer_order`): the linears that read the attention's output or
the MLP's product are then calibrated on the inputs that the already edited linears before them
produce.
"""
import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import WorkshopError

CHUNK = 8  # calibration sequences per forward: bounds the attention's memory on long batches


# The linears of a Llama decoder layer grouped by the input they read, in the order the layer runs them:
# the attention's normalized input, the attention's output, the MLP's normalized input, the MLP's product.
SHARED_INPUTS = (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
                 ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",))


def decoder_layers(model) -> nn.ModuleList:
    return model.model.layers


def linear_layers(module: nn.Module) -> dict:
    """{name: nn.Linear} inside `module` (a decoder layer: q/k/v/o and gate/up/down projections)."""
    return {name: m for name, m in module.named_modules() if isinstance(m, nn.Linear)}


def require_calibration(config, calib_batch, instead: str) -> None:
    """Refuse at once to run a technique whose config needs calibration text (`config.needs_calibration`)
    without a calibration batch, naming `instead`, a setting of it that needs none. (Every layer walk
    refuses a missing batch too, in first_layer_inputs: this is for the techniques that do not walk.)"""
    if config.needs_calibration and calib_batch is None:
        raise WorkshopError(f"{config} calibrates on text, and no calibration batch was given.",
                            f"Pass calib_batch (common.data.calibration_batch), or {instead}.")


class _StopForward(Exception):
    """Raised by a hook once the first layer's inputs are captured: the rest need not run."""


@torch.no_grad()
def first_layer_inputs(model, calib_batch: torch.Tensor):
    """Hidden states entering decoder layer 0 [n, seqlen, hidden], and the keyword arguments the model
    passes every layer (rotary position embeddings, attention mask), from a forward stopped there."""
    if calib_batch is None:   # where every layer-by-layer calibration starts: one message for all of them
        raise WorkshopError("This technique calibrates layer by layer on text, and no calibration batch was given.",
                            "Pass calib_batch (common.data.calibration_batch); a config's needs_calibration says "
                            "whether it needs one (RTN, NF4 and magnitude pruning do not).")
    captured = {}

    def grab(module, args, kwargs):
        captured["hidden"] = args[0] if args else kwargs.pop("hidden_states")
        captured["kwargs"] = {k: v for k, v in kwargs.items() if k != "hidden_states"}
        raise _StopForward

    handle = decoder_layers(model)[0].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(calib_batch.to(next(model.parameters()).device), use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    kwargs = captured["kwargs"] | {"past_key_values": None, "use_cache": False}
    return captured["hidden"], kwargs


@torch.no_grad()
def run_layer(layer: nn.Module, hidden: torch.Tensor, kwargs: dict) -> torch.Tensor:
    """The layer applied to calibration hidden states, CHUNK sequences at a time."""
    outputs = [layer(h, **kwargs) for h in hidden.split(CHUNK)]
    return torch.cat([out[0] if isinstance(out, tuple) else out for out in outputs])


@torch.no_grad()
def walk_layers(model, calib_batch: torch.Tensor, edit_layer, progress: bool = True, desc: str = "calibrating"):
    """Call `edit_layer(index, layer, hidden, kwargs)` on each decoder layer in order, where `hidden`
    is what the (already edited) layers before it output on the calibration batch. Returns the model."""
    hidden, kwargs = first_layer_inputs(model, calib_batch)
    for index, layer in enumerate(tqdm(decoder_layers(model), desc=desc, disable=not progress, leave=False)):
        edit_layer(index, layer, hidden, kwargs)
        hidden = run_layer(layer, hidden, kwargs)
    return model


@torch.no_grad()
def _run_with_input_hooks(layer: nn.Module, hidden: torch.Tensor, kwargs: dict, on_input, names=None) -> None:
    """Run `layer` on the calibration batch, calling on_input(name, X) with each chunk's input X
    [tokens, in_features] (float32) of each linear (or of those in `names`)."""
    handles = [linear.register_forward_pre_hook(
                   lambda module, args, name=name: on_input(name, args[0].reshape(-1, args[0].shape[-1]).float()))
               for name, linear in linear_layers(layer).items() if names is None or name in names]
    try:
        run_layer(layer, hidden, kwargs)
    finally:
        for h in handles:
            h.remove()


def record_linear_inputs(layer: nn.Module, hidden: torch.Tensor, kwargs: dict, names=None) -> dict:
    """{name: X} with X [tokens, in_features] (float32) the input of each linear of `layer`."""
    inputs = {}
    _run_with_input_hooks(layer, hidden, kwargs, lambda name, x: inputs.setdefault(name, []).append(x), names)
    return {name: torch.cat(xs) for name, xs in inputs.items()}


def linear_input_grams(layer: nn.Module, hidden: torch.Tensor, kwargs: dict, names=None) -> dict:
    """{name: X^T X / n} (float32 [in, in]) for each linear of `layer` (or those in `names`), accumulated
    chunk by chunk."""
    sums, tokens = {}, {}

    def accumulate(name, x):
        sums[name] = x.T @ x + sums.get(name, 0)
        tokens[name] = tokens.get(name, 0) + x.shape[0]

    _run_with_input_hooks(layer, hidden, kwargs, accumulate, names)
    return {name: s / tokens[name] for name, s in sums.items()}


def hessian(x: torch.Tensor) -> torch.Tensor:
    """H = 2 X^T X / n for inputs X [n, in]: the Hessian of a linear's mean squared output error
    ||X (W - Q)^T||^2 / n in each row of W (GPTQ's and SparseGPT's H)."""
    x = x.float()
    return 2 * x.T @ x / x.shape[0]


def linear_input_hessians(layer: nn.Module, hidden: torch.Tensor, kwargs: dict, names=None) -> dict:
    """{name: H = 2 X^T X / n} for each linear of `layer` (or those in `names`), as `hessian` on all the
    calibration inputs at once."""
    return {name: 2 * gram for name, gram in linear_input_grams(layer, hidden, kwargs, names).items()}


def check_true_sequential(config) -> None:
    """For the configs of the methods that take `true_sequential` (GPTQ, SparseGPT): it is a bool."""
    if not isinstance(config.true_sequential, bool):
        raise WorkshopError(f"{type(config).__name__}(true_sequential={config.true_sequential!r}) is not True or "
                            "False.",
                            "Give True to calibrate each group of a layer's linears after the groups before it, "
                            "False to calibrate them all on the layer's first pass.")


def hessians_in_layer_order(layer: nn.Module, hidden: torch.Tensor, kwargs: dict, true_sequential: bool):
    """Yield (names, {name: H}) for each group of SHARED_INPUTS, in the order the layer runs them; the
    caller edits (quantizes, prunes) a group's linears before it asks for the next group.

    true_sequential=False: every H comes from one forward of the layer as it was. True: each group's H
    comes from a forward of the layer as it is now, so o_proj sees the outputs of the edited q/k/v and
    down_proj those of the edited gate/up (the reference implementations' --true-sequential)."""
    linears = set(linear_layers(layer))
    if linears != {name for names in SHARED_INPUTS for name in names}:
        raise WorkshopError(f"This decoder layer's linears ({', '.join(sorted(linears))}) are not a Llama "
                            "layer's q/k/v/o and gate/up/down projections, which calibration groups by input.",
                            "Use a Llama-architecture model (SmolLM2, Llama, ...).")
    every = None if true_sequential else linear_input_hessians(layer, hidden, kwargs)
    for names in SHARED_INPUTS:
        yield names, linear_input_hessians(layer, hidden, kwargs, names) if true_sequential else \
            {name: every[name] for name in names}


@torch.no_grad()
def input_channel_rms(model, calib_batch: torch.Tensor, module_names: list, progress: bool = False) -> dict:
    """Root-mean-square over calibration tokens of every input channel of the named modules, from
    full forward passes of the (unedited) model: {name: tensor [in_features]}."""
    modules = dict(model.named_modules())
    sums, count = {}, {"tokens": 0}

    def hook_for(name):
        def hook(module, args):
            x = args[0].detach().reshape(-1, args[0].size(-1)).float()
            sums[name] = (x * x).sum(0) + sums.get(name, 0)
        return hook

    handles = [modules[name].register_forward_pre_hook(hook_for(name)) for name in module_names]
    device = next(model.parameters()).device
    try:
        for ids in tqdm(calib_batch.split(CHUNK // 2), desc="activations", disable=not progress, leave=False):
            model(ids.to(device), use_cache=False)
            count["tokens"] += ids.numel()
    finally:
        for h in handles:
            h.remove()
    return {name: (s / count["tokens"]).sqrt() for name, s in sums.items()}


@torch.no_grad()
def mean_abs_output(model, calib_batch: torch.Tensor, module_names: list) -> dict:
    """Mean over calibration tokens of |output| of every output channel of the named modules (gate_proj's
    pre-activation, for the ordering study's channel importance): {name: tensor [out_features]}."""
    modules = dict(model.named_modules())
    sums, count = {}, {"tokens": 0}

    def hook_for(name):
        def hook(module, args, output):
            sums[name] = output.detach().reshape(-1, output.size(-1)).float().abs().sum(0) + sums.get(name, 0)
        return hook

    handles = [modules[name].register_forward_hook(hook_for(name)) for name in module_names]
    device = next(model.parameters()).device
    decoder = model.get_decoder()   # the modules are inside it: the LM head's logits would be computed for nothing
    try:
        for ids in calib_batch.split(CHUNK // 2):
            decoder(ids.to(device), use_cache=False)
            count["tokens"] += ids.numel()
    finally:
        for h in handles:
            h.remove()
    return {name: s / count["tokens"] for name, s in sums.items()}


class _Captured(Exception):
    """Raised by the hook once the linear's input is captured: the layers after it need not run."""


@torch.no_grad()
def linear_inputs(model, names: list, batch: torch.Tensor) -> dict:
    """{name: the inputs [tokens, in_features] (float32, on the CPU) that the linear `name` (e.g.
    'model.layers.15.mlp.down_proj') receives when the model reads `batch` [n, seqlen]}. Each forward
    stops once the last of them has its input: the layers after it need not run."""
    device = next(model.parameters()).device
    captured = {name: [] for name in names}
    last = {}

    def grab(module, args, name):
        captured[name].append(args[0].detach().reshape(-1, args[0].shape[-1]).float().cpu())
        last[name] = True
        if len(last) == len(names):
            raise _Captured

    handles = [model.get_submodule(name).register_forward_pre_hook(lambda m, args, name=name: grab(m, args, name))
               for name in names]
    try:
        for ids in batch.split(CHUNK):
            last.clear()
            try:
                model.get_decoder()(ids.to(device), use_cache=False)   # no logits needed
            except _Captured:
                pass
    finally:
        for handle in handles:
            handle.remove()
    return {name: torch.cat(xs) for name, xs in captured.items()}


@torch.no_grad()
def relative_output_error(x: torch.Tensor, weight: torch.Tensor, w_hat: torch.Tensor) -> float:
    """||X (W - W_hat)^T||^2 / ||X W^T||^2 on inputs X [tokens, in]: the share of the layer's output that
    an edited weight W_hat (quantized, pruned) gets wrong (0: nothing). Judged on held-out inputs, it
    says whether a method fitted its calibration tokens or learned something that carries over."""
    x, weight = x.float(), weight.detach().float()
    return float(((x @ (weight - w_hat.detach().float()).T) ** 2).sum() / ((x @ weight.T) ** 2).sum())
