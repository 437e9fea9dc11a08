"""QLoRA (issue 37): adapters on frozen packed NF4 codes, the LoRA pipeline step, and its refusals."""
import copy
import json
import re

import pytest
import torch
from torch import nn

import common.models
from common.budgets import get_budget
from common.cli import main
from common.distill.train import DistillConfig, DistillHistory, distill
from common.errors import WorkshopError
from common.pipeline import (INT4, NF4, Distill, KVCache, LoRA, ModeloptQuantize, WidthPrune, check_recipe,
                             recipe_from_file, run_pipeline)
from common.protocol import DataProtocol
from common.quant.lora import DECODER_LINEARS, LoRAConfig, LoRALinear, add_lora, lora_parameters
from common.quant.nf4 import NF4Config, quantize_nf4
from common.quant.packing import pack_quantized
from common.quant.qlinear import QuantLinear

BUDGET = get_budget("quick", pipeline_train_steps=2, train_batch=2, train_seqlen=32)


def packed_nf4(model):
    return pack_quantized(quantize_nf4(copy.deepcopy(model), NF4Config(group_size=32)), progress=False)


def codes(model) -> dict:
    """Every packed layer's codes and scales, by name (wrapped or not)."""
    return {name.replace(".base", ""): (m.qweight.clone(), m.scales.clone())
            for name, m in model.named_modules() if isinstance(m, QuantLinear)}


def formula(model, rank: int) -> int:
    """rank x (in + out) for each of the seven linears of every decoder layer."""
    return sum(rank * (m.in_features + m.out_features) for layer in model.model.layers
               for name, m in layer.named_modules() if name.rpartition(".")[2] in DECODER_LINEARS)


@pytest.mark.parametrize("quantized", [True, False])
def test_adapters_change_nothing_at_first_and_are_all_that_trains(tiny, quantized):
    model = packed_nf4(tiny[0]) if quantized else copy.deepcopy(tiny[0])
    ids = torch.randint(0, model.config.vocab_size, (2, 12))
    before = model(ids).logits
    adapted = add_lora(model, LoRAConfig(rank=4))
    assert torch.equal(adapted(ids).logits, before)      # B = 0: exactly the same function
    wrapped = [m for m in adapted.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 7 * adapted.config.num_hidden_layers
    assert {type(m.base) for m in wrapped} == {QuantLinear if quantized else nn.Linear}
    trainable = sum(p.numel() for p in adapted.parameters() if p.requires_grad)
    assert trainable == lora_parameters(adapted) == formula(adapted, 4)
    assert all(not p.requires_grad for name, p in adapted.named_parameters() if "lora_" not in name)


def test_adapters_train_while_the_nf4_codes_stay_bit_identical(tiny):
    model, _ = tiny
    student = add_lora(packed_nf4(model), LoRAConfig(rank=4))
    before, embedding = codes(student), student.model.embed_tokens.weight.clone()
    window = torch.randint(0, model.config.vocab_size, (1, 24)).repeat(2, 1)   # the same batch every step
    config = DistillConfig(steps=6, lr=1e-2, batch=2, seqlen=24, ce_weight=0.7)
    history = DistillHistory()
    trained = distill(student, config, window, teacher=model, progress=False, history=history)
    losses = history.losses()
    assert losses[-1] < 0.9 * losses[0]
    assert all(m.lora_B.abs().sum() > 0 for m in trained.modules() if isinstance(m, LoRALinear))
    after = codes(trained)
    assert before.keys() == after.keys() and len(before) == 7 * model.config.num_hidden_layers
    assert all(torch.equal(before[n][0], after[n][0]) and torch.equal(before[n][1], after[n][1]) for n in before)
    assert torch.equal(trained.model.embed_tokens.weight, embedding)   # frozen too, as in QLoRA


@pytest.mark.parametrize("options, message", [
    (dict(rank=0), "not an adapter width"), (dict(rank=2.5), "not an adapter width"),
    (dict(alpha=0.0), "must be positive"), (dict(dropout=1.0), "not a dropout probability"),
    (dict(targets="q_proj"), "not a list of layer names"), (dict(targets=()), "not a list of layer names")])
def test_a_bad_lora_config_is_refused_when_made(options, message):
    with pytest.raises(WorkshopError, match=message) as caught:
        LoRAConfig(**options)
    assert caught.value.fix


def test_add_lora_refuses_unknown_targets_and_a_second_set_of_adapters(tiny):
    model = copy.deepcopy(tiny[0])
    with pytest.raises(WorkshopError, match=re.escape("LoRA targets ['qkv'] match no linear")):
        add_lora(model, LoRAConfig(targets=("q_proj", "qkv")))
    add_lora(model, LoRAConfig(targets=("q_proj", "v_proj")))
    assert lora_parameters(model) == sum(8 * (m.in_features + m.out_features) for layer in model.model.layers
                                         for m in (layer.self_attn.q_proj, layer.self_attn.v_proj))
    with pytest.raises(WorkshopError, match="already has LoRA adapters"):
        add_lora(model, LoRAConfig())


def test_the_pipeline_step_trains_adapters_on_the_codes_of_q(tiny):
    model, tokenizer = tiny
    protocol = DataProtocol.for_budget(BUDGET, calib_samples=4, calib_seqlen=32, seqlen=64, max_windows=1)
    quantized, _ = run_pipeline(model, tokenizer, [NF4()], protocol, budget=BUDGET, progress=False)
    adapted, result = run_pipeline(model, tokenizer, [NF4(), LoRA(rank=4, lr=1e-2)], protocol, teacher=model,
                                   budget=BUDGET, progress=False)
    start, q, lora = result.records
    assert lora["stage"] == "LoRA" and lora["train_tokens"] == 2 * 2 * 32    # KD's budget: the pipeline's steps
    assert lora["trainable_parameters"] == lora_parameters(adapted) == formula(adapted, 4)
    assert lora["stored_bytes"] == q["stored_bytes"] + 4 * lora_parameters(adapted)   # fp32 adapters beside the codes
    assert lora["ppl"] != q["ppl"]
    before, after = codes(quantized), codes(adapted)
    assert before.keys() == after.keys() and all(torch.equal(before[n][i], after[n][i]) for n in before for i in (0, 1))


def test_recipes_with_a_lora_step(tmp_path):
    path = tmp_path / "qlora.yaml"
    path.write_text("- {step: Q}\n- {step: lora, rank: 4, lr: 0.002}\n")
    assert recipe_from_file(path) == [NF4(), LoRA(rank=4, lr=0.002)]
    for text, message in [("[{step: Q}, {step: LoRA, rank: 0}]", "not an adapter width"),
                          ("[{step: Q}, {step: LoRA, lr: 0}]", "positive rate"),
                          ("[{step: Q}, {step: LoRA, steps: 0}]", "trains nothing"),
                          ("[{step: Q}, {step: LoRA, engine: modelopt}]", "no such option")]:
        path.write_text(text)
        with pytest.raises(WorkshopError, match=message):
            recipe_from_file(path)
    assert LoRA().training() == Distill(steps=None, lr=LoRA().lr)   # KD's loss, its own rate


@pytest.mark.parametrize("recipe, message", [
    ([LoRA()], "step 1 (LoRA) adds adapters to frozen packed codes, and no step before it quantizes the weights"),
    ([WidthPrune(), Distill(), LoRA()], "step 3 (LoRA) adds adapters to frozen packed codes, and no step before it"),
    ([NF4(qat=True), LoRA()], "step 2 (LoRA) adds adapters to frozen packed codes, and step 1 (Q(QAT)) leaves none"),
    ([ModeloptQuantize(), LoRA()], "step 1 (Q(modelopt)) leaves none"),
    ([NF4(), LoRA(), WidthPrune()], "step 3 (P) comes after the LoRA step (step 2)"),
    ([NF4(), LoRA(), LoRA()], "step 3 (LoRA) comes after the LoRA step (step 2)"),
])
def test_a_lora_step_without_packed_codes_under_it_is_refused(recipe, message):
    with pytest.raises(WorkshopError, match=re.escape(message)):
        check_recipe(recipe)
    for fine in ([NF4(), LoRA()], [WidthPrune(), Distill(), INT4(), LoRA(), KVCache(), Distill()]):
        assert check_recipe(fine) == fine


@pytest.fixture
def no_model_load(monkeypatch):
    def loaded(*args, **kwargs):
        pytest.fail("the model was loaded before the bad input was refused")
    monkeypatch.setattr(common.models, "load_model", loaded)


@pytest.mark.parametrize("steps, extra, message", [
    ([{"step": "LoRA"}], [], "step 1 (LoRA) adds adapters to frozen packed codes"),
    ([{"step": "Q", "qat": True}, {"step": "LoRA"}], [], "step 1 (Q(QAT)) leaves none"),
    ([{"step": "Q"}, {"step": "LoRA", "rank": -1}], [], "not an adapter width"),
    ([{"step": "Q"}, {"step": "LoRA"}], ["--out", "{out}"], "adapters stay beside the codes"),
])
def test_cli_refuses_a_bad_lora_recipe_before_loading_the_model(steps, extra, message, tmp_path, capsys,
                                                                no_model_load):
    recipe = tmp_path / "r.json"
    recipe.write_text(json.dumps(steps))
    argv = [a.format(out=tmp_path / "out") for a in extra]
    assert main(["pipeline", "--model", "tiny-random", "--recipe", str(recipe), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "What to do" in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]   # nothing written
