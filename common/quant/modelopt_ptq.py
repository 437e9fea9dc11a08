"""The same PTQ recipes through NVIDIA's library, nvidia-modelopt, for a side-by-side comparison.

`mtq.quantize(model, CONFIG, forward_loop)` inserts fake-quantizers into every linear layer, runs
`forward_loop` to calibrate them (amax, SmoothQuant or AWQ scales), and returns the model, which
still computes in floating point (export turns it into real low-bit weights for TensorRT-LLM).
With modelopt 0.47 on a CPU: FP8_DEFAULT_CFG, INT8_SMOOTHQUANT_CFG, INT4_AWQ_CFG and
W4A8_AWQ_BETA_CFG run (FP8 emulated), and INT4_BLOCKWISE_G64 (lab 05 trains through it);
NVFP4_DEFAULT_CFG needs CUDA (its block quantizer asserts
a CUDA tensor).
"""
import contextlib
import sys
import warnings
from dataclasses import dataclass

import torch

from ..errors import WorkshopError
from .storage import SCALE_BYTES

# (bits per weight, granularity of the weight scales: -1 per tensor, None per output channel, or a
# block size; note) of each configuration compared; bytes are those of the exported checkpoint.
CONFIGS = {
    "FP8_DEFAULT_CFG": (8, -1, "FP8 E4M3 W8A8, per-tensor scales"),
    "INT8_SMOOTHQUANT_CFG": (8, None, "INT8 W8A8, SmoothQuant, per-channel weights"),
    "INT4_AWQ_CFG": (4, 128, "INT4 weight-only AWQ, blocks of 128"),
    "INT4_AWQ_G64": (4, 64, "INT4 weight-only AWQ, blocks of 64: INT4_AWQ_CFG with 64 for its 128, our AWQ's block "
                     "(the comparison on equal footing)"),
    "W4A8_AWQ_BETA_CFG": (4, 128, "INT4 weights (AWQ, blocks of 128), FP8 activations"),
    "NVFP4_DEFAULT_CFG": (4, 16, "FP4 E2M1 W4A4, FP8 scale per 16 (CUDA only)"),
    "INT4_BLOCKWISE_G64": (4, 64, "INT4 weight-only, blocks of 64 (lab 05's QAT): INT4_BLOCKWISE_WEIGHT_ONLY_CFG "
                           "with 64 for its 128, which does not divide SmolLM2's 576 inputs"),
}
# Configurations made from one of modelopt's presets by changing its weight quantizer's block size.
BLOCK_SIZE_VARIANTS = {"INT4_BLOCKWISE_G64": ("INT4_BLOCKWISE_WEIGHT_ONLY_CFG", 64), "INT4_AWQ_G64": ("INT4_AWQ_CFG", 64)}
LAB02 = ("FP8_DEFAULT_CFG", "INT8_SMOOTHQUANT_CFG", "INT4_AWQ_CFG", "W4A8_AWQ_BETA_CFG", "NVFP4_DEFAULT_CFG")
NEEDS_CUDA = {"NVFP4_DEFAULT_CFG"}


@contextlib.contextmanager
def quiet_modelopt():
    """modelopt and the exporters narrate on stdout and warn about their own deprecations: report on
    stderr (so that --json stays parseable) and drop the warnings."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        yield


def modelopt_configs(names=LAB02) -> list:
    """The configurations among `names` (default: lab 02's) that run on this machine."""
    return [name for name in names if name not in NEEDS_CUDA or torch.cuda.is_available()]


def modelopt_config(mtq, config_name: str) -> dict:
    """modelopt's preset `config_name`, or for a BLOCK_SIZE_VARIANTS name a copy of its preset with the
    weight quantizer's block size replaced (the config is data: a dict of quantizer patterns)."""
    import copy
    if config_name not in BLOCK_SIZE_VARIANTS:
        return getattr(mtq, config_name)
    preset, block = BLOCK_SIZE_VARIANTS[config_name]
    config = copy.deepcopy(getattr(mtq, preset))
    for entry in config["quant_cfg"]:
        if entry.get("quantizer_name") == "*weight_quantizer":
            entry["cfg"]["block_sizes"][-1] = block
    return config


@dataclass(frozen=True)
class ModeloptConfig:
    """One of modelopt's configurations compared here (a key of CONFIGS), as a config like ours;
    `weights_only` switches its activation quantizers off after calibration (to tell the two errors apart)."""
    name: str = "FP8_DEFAULT_CFG"
    weights_only: bool = False
    needs_calibration = True   # every configuration calibrates its quantizers' ranges (and AWQ/SmoothQuant scales)

    def __post_init__(self):
        if self.name not in CONFIGS:
            raise WorkshopError(f"modelopt:{self.name} is not a modelopt configuration compared here.",
                                f"Use modelopt:<one of {', '.join(CONFIGS)}>.")


def quantize_modelopt(model, config: ModeloptConfig, calib_batch: torch.Tensor, progress: bool = True):
    """The model fake-quantized by modelopt's configuration `config.name`, calibrated on `calib_batch`."""
    config_name = config.name
    if config_name in NEEDS_CUDA and not torch.cuda.is_available():
        raise WorkshopError(f"modelopt's {config_name} needs a CUDA GPU.", "Run it on the GPU, or pick "
                            "FP8_DEFAULT_CFG, INT8_SMOOTHQUANT_CFG, INT4_AWQ_CFG or W4A8_AWQ_BETA_CFG.")
    with quiet_modelopt():   # version-range and deprecation notices, not our business here
        import modelopt.torch.quantization as mtq
    device = next(model.parameters()).device
    batches = calib_batch.to(device).split(1 if device.type == "cpu" else 8)

    def forward_loop(m):
        for ids in batches:
            m(ids, use_cache=False)

    with torch.no_grad(), quiet_modelopt():
        model = mtq.quantize(model, modelopt_config(mtq, config_name), forward_loop)
    if config.weights_only:
        mtq.disable_quantizer(model, "*input_quantizer")
    mark_modelopt_bytes(model, config_name)
    return model


def mark_modelopt_bytes(model, config_name: str) -> None:
    """Record the packed size of each linear modelopt quantized (its weight quantizer enabled)."""
    bits, block, _ = CONFIGS[config_name]
    for module in model.modules():
        quantizer = getattr(module, "weight_quantizer", None)
        if quantizer is not None and getattr(quantizer, "is_enabled", False):
            n_out, n_in = module.weight.shape
            scales = 1 if block == -1 else n_out * (-(-n_in // block) if block else 1)
            module.packed_weight_bytes = n_out * n_in * bits // 8 + scales * SCALE_BYTES
