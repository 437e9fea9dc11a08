"""Lab 05's checkers reject the unsolved stub and a plausible wrong answer."""
import copy

import pytest
import torch
from torch import nn

from common.checks import ExerciseFailed
from common.checks.lab05 import check_gradient_reach, check_straight_through
from common.models import load_model
from common.quant.formats import fake_quant_nf4
from common.quant.nf4 import NF4Config, quantize_nf4
from common.quant.packing import pack_quantized
from common.quant.qlinear import QuantLinear
from conftest import unsolved_function   # an exercise left open: the stub labs/ hands the learner


@pytest.fixture(scope="module")
def models():
    model, _ = load_model("tiny-random", device="cpu")
    packed = pack_quantized(quantize_nf4(copy.deepcopy(model), NF4Config()), progress=False)
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    return packed, model, ids


def test_gradient_reach_falls_back_on_its_reference(models, capsys):
    packed, model, ids = models
    reference = check_gradient_reach(unsolved_function, packed, ids)
    assert reference is not unsolved_function and "NOT SOLVED YET" in capsys.readouterr().out
    assert check_gradient_reach(reference, packed, ids) is reference
    assert all(p.grad is None for p in packed.parameters())   # the checks leave no gradient behind
    assert 0 < reference(packed, ids) < 0.5 and reference(model, ids) > 0.99


def test_gradient_reach_rejects_counting_the_parameters_only(models):
    packed, model, ids = models

    def parameters_only(model, ids):        # forgets the packed codes: 100% of what is left
        model(ids, labels=ids).loss.backward()
        params = list(model.parameters())
        return sum(int((p.grad != 0).sum()) for p in params if p.grad is not None) / sum(p.numel() for p in params)

    def codes_as_bytes(model, ids):          # counts the packed buffer's bytes, two codes to each
        model(ids, labels=ids).loss.backward()
        reached = sum(int((p.grad != 0).sum()) for p in model.parameters() if p.grad is not None)
        return reached / (sum(p.numel() for p in model.parameters()) +
                          sum(m.qweight.numel() for m in model.modules() if isinstance(m, QuantLinear)))

    for wrong in (parameters_only, codes_as_bytes):
        with pytest.raises(ExerciseFailed):
            check_gradient_reach(wrong, packed, ids)


@pytest.fixture(scope="module")
def layer_and_inputs():
    torch.manual_seed(0)
    layer = nn.Linear(128, 64, bias=False)
    return layer, torch.randn(32, 128)


def test_straight_through_falls_back_on_its_reference(layer_and_inputs, capsys):
    layer, x = layer_and_inputs
    reference = check_straight_through(unsolved_function, layer, x)
    assert reference is not unsolved_function and "NOT SOLVED YET" in capsys.readouterr().out
    assert check_straight_through(reference, layer, x) is reference
    w = layer.weight.detach().clone().requires_grad_()
    assert torch.equal(reference(w).detach(), fake_quant_nf4(w.detach(), 64)) or \
        torch.allclose(reference(w).detach(), fake_quant_nf4(w.detach(), 64), atol=1e-7)


@pytest.mark.parametrize("wrong", [
    lambda w: fake_quant_nf4(w, 64),                         # the rounding alone: a gradient only through the scales
    lambda w: w + (fake_quant_nf4(w, 64) - w),               # the correction left in the graph: the same
    lambda w: w,                                             # no rounding: the float layer's forward pass
    lambda w: fake_quant_nf4(w, 64).detach(),                # no gradient reaches the weight at all
    lambda w: w + (fake_quant_nf4(w, 32) - w).detach(),      # the wrong block size
], ids=["round only", "not detached", "no rounding", "detached", "blocks of 32"])
def test_straight_through_rejects_a_wrong_estimator(layer_and_inputs, wrong):
    layer, x = layer_and_inputs
    with pytest.raises(ExerciseFailed):
        check_straight_through(wrong, layer, x)
