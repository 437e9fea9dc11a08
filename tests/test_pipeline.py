"""Lab 05's pipelines: recipes as data, the six orders, and the mechanism (no gradient reaches packed NF4)."""
import copy
import json

import pytest
import torch

from common.budgets import get_budget
from common.cli import main
from common.errors import WorkshopError
from common.models import load_model
from common.pipeline import (NF4, ORDERS, Distill, WidthPrune, recipe_from_file, recipe_from_order, run_pipeline,
                             weights_reached_by_gradient)
from common.protocol import DataProtocol
from common.quant.qlinear import QuantLinear

BUDGET = get_budget("quick", train_steps=3, train_batch=2, train_seqlen=32)
SMALL = ["--seqlen", "64", "--max-windows", "1", "--calib-samples", "4", "--calib-seqlen", "32"]


@pytest.fixture(scope="module")
def pair():
    model, tokenizer = load_model("tiny-random", device="cpu")
    return model, tokenizer, load_model("tiny-random", device="cpu")[0]


def protocol():
    return DataProtocol.for_budget(BUDGET, calib_samples=4, calib_seqlen=32, seqlen=64, max_windows=1)


def test_orders_are_the_six_permutations():
    assert sorted(tuple(o.split(",")) for o in ORDERS) == sorted(
        [(a, b, c) for a in "P KD Q".split() for b in "P KD Q".split() for c in "P KD Q".split() if len({a, b, c}) == 3])
    assert [type(s) for s in recipe_from_order("q, p ,kd", qat=True)] == [NF4, WidthPrune, Distill]
    assert recipe_from_order("Q,P,KD", qat=True)[0].qat


@pytest.mark.parametrize("order, message", [("P,KD,X", "unknown step X"), ("P,P,Q", "exactly once"),
                                            ("P,KD", "exactly once")])
def test_bad_orders(order, message):
    with pytest.raises(WorkshopError, match=message):
        recipe_from_order(order)


def test_recipe_files(tmp_path):
    good = tmp_path / "r.json"
    good.write_text(json.dumps([{"step": "P", "mlp": 0.25}, {"step": "KD", "steps": 2}, {"step": "Q", "qat": True}]))
    assert recipe_from_file(good) == [WidthPrune(mlp=0.25), Distill(steps=2), NF4(qat=True)]
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text("- step: Q\n  block_size: 32\n")
    assert recipe_from_file(yaml_file) == [NF4(block_size=32)]
    for text, message in [("[{\"step\": ", "does not parse"), ("{}", "non-empty list"),
                          ("[{\"step\": \"Z\"}]", "unknown step"), ("[{\"step\": \"P\", \"heads\": 1}]", "no such option"),
                          ("[{\"step\": \"P\", \"mlp\": 1.5}]", "must be in")]:
        good.write_text(text)
        with pytest.raises(WorkshopError, match=message):
            recipe_from_file(good)


def test_no_gradient_reaches_packed_nf4_and_qat_trains_through_it(pair):
    model, tokenizer, teacher = pair
    _, packed = run_pipeline(model, tokenizer, [NF4(), Distill()], protocol(), teacher=teacher, budget=BUDGET,
                             progress=False)
    _, qat = run_pipeline(model, tokenizer, [NF4(qat=True), Distill()], protocol(), teacher=teacher, budget=BUDGET,
                          progress=False)
    float_share = sum(p.numel() for n, p in model.named_parameters() if "layers." not in n or "norm" in n) / \
        sum(p.numel() for p in model.parameters())
    assert packed.final["weights_reached_by_gradient"] == pytest.approx(float_share, rel=1e-6)  # norms, embeddings
    assert packed.final["weights_reached_by_gradient"] < 0.5
    assert qat.final["weights_reached_by_gradient"] == 1.0
    # same stored size at the end: QAT's trained weights are packed to NF4 too
    assert packed.final["stored_bytes"] == qat.final["stored_bytes"] < packed.records[0]["stored_bytes"] / 3


def test_training_after_packing_leaves_the_codes_alone(pair):
    model, tokenizer, teacher = pair
    quantized, _ = run_pipeline(model, tokenizer, [NF4()], protocol(), budget=BUDGET, progress=False)
    trained, result = run_pipeline(quantized, tokenizer, [Distill(steps=2, lr=1e-2)], protocol(), teacher=teacher,
                                   budget=BUDGET, progress=False)
    before = {n: m.qweight.clone() for n, m in quantized.named_modules() if isinstance(m, QuantLinear)}
    after = {n: m.qweight for n, m in trained.named_modules() if isinstance(m, QuantLinear)}
    assert before and all(torch.equal(before[n], after[n]) for n in before)
    assert not torch.equal(quantized.model.norm.weight, trained.model.norm.weight)  # the float parts did train
    assert result.final["stored_bytes"] == result.records[0]["stored_bytes"]         # stored types kept


def test_prune_after_packed_quantization_repacks(pair):
    model, tokenizer, _ = pair
    pruned, result = run_pipeline(model, tokenizer, [NF4(), WidthPrune()], protocol(), budget=BUDGET, progress=False)
    assert pruned.config.intermediate_size % 64 == 0 and pruned.config.intermediate_size < model.config.intermediate_size
    assert isinstance(pruned.model.layers[0].mlp.down_proj, QuantLinear)
    assert result.records[2]["parameters"] < result.records[1]["parameters"]


def test_gradient_reach_counts_every_weight(pair):
    model, tokenizer, _ = pair
    ids = torch.randint(0, model.config.vocab_size, (1, 16))
    assert weights_reached_by_gradient(copy.deepcopy(model), ids) > 0.99


def test_kd_needs_a_teacher(pair):
    model, tokenizer, _ = pair
    with pytest.raises(WorkshopError, match="no teacher"):
        run_pipeline(model, tokenizer, [Distill()], protocol(), budget=BUDGET, progress=False)


def test_cli_order_writes_a_packed_model(tmp_path, capsys, monkeypatch):
    import common.budgets
    monkeypatch.setattr(common.budgets, "get_budget", lambda *a, **k: BUDGET)
    out = tmp_path / "pkdq"
    assert main(["pipeline", "--model", "tiny-random", "--device", "cpu", "--order", "P,KD,Q", *SMALL,
                 "--out", str(out), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert [r["stage"] for r in result["records"]] == ["start", "P", "KD", "Q"]
    assert set(result["records"][-1]["ppl"]) == {"wiki", "python-docs"}
    loaded, _ = load_model(str(out), device="cpu")
    assert isinstance(loaded.model.layers[0].mlp.gate_proj, QuantLinear)


@pytest.mark.parametrize("argv, message", [
    (["--order", "P,KD,Z"], "unknown step Z"),
    (["--order", "P,KD"], "exactly once"),
    ([], "exactly one of"),
    (["--order", "P,KD,Q", "--all-orders"], "exactly one of"),
    (["--all-orders", "--out", "x"], "six models"),
    (["--recipe", "/no/such.json"], "is not a file"),
    (["--order", "P,KD,Q", "--train-data", "self"], "no train part"),
])
def test_cli_bad_input(argv, message, capsys, tmp_path):
    assert main(["pipeline", "--model", "tiny-random", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "What to do" in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())
