"""LoRA adapters on a frozen (quantized) base: QLoRA's recovery step.

`add_lora(model, LoRAConfig(rank=8))` wraps each target linear of every decoder layer, a packed
`QuantLinear` (NF4, as QLoRA stores its base) or a plain `nn.Linear`, in a `LoRALinear` that computes

    base(x) + (alpha / rank) · B(A(x))          A: [rank, in], B: [out, rank]

and freezes every other parameter of the model, as QLoRA (and peft) do: afterwards only A and B train.
A starts small and random (Kaiming uniform, as nn.Linear's weights), B at zero, so the model computes
exactly what it did before until the first optimizer step. The base's codes and scales are buffers,
which no gradient reaches: training moves the adapters only, and the codes stay bit-identical.

The adapters stay separate from the codes (no merge): adding B·A to an NF4 weight and rounding it back
onto the grid would round most of the correction away, which is why QLoRA keeps them apart too.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..calibration import decoder_layers
from ..errors import WorkshopError
from .qlinear import QuantLinear

DECODER_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class LoRAConfig:
    rank: int = 8                       # r: the adapters' inner width
    alpha: float = 16.0                 # the update is scaled by alpha / rank (QLoRA: alpha = 2 r)
    dropout: float = 0.0                # on the adapters' input only
    targets: tuple = DECODER_LINEARS    # names of the decoder layers' linears that get adapters (QLoRA: all)
    seed: int = 0                       # A's initialization, so that the same config gives the same model
    needs_calibration = False           # no data: B = 0 makes the start exact

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise WorkshopError(f"LoRAConfig(rank={self.rank!r}) is not an adapter width.",
                                "Give a positive integer rank, e.g. 8 or 16 (QLoRA used 64 on 7B-65B models).")
        if not self.alpha > 0:
            raise WorkshopError(f"LoRAConfig(alpha={self.alpha!r}): the update's scale alpha / rank must be positive.",
                                "Give alpha > 0, e.g. twice the rank (alpha=16 with rank=8).")
        if not 0 <= self.dropout < 1:
            raise WorkshopError(f"LoRAConfig(dropout={self.dropout!r}) is not a dropout probability.",
                                "Give dropout in [0, 1): 0 (the default) or e.g. 0.05.")
        if isinstance(self.targets, str) or not self.targets or not all(isinstance(t, str) for t in self.targets):
            raise WorkshopError(f"LoRAConfig(targets={self.targets!r}) is not a list of layer names.",
                                f"Give names of the decoder layers' linears, e.g. {DECODER_LINEARS}.")

    @property
    def scaling(self) -> float:
        return self.alpha / self.rank


class LoRALinear(nn.Module):
    """base(x) + (alpha / rank) · B(A(x)), the base frozen. A and B are bare parameters, not nn.Linear
    layers: the course's layer walks (quantizers, pruning, QAT) look for nn.Linear and must not take
    the adapters for decoder linears."""

    def __init__(self, base: nn.Module, config: LoRAConfig, dtype: torch.dtype, generator: torch.Generator):
        super().__init__()
        self.base = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.scaling = config.scaling
        device = (base.qweight if isinstance(base, QuantLinear) else base.weight).device
        a = torch.empty(config.rank, self.in_features, dtype=dtype)   # drawn on the CPU: the generator's device
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        self.lora_A = nn.Parameter(a.to(device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, config.rank, dtype=dtype, device=device))
        self.dropout = nn.Dropout(config.dropout) if config.dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.dropout(x), self.lora_A.to(x.dtype)), self.lora_B.to(x.dtype))
        return self.base(x) + self.scaling * update

    def extra_repr(self) -> str:
        return f"rank={self.lora_A.shape[0]}, scaling={self.scaling:g}"


def add_lora(model, config: LoRAConfig):
    """Adapters on every target linear of the decoder layers (packed QuantLinear or nn.Linear), every
    other parameter frozen; in place, returns the model."""
    if any(isinstance(m, LoRALinear) for m in model.modules()):
        raise WorkshopError("This model already has LoRA adapters.", "Add adapters once, to the quantized model.")
    names = [f"{i}.{name}" for i, layer in enumerate(decoder_layers(model)) for name, m in layer.named_modules()
             if isinstance(m, (nn.Linear, QuantLinear)) and name.rpartition(".")[2] in config.targets]
    found = {name.rpartition(".")[2] for name in names}
    if set(config.targets) - found:
        missing = sorted(set(config.targets) - found)
        raise WorkshopError(f"LoRA targets {missing} match no linear of the decoder layers.",
                            f"Use names the layers have: {', '.join(sorted(found)) or 'none found'}.")
    model.requires_grad_(False)
    dtype = next(model.parameters()).dtype
    generator = torch.Generator().manual_seed(config.seed)
    layers = decoder_layers(model)
    for name in names:
        layers.set_submodule(name, LoRALinear(layers.get_submodule(name), config, dtype, generator))
    return model


def lora_parameters(model) -> int:
    """The adapters' parameters: rank x (in + out) per adapted linear."""
    return sum(m.lora_A.numel() + m.lora_B.numel() for m in model.modules() if isinstance(m, LoRALinear))
