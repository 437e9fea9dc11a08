"""One technique contract: `technique(model, config, calib) -> model`, the config frozen and checked when
it is made, and its `needs_calibration` true exactly when the technique cannot run without calibration
text (the command line reads it to decide whether to prepare any)."""
import copy
import dataclasses
import importlib
import pkgutil

import pytest
import torch
from torch import nn

import common.distill
import common.prune
import common.quant
from common.errors import WorkshopError
from common.prune.depth import DepthPruneConfig, prune_depth
from common.prune.lowrank import LowRankConfig, prune_lowrank
from common.prune.magnitude import MagnitudeConfig, prune_magnitude
from common.prune.modelopt_sparsity import ModeloptSparsityConfig, prune_modelopt
from common.prune.sparsegpt import SparseGPTConfig, prune_sparsegpt
from common.prune.wanda import WandaConfig, prune_wanda
from common.prune.width import WidthPruneConfig, prune_width
from common.quant.awq import AWQConfig, quantize_awq
from common.quant.fp8 import FP8Config, quantize_fp8
from common.quant.gptq import GPTQConfig, quantize_gptq
from common.quant.nf4 import NF4Config, quantize_nf4
from common.quant.rotation import RotationConfig, rotate
from common.quant.rtn import RTNConfig, quantize_rtn
from common.quant.smoothquant import SmoothQuantConfig, quantize_smoothquant

TECHNIQUES = [
    (quantize_rtn, RTNConfig(group_size=32)), (quantize_gptq, GPTQConfig(group_size=32)),
    (quantize_awq, AWQConfig(group_size=32)), (quantize_smoothquant, SmoothQuantConfig()),
    (quantize_fp8, FP8Config()), (quantize_fp8, FP8Config(quantize_activations=False)),
    (quantize_nf4, NF4Config(group_size=32)), (rotate, RotationConfig()),
    (prune_magnitude, MagnitudeConfig()), (prune_wanda, WandaConfig()), (prune_sparsegpt, SparseGPTConfig()),
    (prune_width, WidthPruneConfig()), (prune_width, WidthPruneConfig(importance="magnitude")),
    (prune_width, WidthPruneConfig(importance="taylor", allocation="adaptive")),
    (prune_depth, DepthPruneConfig(layers_removed=1)),
    (prune_lowrank, LowRankConfig()), (prune_lowrank, LowRankConfig(activation_aware=False)),
    (prune_modelopt, ModeloptSparsityConfig()),   # sparsegpt: refused before modelopt is imported
]


def technique_configs() -> list:
    """Every *Config dataclass of quant/, prune/ and distill/ (the techniques' configs)."""
    found = {}
    for package in (common.quant, common.prune, common.distill):
        for info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            found |= {c.__name__: c for c in vars(module).values() if isinstance(c, type) and
                      c.__name__.endswith("Config") and dataclasses.is_dataclass(c) and c.__module__ == module.__name__}
    return list(found.values())


@pytest.mark.parametrize("config_type", technique_configs(), ids=lambda c: c.__name__)
def test_every_config_is_frozen_and_says_what_the_technique_needs(config_type):
    assert config_type.__dataclass_params__.frozen, f"{config_type.__name__} can change under a run"
    needs = "needs_teacher" if config_type.__module__.startswith("common.distill") else "needs_calibration"
    assert hasattr(config_type, needs), f"{config_type.__name__} does not say whether it {needs.replace('_', 's ')}"


@pytest.mark.parametrize("config", [lambda: GPTQConfig(bits=1), lambda: AWQConfig(clip_ratios=(1.5,)),
                                    lambda: FP8Config(fmt="int8"), lambda: NF4Config(group_size=0),
                                    lambda: SmoothQuantConfig(alpha=2.0), lambda: WandaConfig(sparsity=1.0),
                                    lambda: DepthPruneConfig(layers_removed=-1), lambda: LowRankConfig(targets="ffn"),
                                    lambda: WidthPruneConfig(importance="random"),
                                    lambda: WidthPruneConfig(importance="taylor", allocation="global"),
                                    lambda: WidthPruneConfig(allocation="adaptive")])
def test_a_bad_config_fails_when_made_and_says_what_to_do(config):
    with pytest.raises(WorkshopError) as caught:
        config()
    assert caught.value.problem and caught.value.fix


@pytest.mark.parametrize("technique, config", TECHNIQUES, ids=lambda x: getattr(x, "__name__", repr(x)))
def test_needs_calibration_says_whether_the_technique_runs_without_calibration(technique, config, tiny):
    model = copy.deepcopy(tiny[0])
    if config.needs_calibration:
        with pytest.raises(WorkshopError, match="no calibration batch"):
            technique(model, config, None, progress=False)
    else:
        before = copy.deepcopy(model.state_dict())
        result = technique(model, config, None, progress=False)
        assert isinstance(result, nn.Module)
        after = result.state_dict()
        assert any(k not in after or not torch.equal(v, after[k]) for k, v in before.items()), "nothing changed"
