"""Quantization methods by name, with the defaults the command line and the labs share (model in,
config as data): `method_and_config("gptq", bits=3, group_size=64, model=model)`, and lab 02's rows."""
from ..errors import WorkshopError

METHODS = ("rtn", "gptq", "awq", "smoothquant", "fp8", "nf4")
# Bits each method supports, and its default.
SUPPORTED_BITS = {"rtn": range(2, 9), "gptq": range(2, 9), "awq": range(2, 9), "smoothquant": (8,),
                  "fp8": (8,), "nf4": (4,)}
DEFAULT_BITS = {"rtn": 4, "gptq": 4, "awq": 4, "smoothquant": 8, "fp8": 8, "nf4": 4}
GROUPED = ("rtn", "gptq", "awq", "nf4")  # methods with a --group-size


SYMMETRIC_CHOICE = ("rtn", "gptq", "awq")  # integer grids with a zero point unless asked for a symmetric one
WITH_ACTIVATIONS = ("rtn", "gptq")         # methods that also round every linear's input per token on request
KV_BITS = (8, 4, 2)


def method_and_config(method: str, bits: int | None = None, group_size: int | None = None, model=None,
                      symmetric: bool = False, static_activations: bool = False, true_sequential: bool = False,
                      act_bits: int | None = None):
    """(quantize function, its config) for a method name, or a WorkshopError saying what is wrong.
    `group_size` None takes the default for `model` (`default_group_size`); 0 means per channel.
    `symmetric`: an integer grid around zero, without zero points (what TensorRT's INT4 takes).
    `static_activations`: SmoothQuant with one calibrated activation scale per tensor (TensorRT's INT8).
    `true_sequential`: GPTQ calibrates each group of a layer's linears after the groups before it.
    `act_bits`: RTN or GPTQ also round every linear's input, one scale per token (W4A8, W4A4)."""
    if method.startswith("modelopt:"):
        from .modelopt_ptq import ModeloptConfig, quantize_modelopt
        config = ModeloptConfig(method.split(":", 1)[1])
        if bits is not None or group_size is not None:
            raise WorkshopError(f"--method {method} fixes its own bits and group size.",
                                "Leave out --bits and --group-size with modelopt configurations.")
        return quantize_modelopt, config
    if method not in METHODS:
        raise WorkshopError(f"Unknown method {method!r}.",
                            f"Use one of {', '.join(METHODS)}, or modelopt:<CONFIG_NAME>.")
    bits = DEFAULT_BITS[method] if bits is None else bits
    if bits not in SUPPORTED_BITS[method]:
        raise WorkshopError(f"--method {method} does not support {bits} bits.",
                            f"Use --bits {' or '.join(map(str, SUPPORTED_BITS[method]))[:40]} with {method}.")
    if group_size is not None and method not in GROUPED:
        raise WorkshopError(f"--method {method} quantizes per channel; --group-size does not apply.",
                            "Leave out --group-size.")
    if symmetric and method not in SYMMETRIC_CHOICE:
        raise WorkshopError(f"--symmetric applies to {', '.join(SYMMETRIC_CHOICE)}; {method} fixes its own grid.",
                            "Leave out --symmetric.")
    if true_sequential and method != "gptq":
        raise WorkshopError(f"--true-sequential applies to gptq; {method} " +
                            ("calibrates each layer in one pass." if method in ("awq", "smoothquant", "fp8") else
                             "reads no calibration data."), "Leave out --true-sequential.")
    if static_activations and method != "smoothquant":
        raise WorkshopError(f"--static-activations applies to smoothquant; {method} " +
                            ("calibrates static activation scales already." if method == "fp8" else
                             "quantizes the weights only."), "Leave out --static-activations.")
    if act_bits is not None and method not in WITH_ACTIVATIONS:
        raise WorkshopError(f"--act-bits applies to {' and '.join(WITH_ACTIVATIONS)}; {method} " +
                            ("quantizes its activations its own way." if method in ("smoothquant", "fp8") else
                             "quantizes the weights only."), "Leave out --act-bits, or use --method rtn.")
    if act_bits is not None and not 2 <= act_bits <= 8:
        raise WorkshopError(f"--act-bits {act_bits}: activations go to integer grids of 2 to 8 bits.",
                            "Give --act-bits 8 or 4.")
    if group_size is not None and group_size < 0:
        raise WorkshopError(f"--group-size {group_size} is negative.", "Give 0 (per channel) or a positive size.")
    if group_size is None:
        group = 64 if method == "nf4" else default_group_size(model) if model is not None else 128
    else:
        group = group_size or None
    if group and model is not None:
        check_group_size(model, group)
    if method == "rtn":
        from .rtn import RTNConfig, quantize_rtn
        return quantize_rtn, RTNConfig(bits=bits, group_size=group, symmetric=symmetric, act_bits=act_bits)
    if method == "gptq":
        from .gptq import GPTQConfig, quantize_gptq
        return quantize_gptq, GPTQConfig(bits=bits, group_size=group, symmetric=symmetric, true_sequential=true_sequential,
                                         act_bits=act_bits)
    if method == "awq":
        from .awq import AWQConfig, quantize_awq
        return quantize_awq, AWQConfig(bits=bits, group_size=group, symmetric=symmetric)
    if method == "smoothquant":
        from .smoothquant import SmoothQuantConfig, quantize_smoothquant
        return quantize_smoothquant, (SmoothQuantConfig(activation_scales="static", smooth_down_proj=True)
                                      if static_activations else SmoothQuantConfig())
    if method == "fp8":
        from .fp8 import FP8Config, quantize_fp8
        return quantize_fp8, FP8Config()
    if group is None:
        raise WorkshopError("NF4 scales groups of weights (QLoRA's blocks); --group-size 0 (per channel) does not apply.",
                            "Give a group size such as 64.")
    from .nf4 import NF4Config, quantize_nf4
    return quantize_nf4, NF4Config(group_size=group)


def packed_form(config) -> tuple:
    """(fmt, symmetric, activations) of the layers that quantizing with `config` and packing makes, in
    QuantLinear's names, known before any model loads: what an exporter's refusals are asked about
    (export.onnx.tensorrt_refusal, export.compressed_tensors.compressed_tensors_refusal)."""
    from .fp8 import FP8Config
    from .nf4 import NF4Config
    from .smoothquant import SmoothQuantConfig
    if isinstance(config, NF4Config):
        return "nf4", True, None
    if isinstance(config, FP8Config):
        return "fp8", True, "fp8_static" if config.quantize_activations else None
    if isinstance(config, SmoothQuantConfig):   # symmetric INT weights per channel
        activations = "int8_static" if config.activation_scales == "static" else f"int{config.act_bits}_per_token"
        return f"int{config.weight_bits}", True, activations
    activations = getattr(config, "act_bits", None)   # RTN, GPTQ, AWQ: an integer grid, weights only unless asked
    return f"int{config.bits}", config.symmetric, activations and f"int{activations}_per_token"


def input_widths(model) -> list:
    from ..calibration import decoder_layers, linear_layers
    return sorted({lin.in_features for layer in decoder_layers(model) for lin in linear_layers(layer).values()})


def default_group_size(model) -> int | None:
    """128 where it divides every linear's input width, else 64 or 32 (SmolLM2-135M's hidden size is
    576 = 4.5 x 128, so it gets 64); None (per channel) if none of them does."""
    widths = input_widths(model)
    return next((g for g in (128, 64, 32) if not any(w % g for w in widths)), None)


def check_group_size(model, group: int) -> None:
    widths = input_widths(model)
    if any(w % group for w in widths):
        fitting = [g for g in (256, 128, 64, 32) if not any(w % g for w in widths)]
        raise WorkshopError(f"--group-size {group} does not divide the input widths of this model's "
                            f"linear layers ({', '.join(map(str, widths))}).",
                            (f"Use --group-size {' or '.join(map(str, fitting[:2]))}" if fitting else
                             "Use a size that divides all of them") + ", or 0 for per channel.")


def lab02_table(mode: str) -> list:
    """The rows of lab 02's table, in the order the lab runs them: (name, quantize function, config, weight
    bits). The lab calls each of these itself (quick mode leaves some to the recorded full-mode run);
    tests/test_ptq.py checks that both say the same."""
    from .awq import AWQConfig, quantize_awq
    from .fp8 import FP8Config, quantize_fp8
    from .gptq import GPTQConfig, quantize_gptq
    from .nf4 import NF4Config, quantize_nf4
    from .rtn import RTNConfig, quantize_rtn
    from .smoothquant import SmoothQuantConfig, quantize_smoothquant
    rows = [("RTN W4 per channel", quantize_rtn, RTNConfig(bits=4, group_size=None), 4),
            ("RTN W4 g64", quantize_rtn, RTNConfig(bits=4, group_size=64), 4),
            ("RTN W3 g64", quantize_rtn, RTNConfig(bits=3, group_size=64), 3),
            ("GPTQ W3 g64", quantize_gptq, GPTQConfig(bits=3, group_size=64), 3),
            ("W8A8 INT8, no smoothing", quantize_smoothquant, SmoothQuantConfig(smooth=False), 8),
            ("SmoothQuant W8A8 INT8", quantize_smoothquant, SmoothQuantConfig(alpha=0.5), 8),
            ("W8A8 INT8 static, no smoothing", quantize_smoothquant,
             SmoothQuantConfig(smooth=False, activation_scales="static"), 8),
            ("SmoothQuant W8A8 INT8 static", quantize_smoothquant,
             SmoothQuantConfig(activation_scales="static", smooth_down_proj=True), 8),
            ("FP8 E4M3 W8A8", quantize_fp8, FP8Config(), 8),
            ("NF4 W4 block 64", quantize_nf4, NF4Config(group_size=64), 4),
            ("RTN W2 g64", quantize_rtn, RTNConfig(bits=2, group_size=64), 2)]
    if mode == "full":  # a third GPTQ run costs minutes on a CPU
        rows.append(("GPTQ W2 g64", quantize_gptq, GPTQConfig(bits=2, group_size=64), 2))
    rows += [("GPTQ W4 per channel", quantize_gptq, GPTQConfig(bits=4, group_size=None), 4),
             ("AWQ W3 g64", quantize_awq, AWQConfig(bits=3, group_size=64), 3),
             ("AWQ W4 g64", quantize_awq, AWQConfig(bits=4, group_size=64), 4),
             ("GPTQ W3 g64, true-sequential", quantize_gptq, GPTQConfig(bits=3, group_size=64, true_sequential=True), 3)]
    return rows


def kv_config(kv_bits: int | None, rotate: bool = False):
    """The KV cache `workshop quantize --kv-bits` simulates: KIVI's integer grids (keys per channel, values
    per token), each head rotated first with `rotate`; None for no --kv-bits."""
    if kv_bits is None:
        return None
    if kv_bits not in KV_BITS:
        raise WorkshopError(f"--kv-bits {kv_bits}: the KV cache is simulated in {', '.join(map(str, KV_BITS))} bits.",
                            "Give --kv-bits 8, 4 or 2.")
    from .kv_cache import KVQuantConfig
    return KVQuantConfig(f"int{kv_bits}", rotate=rotate)


def rotation_rows() -> list:
    """Lab 02's "Going further: rotation" rows: (name, RotationConfig or None, RTNConfig), run as: rotate
    (where given), then quantize. RTN g64 (SmolLM2-135M's default group), activations symmetric per token."""
    from .rotation import RotationConfig
    from .rtn import RTNConfig
    return [(f"W4A{act} RTN g64{', rotated' if rotation else ''}", rotation, RTNConfig(bits=4, group_size=64, act_bits=act))
            for rotation in (None, RotationConfig(seed=0)) for act in (8, 4)]


def lab02_modelopt_configs(mode: str) -> list:
    """modelopt's configurations in lab 02: all that run here in full mode; in quick mode the INT8
    SmoothQuant one alone (lab 02 sets it beside ours; the recorded full run has the others: its AWQ
    search is far too slow on a CPU, and its FP8 adds little there)."""
    from .modelopt_ptq import modelopt_configs
    return modelopt_configs() if mode == "full" else ["INT8_SMOOTHQUANT_CFG"]
