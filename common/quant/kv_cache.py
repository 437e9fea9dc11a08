"""KV-cache quantization (KIVI-style), as fake quantization for evaluation, and its memory accounting.

Keys have a few channels with large magnitudes in every token, so KIVI quantizes K per channel (a
scale per channel for each group of `token_group` consecutive tokens) and V per token (a scale per
token and head). Tokens of a group that is not yet full stay in full precision, as KIVI keeps its
most recent tokens.

Simulation: forward hooks on every k_proj and v_proj replace their outputs (the keys and values the
cache would store) by their quantized values, so any evaluation (e.g. `common.eval.perplexity`) sees
attention over a quantized cache. Keys are hooked before rotary embedding: a cache that stores
pre-RoPE keys and rotates them when reading (as KVQuant does) keeps the outlier channels aligned,
while RoPE mixes channel pairs. With `model.generate` each new token is a group of one and stays
unquantized: use this for evaluation of whole windows.

`rotate=True` stores each head's keys and values multiplied by an orthogonal matrix (a randomized
Hadamard, rotation.random_hadamard) and multiplies them back on reading, so the values quantized are
rotated ones. QuaRot does this after RoPE, where the rotation cancels in q.k and costs nothing for the
values (folded into v_proj and o_proj); here keys are cached before RoPE, so the rotation is of those.
A rotation of the residual stream alone leaves keys and values unchanged (see rotation.py).
"""
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ..errors import WorkshopError
from .formats import fake_quant
from .rotation import random_hadamard

KV_FORMATS = ("int8", "int4", "int2", "fp8_e4m3")
AXES = ("channel", "token")


@dataclass(frozen=True)
class KVQuantConfig:
    fmt: str = "int8"                 # int8 / int4 / int2 (asymmetric, as KIVI), or fp8_e4m3
    key_axis: str = "channel"         # KIVI: keys per channel ...
    value_axis: str = "token"         # ... values per token
    token_group: int = 32             # tokens sharing one per-channel scale
    channel_group: int | None = None  # channels sharing one per-token scale; None: one head (head_dim)
    rotate: bool = False              # quantize each head's keys and values after an orthogonal rotation
    needs_calibration = False         # the scales are computed from the cached values themselves

    def __post_init__(self):
        if self.fmt not in KV_FORMATS:
            raise WorkshopError(f"KV-cache format {self.fmt!r} is not supported.", f"Use one of {', '.join(KV_FORMATS)}.")
        if self.key_axis not in AXES or self.value_axis not in AXES:
            raise WorkshopError(f"Quantization axes must be 'channel' or 'token', got {self.key_axis!r}, "
                                f"{self.value_axis!r}.", "KIVI uses key_axis='channel', value_axis='token'.")
        if self.token_group < 1 or (self.channel_group is not None and self.channel_group < 1):
            raise WorkshopError(f"token_group={self.token_group}, channel_group={self.channel_group}: a group holds "
                                "at least one value.", "Give token_group=32 (KIVI's) and channel_group=None (a head).")
        if not isinstance(self.rotate, bool):
            raise WorkshopError(f"rotate={self.rotate!r} is not True or False.",
                                "Give rotate=True to rotate each head's keys and values before rounding them.")


def fake_quant_kv(x: torch.Tensor, fmt: str, axis: str, token_group: int = 32,
                  channel_group: int | None = None) -> torch.Tensor:
    """Quantize-dequantize keys or values `x` [batch, tokens, channels] along `axis`.

    axis="channel": one scale per channel per `token_group` tokens (trailing partial group untouched);
    axis="token": one scale per token per `channel_group` channels (default: all channels).
    """
    rows = lambda t: fake_quant(t, fmt, group_size=None, symmetric=False)  # noqa: E731 (one scale per row)
    batch, tokens, channels = x.shape
    if axis == "token":
        group = channel_group or channels
        if channels % group:
            raise WorkshopError(f"Channel group {group} does not divide {channels} channels.", "Use the head dimension.")
        return rows(x.reshape(-1, group)).reshape(x.shape)
    full = tokens - tokens % token_group
    if full == 0:
        return x
    grouped = x[:, :full].reshape(batch, full // token_group, token_group, channels).transpose(2, 3)
    quantized = rows(grouped.reshape(-1, token_group)).reshape(grouped.shape).transpose(2, 3)
    return torch.cat([quantized.reshape(batch, full, channels), x[:, full:]], dim=1)


def fake_quant_kv_rotated(x: torch.Tensor, rotation: torch.Tensor, *args) -> torch.Tensor:
    """fake_quant_kv(*args) of each head of `x` [batch, tokens, heads * head_dim] rotated by `rotation`
    [head_dim, head_dim], rotated back."""
    heads = x.reshape(*x.shape[:-1], -1, rotation.shape[0])
    r = rotation.to(x)
    return (fake_quant_kv((heads @ r.T).reshape(x.shape), *args).reshape(heads.shape) @ r).reshape(x.shape)


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def add_kv_quantization(model, config: KVQuantConfig) -> list:
    """Hooks that quantize every layer's keys and values; returns the handles (call .remove() on each)."""
    channel_group = config.channel_group or head_dim(model.config)
    rotation = random_hadamard(head_dim(model.config), torch.Generator().manual_seed(0)).matrix()
    handles = []
    for name, module in model.named_modules():
        if name.endswith("k_proj") or name.endswith("v_proj"):
            axis = config.key_axis if name.endswith("k_proj") else config.value_axis
            args = (config.fmt, axis, config.token_group, channel_group)
            hook = (lambda m, inputs, out, args=args: fake_quant_kv_rotated(out, rotation, *args)) if config.rotate \
                else (lambda m, inputs, out, args=args: fake_quant_kv(out, *args))
            handles.append(module.register_forward_hook(hook))
    if not handles:
        raise WorkshopError("This model has no k_proj / v_proj modules to hook.",
                            "KV-cache simulation supports Llama-style attention (SmolLM2, Llama, Qwen, Mistral).")
    return handles


@contextmanager
def quantized_kv_cache(model, config: KVQuantConfig | None):
    """`with quantized_kv_cache(model, KVQuantConfig("int4")): perplexity(model, ...)`; None: no change."""
    handles = add_kv_quantization(model, config) if config is not None else []
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()


def kv_bits_per_value(config: KVQuantConfig, head_dim: int) -> float:
    """Bits per cached value, its share of the 16-bit scales (and zero points, for integers) included;
    the mean of keys and values."""
    element = {"int8": 8, "int4": 4, "int2": 2, "fp8_e4m3": 8}[config.fmt]
    per_group = 16 * (1 if config.fmt.startswith("fp8") else 2)
    group = {"channel": config.token_group, "token": config.channel_group or head_dim}
    return element + (per_group / group[config.key_axis] + per_group / group[config.value_axis]) / 2


def kv_cache_bytes(config, batch: int, context: int, bits: float = 16) -> int:
    """Bytes of the KV cache: keys and values of every layer and KV head, for `batch` x `context` tokens.

    `bits` may include the scales' share (e.g. 4 + 2 * 16 / 32 for INT4 with an fp16 scale and zero
    per group of 32).
    """
    per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim(config)
    return int(per_token * batch * context * bits / 8)
