"""Lab 05's pipelines: recipes as data, the six orders, and the mechanism (no gradient reaches packed NF4)."""
import copy
import json
import math
import re

import pytest
import torch

from common.budgets import get_budget
from common.cli import main
from common.errors import WorkshopError
from common.models import load_model
from common.pipeline import (INT4, NF4, ORDERS, QUANTIZE_BEFORE_PRUNE, Distill, KVCache, ModeloptQuantize, WidthPrune,
                             check_recipe, family_rows, final_ppl, pipeline_protocol, quantize_early_gap, recipe_from_file,
                             recipe_from_order, run_orders, run_pipeline, weight_count, weights_reached_by_gradient)
from common.protocol import DataProtocol
from common.quant.kv_cache import KVQuantConfig, head_dim, kv_bits_per_value
from common.quant.qlinear import QuantLinear
from common.verdicts import recorded_run

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


@pytest.mark.parametrize("options, message", [(dict(ce_weight=1.5), "not a weight between 0 and 1"),
                                              (dict(temperature=0.0), "temperature must be positive"),
                                              (dict(lr=0.0), "positive rate"), (dict(steps=0), "trains nothing"),
                                              (dict(engine="x"), "not an engine")])
def test_bad_distill_steps_fail_when_made(options, message):
    with pytest.raises(WorkshopError, match=message):
        Distill(**options)


def test_recipe_files(tmp_path):
    good = tmp_path / "r.json"
    good.write_text(json.dumps([{"step": "P", "mlp": 0.25}, {"step": "KD", "steps": 2}, {"step": "Q", "qat": True}]))
    assert recipe_from_file(good) == [WidthPrune(mlp=0.25), Distill(steps=2), NF4(qat=True)]
    yaml_file = tmp_path / "r.yaml"
    yaml_file.write_text("- step: Q\n  group_size: 32\n")
    assert recipe_from_file(yaml_file) == [NF4(group_size=32)]
    for text, message in [("[{\"step\": ", "does not parse"), ("{}", "non-empty list"),
                          ("[{\"step\": \"Z\"}]", "unknown step"), ("[{\"step\": \"P\", \"heads\": 1}]", "no such option"),
                          ("[{\"step\": \"P\", \"mlp\": 1.5}]", "must be in")]:
        good.write_text(text)
        with pytest.raises(WorkshopError, match=message):
            recipe_from_file(good)


def test_recipe_files_with_the_deployment_steps(tmp_path):
    path = tmp_path / "stack.yaml"
    path.write_text("- {step: KD, engine: modelopt}\n- {step: INT4, group_size: 128, qat: true}\n- {step: P}\n"
                    "- {step: KV, fmt: int4}\n")
    assert recipe_from_file(path) == [Distill(engine="modelopt"), INT4(group_size=128, qat=True), WidthPrune(),
                                      KVCache("int4")]
    path.write_text("- {step: P}\n- {step: MQ, config: INT4_AWQ_CFG}\n- {step: KD, engine: modelopt}\n")
    assert recipe_from_file(path) == [WidthPrune(), ModeloptQuantize("INT4_AWQ_CFG"), Distill(engine="modelopt")]
    for text, message in [("[{step: KV, fmt: int3}]", "not supported"), ("[{step: MQ, config: X}]", "not a configuration"),
                          ("[{step: KD, engine: x}]", "not an engine"), ("[{step: INT4, group_size: 63}]", "even group size")]:
        path.write_text(text)
        with pytest.raises(WorkshopError, match=message):
            recipe_from_file(path)


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


def test_int4_packs_and_a_prune_after_it_repacks_int4(pair):
    model, tokenizer, _ = pair
    pruned, result = run_pipeline(model, tokenizer, [INT4(), WidthPrune()], protocol(), budget=BUDGET, progress=False)
    layers = [m for m in pruned.modules() if isinstance(m, QuantLinear)]
    assert layers and {(m.fmt, m.group_size) for m in layers} == {("int4", 64)}
    assert pruned.config.intermediate_size < model.config.intermediate_size
    assert pruned.model.layers[0].mlp.down_proj.in_features == pruned.config.intermediate_size
    start, quantized, final = result.records
    assert final["stored_bytes"] < quantized["stored_bytes"] < start["stored_bytes"] / 3


def test_int4_qat_trains_through_the_grid_and_packs_at_the_end(pair):
    model, tokenizer, teacher = pair
    recipe = lambda qat: [INT4(group_size=32, symmetric=True, qat=qat), Distill()]  # noqa: E731
    trained, qat = run_pipeline(model, tokenizer, recipe(True), protocol(), teacher=teacher, budget=BUDGET, progress=False)
    _, frozen = run_pipeline(model, tokenizer, recipe(False), protocol(), teacher=teacher, budget=BUDGET, progress=False)
    assert qat.final["weights_reached_by_gradient"] == 1.0 and frozen.final["weights_reached_by_gradient"] < 0.5
    assert {(m.fmt, m.group_size) for m in trained.modules() if isinstance(m, QuantLinear)} == {("int4", 32)}
    assert qat.final["stored_bytes"] == frozen.final["stored_bytes"]


def test_a_trainable_quantizer_commutes_with_pruning(pair):
    model, tokenizer, teacher = pair
    prune = WidthPrune(finetune_steps=0)   # the slicing alone; P's fine-tune trains under the grid or not
    runs = [run_pipeline(model, tokenizer, recipe, protocol(), teacher=teacher, budget=BUDGET, progress=False)[1]
            for recipe in ([NF4(qat=True), prune, Distill()], [prune, NF4(qat=True), Distill()],
                           [NF4(), prune, Distill()])]
    assert runs[0].final["ppl"] == pytest.approx(runs[1].final["ppl"], rel=1e-5)   # P acts on the float weights
    assert runs[2].final["ppl"] != pytest.approx(runs[1].final["ppl"], rel=1e-3)   # packed: the order shows


def test_prune_step_ends_with_a_fine_tune_that_only_moves_float_weights(pair):
    model, tokenizer, _ = pair
    _, plain = run_pipeline(model, tokenizer, [WidthPrune(finetune_steps=2)], protocol(), budget=BUDGET, progress=False)
    _, frozen = run_pipeline(model, tokenizer, [NF4(), WidthPrune(finetune_steps=2)], protocol(), budget=BUDGET,
                             progress=False)
    _, untrained = run_pipeline(model, tokenizer, [WidthPrune(finetune_steps=0)], protocol(), budget=BUDGET,
                                progress=False)
    assert plain.final["weights_reached_by_gradient"] > 0.99 and plain.final["train_tokens"] == 2 * 2 * 32
    assert frozen.final["weights_reached_by_gradient"] < 0.5     # packed codes after Q: only norms and embeddings
    assert "weights_reached_by_gradient" not in untrained.final
    assert plain.final["ppl"] != untrained.final["ppl"]           # the fine-tune trained the pruned model


def most_levels(out: torch.Tensor, axis: str, token_group: int, channels: int) -> int:
    """The most distinct values any quantization group of keys or values `out` [batch, tokens, dim] holds:
    a group is `token_group` tokens of one channel (axis "channel", full groups only) or one token of one
    head (axis "token", `channels` values)."""
    if axis == "channel":
        full = out.shape[1] - out.shape[1] % token_group
        groups = out[:, :full].reshape(out.shape[0], -1, token_group, out.shape[2]).transpose(2, 3)
        groups = groups.reshape(-1, token_group)
    else:
        groups = out.reshape(-1, channels)
    return max(len(group.unique()) for group in groups)


def test_kv_step_quantizes_the_cache_not_the_weights(pair, monkeypatch):
    """After the KV step every weight is as it was, while the keys and values each evaluation attends over
    (what the cache stores) sit on the 2-bit grid: at most 4 levels per group, where the evaluation before
    it saw one per entry; the cache's bits per value are those levels' bits plus the scales' share."""
    model, tokenizer, _ = pair
    config = KVQuantConfig("int2")
    levels = []   # per evaluation: the most levels any group of cached keys or values held
    evaluate = DataProtocol.evaluate

    def evaluate_and_read_the_cache(self, evaluated, *args, **kwargs):
        seen = []
        # registered after the KV step's hooks, so these see the keys and values as the cache holds them
        handles = [module.register_forward_hook(lambda m, i, out, axis=axis: seen.append(
                       most_levels(out.detach(), axis, config.token_group, head_dim(evaluated.config))))
                   for name, module in evaluated.named_modules()
                   for suffix, axis in (("k_proj", config.key_axis), ("v_proj", config.value_axis)) if name.endswith(suffix)]
        try:
            return evaluate(self, evaluated, *args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
            levels.append(max(seen))

    monkeypatch.setattr(DataProtocol, "evaluate", evaluate_and_read_the_cache)
    compressed, result = run_pipeline(model, tokenizer, [KVCache("int2")], protocol(), budget=BUDGET, progress=False)
    start, kv = result.records
    before, after = model.state_dict(), compressed.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert kv["stored_bytes"] == start["stored_bytes"]
    assert levels[1] == 4 < levels[0]   # float keys and values: as many values as a group has entries
    assert start["kv_bits_per_value"] == 16 and kv["kv_bits_per_value"] == kv_bits_per_value(config, head_dim(model.config))
    assert int(kv["kv_bits_per_value"]) == math.ceil(math.log2(levels[1]))


def test_modelopt_qad_trains_through_modelopt_quantizers(pair):
    model, tokenizer, teacher = pair
    trained, result = run_pipeline(model, tokenizer, [ModeloptQuantize(), Distill(engine="modelopt")], protocol(),
                                   teacher=teacher, budget=BUDGET, progress=False)
    start, quantized, final = result.records
    assert final["stage"] == "KD(modelopt)" and final["weights_reached_by_gradient"] > 0.99
    assert final["stored_bytes"] == quantized["stored_bytes"] < start["stored_bytes"] / 3   # the export's size
    assert any(name.endswith("weight_quantizer") for name, _ in trained.named_modules())
    assert all(p.requires_grad for p in teacher.parameters())   # modelopt froze the teacher; it is given back as it came
    with pytest.raises(WorkshopError, match="after a modelopt quantization"):
        run_pipeline(model, tokenizer, [ModeloptQuantize(), WidthPrune()], protocol(), budget=BUDGET, progress=False)


def test_orders_evaluate_the_uncompressed_model_once(pair, monkeypatch):
    model, tokenizer, teacher = pair
    calls = []
    evaluate = DataProtocol.evaluate
    monkeypatch.setattr(DataProtocol, "evaluate", lambda self, *a, **k: calls.append(1) or evaluate(self, *a, **k))
    results = run_orders(model, tokenizer, protocol(), teacher, orders=["P,KD,Q", "KD,P,Q"], budget=BUDGET, progress=False)
    assert len(calls) == 1 + 3 + 3
    assert results[0].records[0] == results[1].records[0] and results[0].records[0] is not results[1].records[0]


@pytest.mark.parametrize("orders, qat", [(["P,KD,Q", "P,Q,KD"], False), (["Q,P,KD", "Q,KD,P"], True)])
def test_orders_that_begin_alike_run_their_first_step_once_and_end_where_they_would_alone(pair, monkeypatch,
                                                                                         orders, qat):
    model, tokenizer, teacher = pair
    alone = run_pipeline(model, tokenizer, recipe_from_order(orders[1], qat), protocol(), teacher=teacher,
                         budget=BUDGET, progress=False)[1]
    calls = []
    evaluate = DataProtocol.evaluate
    monkeypatch.setattr(DataProtocol, "evaluate", lambda self, *a, **k: calls.append(1) or evaluate(self, *a, **k))
    prefixes = {}
    first, second = run_orders(model, tokenizer, protocol(), teacher, orders=orders, qat=qat, budget=BUDGET,
                               progress=False, prefixes=prefixes)
    assert len(calls) == 1 + 3 + 2                    # the first step ran (and was evaluated) once
    assert second.records[1] == first.records[1] | {"shared": True} and "shared" not in second.records[2]
    assert [r["ppl"] for r in second.records] == [r["ppl"] for r in alone.records]
    assert set(prefixes) == {tuple(recipe_from_order(order, qat)[:k]) for order in orders for k in (1, 2)}


def test_a_copy_of_a_qat_model_survives_the_original_leaving_qat(pair):
    from common.quant.nf4 import NF4Config
    from common.quant.qat import copy_model, finish_qat, is_qat, prepare_qat
    model = prepare_qat(copy.deepcopy(pair[0]), NF4Config())
    ids = torch.randint(0, model.config.vocab_size, (1, 8))
    copied = copy_model(model)
    before = copied(ids).logits
    finish_qat(model)
    assert is_qat(copied) and not is_qat(model)
    assert torch.equal(copied(ids).logits, before)


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
    assert out.stat().st_mode & 0o777 == 0o755 and {p.stat().st_mode & 0o777 for p in out.iterdir()} == {0o644}


def test_cli_all_orders_runs_the_six_and_shares_their_first_steps(capsys, monkeypatch):
    import common.budgets
    monkeypatch.setattr(common.budgets, "get_budget", lambda *a, **k: BUDGET)
    assert main(["pipeline", "--model", "tiny-random", "--device", "cpu", "--all-orders", *SMALL, "--json"]) == 0
    results = json.loads(capsys.readouterr().out)["results"]
    assert [r["recipe"] for r in results] == [order.replace(",", "-") for order in ORDERS]
    first_step = {}
    for r in results:
        first_step.setdefault(r["recipe"].split("-")[0], []).append(r["records"][1])
    for step, (ran, reused) in first_step.items():       # each first step ran once, for the first order with it
        assert "shared" not in ran and reused == ran | {"shared": True}, step


def test_cli_runs_the_whole_model_unless_told(tmp_path, capsys, monkeypatch):
    import common.budgets
    monkeypatch.setattr(common.budgets, "get_budget", lambda *a, **k: BUDGET)
    recipe = tmp_path / "kv.json"
    recipe.write_text(json.dumps([{"step": "KV"}]))
    assert main(["pipeline", "--model", "tiny-random", "--device", "cpu", "--recipe", str(recipe), *SMALL,
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["layers"] == load_model("tiny-random", device="cpu")[0].config.num_hidden_layers
    assert out["protocol"]["seqlen"] == 64 and out["protocol"]["calib_seqlen"] == 32   # the options win


def test_cli_layers_cuts_the_model_and_the_teacher(capsys, monkeypatch):
    import common.budgets
    monkeypatch.setattr(common.budgets, "get_budget", lambda *a, **k: BUDGET)
    assert main(["pipeline", "--model", "tiny-random", "--device", "cpu", "--order", "KD,P,Q", "--layers", "1",
                 *SMALL, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    start, *_ = out["results"][0]["records"]
    assert out["layers"] == 1
    full, _ = load_model("tiny-random", device="cpu")
    per_layer = sum(p.numel() for p in full.model.layers[0].parameters())
    assert start["parameters"] == weight_count(full) - per_layer  # one of its two layers left


@pytest.mark.parametrize("argv, message", [
    (["--order", "P,KD,Z"], "unknown step Z"),
    (["--order", "P,KD"], "exactly once"),
    ([], "exactly one of"),
    (["--order", "P,KD,Q", "--all-orders"], "exactly one of"),
    (["--all-orders", "--out", "x"], "six models"),
    (["--recipe", "/no/such.json"], "is not a file"),
    (["--order", "P,KD,Q", "--train-data", "self"], "no train part"),
    (["--recipe", "{recipe_mq}", "--out", "{out}"], "modelopt's own export"),
    (["--order", "P,KD,Q", "--layers", "0"], "at least one decoder layer"),
    (["--order", "P,KD,Q", "--layers", "3", "--out", "{out}"], "has only 2 decoder layers"),
])
def test_cli_bad_input(argv, message, capsys, tmp_path):
    recipe_mq = tmp_path / "mq.json"
    recipe_mq.write_text(json.dumps([{"step": "MQ"}]))
    argv = [a.format(recipe_mq=recipe_mq, out=tmp_path / "out") for a in argv]
    assert main(["pipeline", "--model", "tiny-random", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "What to do" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["mq.json"]



@pytest.mark.parametrize("recipe, message", [
    ([NF4(), NF4()], "step 2 (Q) would quantize weights that step 1 (Q) has already quantized"),
    ([NF4(qat=True), WidthPrune(), INT4()], "step 3 (INT4) would quantize weights that step 1 (Q(QAT))"),
    ([INT4(), KVCache(), Distill(), ModeloptQuantize()], "step 4 (Q(modelopt)) would quantize weights that step 1"),
    ([ModeloptQuantize(), Distill(), WidthPrune()], "step 3 (P) comes after a modelopt quantization (step 1, Q(modelopt))"),
])
def test_a_recipe_that_cannot_run_is_refused_before_its_first_step(recipe, message, pair):
    with pytest.raises(WorkshopError, match=re.escape(message)):
        check_recipe(recipe)
    model, tokenizer, teacher = pair
    with pytest.raises(WorkshopError, match=re.escape(message)):   # the runner checks first, too
        run_pipeline(model, tokenizer, recipe, None, teacher=teacher, budget=BUDGET, progress=False)
    for fine in ([NF4(), WidthPrune(), Distill()], [KVCache(), INT4(qat=True), Distill(), KVCache("int4")],
                 [WidthPrune(), ModeloptQuantize(), Distill(engine="modelopt")]):
        assert check_recipe(fine) == fine


def refuse_to_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the input was checked")


def test_cli_refuses_a_recipe_that_cannot_run_before_loading_the_model(tmp_path, capsys, monkeypatch):
    # `[Q, Q]` used to fail only after step 1 ("no quantized linear layers to pack ... Quantize it first")
    import common.models
    monkeypatch.setattr(common.models, "load_model", refuse_to_load)
    recipe = tmp_path / "qq.json"
    recipe.write_text(json.dumps([{"step": "Q"}, {"step": "Q"}]))
    assert main(["pipeline", "--model", "tiny-random", "--recipe", str(recipe), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"--recipe {recipe}: step 2 (Q) would quantize weights that step 1 (Q) has already quantized" in err
    assert "What to do" in err and "Traceback" not in err and "Quantize it first" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["qq.json"]


@pytest.mark.parametrize("existing", ["file", "folder"])
def test_cli_checks_out_before_loading_the_model_and_overwrites_nothing(existing, tmp_path, capsys, monkeypatch):
    import common.models
    monkeypatch.setattr(common.models, "load_model", refuse_to_load)
    out = tmp_path / "out"
    if existing == "file":
        out.write_text("keep me")
    else:
        out.mkdir()
        (out / "keep.txt").write_text("keep me")
    assert main(["pipeline", "--model", "tiny-random", "--order", "P,KD,Q", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"--out {out} exists" in err and "Nothing was overwritten" in err and "Traceback" not in err
    assert (out.read_text() if existing == "file" else (out / "keep.txt").read_text()) == "keep me"
    assert main(["pipeline", "--model", "tiny-random", "--order", "P,KD,Q", "--out", str(tmp_path / "no" / "out")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "no").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]   # no probe file, no partial model left behind

def test_the_pipeline_protocol_follows_the_pipeline_budget():
    for mode in ("quick", "full", "smoke"):
        budget = get_budget(mode)
        protocol = pipeline_protocol(budget)
        assert (protocol.seqlen, protocol.max_windows) == (budget.pipeline_eval_seqlen, budget.pipeline_eval_windows)
        assert protocol.calib_samples == min(budget.calib_samples, budget.train_batch)
        assert protocol.calib_seqlen == min(budget.calib_seqlen, budget.train_seqlen)
    full, budget = pipeline_protocol(get_budget("full")), get_budget("full")
    assert (full.calib_samples, full.calib_seqlen, full.max_windows) == (budget.calib_samples, budget.calib_seqlen, None)
    assert pipeline_protocol(get_budget("quick"), max_windows=5, calib_seqlen=64).max_windows == 5
    assert pipeline_protocol(get_budget("quick"), calib_seqlen=64).calib_seqlen == 64


def test_final_perplexities_are_read_from_this_run_or_the_recorded_one(pair):
    recorded = recorded_run("05_ordering")
    packed, qat = (final_ppl(recorded.rows, family) for family in ("packed NF4", "QAT"))
    assert set(packed) == set(qat) == {order.replace(",", "-") for order in ORDERS}
    assert packed["P-KD-Q"] == qat["P-KD-Q"] == recorded.value("PPL wiki, P-KD-Q (packed NF4)")
    assert qat["Q-P-KD"] == recorded.value("PPL wiki, Q(QAT)-P-KD (QAT)")
    gap = quantize_early_gap(packed)
    assert gap == pytest.approx(sum(packed[o] for o in QUANTIZE_BEFORE_PRUNE) / 3 - packed["P-KD-Q"])
    assert 1 - quantize_early_gap(qat) / gap == pytest.approx(recorded.value("quantize-before-prune gap removed by "
                                                                             "QAT, wiki"))
    model, tokenizer, teacher = pair
    live = run_orders(model, tokenizer, protocol(), teacher, orders=["Q,P,KD"], qat=True, budget=BUDGET, progress=False)
    rows = family_rows(live, "QAT")
    assert set(rows) == {"PPL wiki, Q(QAT)-P-KD (QAT)", "PPL python-docs, Q(QAT)-P-KD (QAT)"}
    assert final_ppl(rows, "QAT", "python-docs") == {"Q-P-KD": live[0].final["ppl"]["python-docs"]}
    assert final_ppl(rows, "packed NF4") == {}


def test_the_quick_pipelines_start_within_2x_of_workshop_eval(embedded):
    # issue 33's target, its cheap half: the model every quick pipeline starts from is the whole model, and its
    # perplexity under the pipeline's short windows stays within 2x of `workshop eval`'s (the end, within 5x after
    # P-KD-Q, needs a minute of training: lab 05 prints it as a verdict)
    model, tokenizer = embedded
    quick = get_budget("quick")
    start = pipeline_protocol(quick, eval_data=["wiki"]).evaluate(model, tokenizer, progress=False)["wiki"].ppl
    whole = DataProtocol.for_budget(quick, eval_data=["wiki"]).evaluate(model, tokenizer, progress=False)["wiki"].ppl
    assert model.config.num_hidden_layers == 30 and whole / 2 < start < 2 * whole
