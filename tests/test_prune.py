"""Pruning: masks, one-shot methods, width / depth / low rank, the command line, and bad input."""
import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from common.errors import WorkshopError
from common.sizes import stored_bytes
from common.models import load_model, save_pretrained_atomic, tiny_random
from common.prune.depth import DepthPruneConfig, prune_depth
from common.prune.lowrank import LowRankConfig, factorize, factorized_linear, prune_lowrank
from common.calibration import (decoder_layers, first_layer_inputs, linear_input_grams, linear_layers,
                                relative_output_error)
from common.prune.magnitude import MagnitudeConfig, prune_magnitude
from common.prune.masks import (mask_from_scores, masks_from_zeros, nm_boundary_ties, nm_mask, parse_pattern,
                                sparsity_of, unstructured_mask)
from common.prune.modelopt_sparsity import ModeloptSparsityConfig, prune_modelopt
from common.prune.row_sparsity import mask_with_row_counts, row_output_energy, row_prune_counts, trim_row_counts
from common.prune.sparsegpt import SparseGPTConfig, prune_sparsegpt, sparsegpt_weight
from common.prune.wanda import WandaConfig, prune_wanda, wanda_scores
from common.prune.width import (WidthPruneConfig, adaptive_keep_counts, loss_gradient_products, mlp_widths,
                                prune_width, taylor_importance)


def fresh_tiny(num_layers: int = 2):
    return tiny_random(num_layers=num_layers)


@pytest.fixture(scope="module")
def calib():
    torch.manual_seed(0)
    return torch.randint(0, 384, (4, 48))


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def groups_nonzero(weight: torch.Tensor, m: int) -> torch.Tensor:
    return (weight != 0).reshape(weight.size(0), -1, m).sum(-1)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_mask_keeps_exactly_n_largest_per_group(n, m):
    scores = torch.rand(16, 64)
    keep = nm_mask(scores, n, m)
    assert (keep.reshape(16, -1, m).sum(-1) == n).all()
    kept_min = torch.where(keep, scores, torch.inf).reshape(16, -1, m).amin(-1)
    dropped_max = torch.where(keep, -torch.inf, scores).reshape(16, -1, m).amax(-1)
    assert (kept_min > dropped_max).all()  # the kept ones are the largest of their group


@pytest.mark.parametrize("prune,config_type", [(prune_magnitude, MagnitudeConfig), (prune_wanda, WandaConfig),
                                               (prune_sparsegpt, SparseGPTConfig)])
def test_model_pruning_24_has_two_nonzeros_per_group_of_four(prune, config_type, calib):
    model, _ = fresh_tiny(num_layers=1)
    prune(model, config_type(pattern="2:4"), calib, progress=False)
    for module in model.model.layers.modules():
        if isinstance(module, torch.nn.Linear):
            assert (groups_nonzero(module.weight, 4) == 2).all()
    assert sparsity_of(model) == pytest.approx(0.5)


def test_unstructured_sparsity_is_exact(calib):
    model, _ = fresh_tiny()
    prune_wanda(model, WandaConfig(sparsity=0.6), calib, progress=False)
    assert sparsity_of(model) == pytest.approx(0.6, abs=0.01)


def correlated_layer(seed=0, n=2048, d_in=128, d_out=64):
    """Inputs with correlated channels of very different scales, as LLM activations have."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g) @ torch.randn(d_in, d_in, generator=g) * torch.linspace(0.2, 3, d_in)
    return x, torch.randn(d_out, d_in, generator=g)


@pytest.mark.parametrize("sparsity,nm", [(0.5, None), (0.7, None), (0.5, (2, 4))])
def test_sparsegpt_beats_wanda_beats_magnitude_on_correlated_inputs(sparsity, nm):
    x, w = correlated_layer()
    gram = x.T @ x / x.size(0)
    magnitude = w * mask_from_scores(w.abs(), sparsity, nm, per_row=False)
    wanda = w * mask_from_scores(wanda_scores(w, gram), sparsity, nm, per_row=True)
    sparsegpt = sparsegpt_weight(w, gram, sparsity, nm)
    errors = [relative_output_error(x, w, p) for p in (sparsegpt, wanda, magnitude)]
    assert (sparsegpt == 0).float().mean() == pytest.approx(sparsity, abs=0.01)
    assert errors[0] < errors[1] <= errors[2], errors


def test_sparsegpt_at_zero_sparsity_keeps_the_layer():
    x, w = correlated_layer()
    assert torch.allclose(sparsegpt_weight(w, x.T @ x / x.size(0), 0.0), w, atol=1e-4)


def test_magnitude_24_matches_modelopt_sparse_magnitude_when_there_are_no_ties(tiny):
    """Both keep the two largest |w| of every group of four; they can differ only where the 2nd and 3rd
    largest are equal (which the embedded Q4_1 checkpoint has often, random weights never)."""
    model, _ = tiny
    assert not any(nm_boundary_ties(linear.weight.abs(), 2, 4).any()
                   for layer in decoder_layers(model) for linear in linear_layers(layer).values())
    ours = prune_magnitude(copy.deepcopy(model), MagnitudeConfig(pattern="2:4"))
    theirs = prune_modelopt(copy.deepcopy(model), ModeloptSparsityConfig(mode="sparse_magnitude"), progress=False)
    for our_layer, their_layer in zip(decoder_layers(ours), decoder_layers(theirs)):
        their_linears = linear_layers(their_layer)
        assert sorted(their_linears) == sorted(linear_layers(our_layer))
        for name, linear in linear_layers(our_layer).items():
            assert torch.equal(linear.weight == 0, their_linears[name].weight == 0), name


def test_nm_boundary_ties():
    scores = torch.tensor([[4.0, 1.0, 2.0, 2.0, 3.0, 1.0, 2.0, 0.5]])
    assert nm_boundary_ties(scores, 2, 4).tolist() == [[True, False]]


def test_tie_break_seed_moves_only_tied_groups():
    model, _ = fresh_tiny(num_layers=1)
    with torch.no_grad():  # weights on a grid of 9 levels, as a low-bit checkpoint's: many ties
        for linear in linear_layers(decoder_layers(model)[0]).values():
            linear.weight.copy_((4 * linear.weight / linear.weight.abs().max()).round())
    masks = {}
    for seed in (None, 0, 0, 1):
        pruned = prune_magnitude(copy.deepcopy(model), MagnitudeConfig(pattern="2:4", tie_break_seed=seed))
        masks.setdefault(seed, []).append({name: linear.weight_mask for name, linear in
                                           linear_layers(decoder_layers(pruned)[0]).items()})
    assert all(torch.equal(masks[0][0][k], masks[0][1][k]) for k in masks[0][0])  # a seed repeats itself
    for name, linear in linear_layers(decoder_layers(model)[0]).items():
        ties = nm_boundary_ties(linear.weight.abs(), 2, 4)
        for a, b in ((None, 0), (0, 1)):
            moved = (masks[a][0][name] != masks[b][0][name]).reshape(ties.shape + (4,)).any(-1)
            assert moved.any() and not (moved & ~ties).any(), name


def test_row_prune_counts_keep_the_total_and_spare_high_scores():
    scores = torch.rand(64, generator=torch.Generator().manual_seed(0))
    counts = row_prune_counts(scores, 0.7, 0.1, 100)
    assert int(counts.sum()) == round(0.7 * 64 * 100)  # the matrix's sparsity is exactly the target
    assert (counts[scores.argsort()].diff() <= 0).all()  # a higher score never loses more weights
    assert counts.max() - counts.min() >= 19 and 60 <= counts.min() and counts.max() <= 80
    assert (row_prune_counts(scores, 0.7, 0.0, 100) == 70).all()
    assert (row_prune_counts(scores, 0.05, 0.1, 100) >= 0).all()  # the spread narrows near 0
    scores = torch.rand(64, 100)
    keep = mask_with_row_counts(scores, counts)
    assert torch.equal((~keep).sum(1), counts)
    assert (torch.where(keep, scores, torch.inf).amin(1) > torch.where(keep, -torch.inf, scores).amax(1)).all()


def test_row_output_energy_is_the_mean_squared_output():
    x, w = correlated_layer()
    assert torch.allclose(row_output_energy(w, x.T @ x / x.size(0)), (x @ w.T).pow(2).mean(0), rtol=1e-4)


@pytest.mark.parametrize("prune,config_type", [(prune_wanda, WandaConfig), (prune_sparsegpt, SparseGPTConfig)])
def test_row_spread_keeps_the_mean_and_spares_the_largest_outputs(prune, config_type, calib):
    model, _ = fresh_tiny(num_layers=1)
    dense = copy.deepcopy(model)
    prune(model, config_type(sparsity=0.7, row_spread=0.1), calib, progress=False)
    grams = linear_input_grams(decoder_layers(dense)[0], *first_layer_inputs(dense, calib))
    dense_linears = linear_layers(decoder_layers(dense)[0])
    for name, linear in linear_layers(decoder_layers(model)[0]).items():
        weight, zeros = dense_linears[name].weight, (linear.weight == 0).sum(1)
        assert abs(int(zeros.sum()) - 0.7 * weight.numel()) <= 1
        assert zeros.min() >= 0.6 * weight.size(1) - 1 and zeros.max() <= 0.8 * weight.size(1) + 1
        energy = row_output_energy(weight, grams[name])
        assert (zeros[energy.argsort()].diff() <= 0).all(), name  # a larger output never loses more weights


def test_sparsegpt_row_counts_are_exact_and_it_still_repairs():
    x, w = correlated_layer()
    gram = x.T @ x / x.size(0)
    counts = trim_row_counts(w, gram, 0.7, 0.1)
    in_blocks = sparsegpt_weight(w, gram, 0.7, row_counts=counts, block_size=32)
    assert torch.equal((in_blocks == 0).sum(1), counts)  # each block's share adds up to the row's count
    repaired = sparsegpt_weight(w, gram, 0.7, row_counts=counts)
    wanda = w * mask_with_row_counts(wanda_scores(w, gram), counts)
    assert relative_output_error(x, w, repaired) < relative_output_error(x, w, wanda)


@pytest.mark.parametrize("prune,config_type", [(prune_wanda, WandaConfig), (prune_sparsegpt, SparseGPTConfig)])
def test_row_spread_off_is_the_uniform_method(prune, config_type, calib):
    model, _ = fresh_tiny(num_layers=1)
    dense = copy.deepcopy(model)
    prune(model, config_type(sparsity=0.6), calib, progress=False)
    grams = linear_input_grams(decoder_layers(dense)[0], *first_layer_inputs(dense, calib))
    dense_linears = linear_layers(decoder_layers(dense)[0])
    for name, linear in linear_layers(decoder_layers(model)[0]).items():
        weight = dense_linears[name].weight
        if prune is prune_wanda:
            expected = weight * unstructured_mask(wanda_scores(weight, grams[name]), 0.6, per_row=True)
        else:
            expected = sparsegpt_weight(weight, 2 * grams[name], 0.6)   # H = 2 X^T X / n
        assert torch.equal(linear.weight, expected), name


def test_masks_stay_through_training_and_are_stored_only_when_asked(calib, tmp_path):
    model, _ = fresh_tiny()
    dense_bytes = stored_bytes(model)
    prune_magnitude(model, MagnitudeConfig(pattern="2:4", store_masks=True))
    masked_weights = sum(m.weight.numel() for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear))
    assert stored_bytes(model) - dense_bytes == masked_weights // 8  # one bit per weight
    model.train()
    torch.optim.SGD(model.parameters(), lr=1.0).zero_grad()
    model(calib, labels=calib).loss.backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()  # the update touches pruned weights ...
    model(calib)  # ... and the next forward re-applies the masks
    assert sparsity_of(model) == pytest.approx(0.5)

    model2, _ = fresh_tiny()
    prune_magnitude(model2, MagnitudeConfig(pattern="2:4"))
    assert stored_bytes(model2) == dense_bytes  # masks not stored: zeros alone
    model2.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert masks_from_zeros(loaded) == 14 and sparsity_of(loaded) == pytest.approx(0.5)


@pytest.mark.parametrize("importance", ["activation", "magnitude", "taylor"])
def test_width_pruning_zero_channels_keeps_outputs(importance, calib):
    model, _ = fresh_tiny()
    dead = torch.arange(0, 512, 4)  # 128 of 512 channels never fire
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight[dead] = 0
            layer.mlp.up_proj.weight[dead] = 0
            layer.mlp.down_proj.weight[:, dead] = 0
            for head in (1, 3):  # one query head in each key/value group contributes nothing
                layer.self_attn.q_proj.weight[head * 64: (head + 1) * 64] = 0
                layer.self_attn.o_proj.weight[:, head * 64: (head + 1) * 64] = 0
    before = logits(model, calib)
    heads = importance != "activation"  # (activation: a dead query head still reads its group's values)
    config = WidthPruneConfig(mlp_fraction=0.25, heads_fraction=0.5 if heads else 0.0, importance=importance,
                              round_to=8)
    prune_width(model, config, calib, progress=False)
    assert model.model.layers[0].mlp.gate_proj.out_features == 384 == model.config.intermediate_size
    if heads:
        assert model.config.num_attention_heads == 2 and model.config.num_key_value_heads == 2
    assert torch.allclose(logits(model, calib), before, atol=1e-5)


def test_taylor_scores_are_the_first_order_loss_change_summed_element_wise(calib):
    model, _ = tiny_random(num_layers=1, dtype=torch.float64)
    mlp = model.model.layers[0].mlp
    weights = [mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight]
    grads = torch.autograd.grad(model(calib, labels=calib).loss, weights)  # the whole batch in one pass
    products = [g * w for g, w in zip(grads, weights)]
    element_wise = products[0].abs().sum(1) + products[1].abs().sum(1) + products[2].abs().sum(0)
    scores, _ = taylor_importance(model, calib, 64, mlp=True, heads=False)  # GRAD_CHUNK sequences a pass
    assert torch.allclose(scores[0].double(), element_wise, rtol=1e-5)
    assert all(p.grad is None and p.requires_grad for p in model.parameters())  # the model is left as it was

    def loss_with_channel_scaled(channel, factor):
        scaled = copy.deepcopy(model)
        with torch.no_grad():
            for linear, dim in ((scaled.model.layers[0].mlp.gate_proj, 0), (scaled.model.layers[0].mlp.up_proj, 0),
                                (scaled.model.layers[0].mlp.down_proj, 1)):
                linear.weight.select(dim, channel).mul_(factor)
            logits = scaled(calib).logits  # (its own loss would be computed in float32: too coarse here)
            return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), calib[:, 1:].flatten())

    names = [f"model.layers.0.mlp.{part}.weight" for part in ("gate_proj", "up_proj", "down_proj")]
    signed = loss_gradient_products(model, calib, names)
    for channel in (0, 7, 300):  # d/dt L(channel's weights x t) at t = 1, by central differences
        eps = 1e-2  # (RMSNorm computes in float32 even in a float64 model: a smaller step meets its rounding)
        slope = (loss_with_channel_scaled(channel, 1 + eps) - loss_with_channel_scaled(channel, 1 - eps)) / (2 * eps)
        first_order = signed[names[0]][channel].sum() + signed[names[1]][channel].sum() + signed[names[2]][:, channel].sum()
        assert float(first_order) == pytest.approx(float(slope), rel=1e-3)


def test_adaptive_counts_keep_the_total_in_blocks_and_follow_the_scores():
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(512, generator=g) * scale for scale in (1.0, 4.0, 0.25, 1.0)]
    counts = adaptive_keep_counts(scores, 360, 8)
    assert sum(counts) == 4 * 360 and all(c % 8 == 0 and 180 <= c <= 512 for c in counts)
    assert counts[1] > counts[0] > counts[2] and counts[2] == 184  # the quiet layer keeps only its floor
    kept = sum(s.topk(c).values.sum() for s, c in zip(scores, counts))
    assert kept > sum(s.topk(360).values.sum() for s in scores)  # more of the score than uniform keeps
    assert adaptive_keep_counts([torch.ones(512)] * 3, 360, 8) == [360] * 3  # equal layers: uniform


def test_adaptive_width_keeps_the_uniform_parameter_count_and_round_trips(calib, tmp_path):
    uniform, _ = fresh_tiny()
    adaptive, tokenizer = fresh_tiny()
    dense_parameters = sum(p.numel() for p in uniform.parameters())
    prune_width(uniform, WidthPruneConfig(mlp_fraction=0.3, importance="taylor"), calib)
    prune_width(adaptive, WidthPruneConfig(mlp_fraction=0.3, importance="taylor", allocation="adaptive"), calib)
    parameters = sum(p.numel() for p in adaptive.parameters())
    assert parameters == sum(p.numel() for p in uniform.parameters()) < dense_parameters
    widths = mlp_widths(adaptive)
    assert len(set(widths)) == 2 and sum(widths) == 2 * uniform.config.intermediate_size
    save_pretrained_atomic(adaptive, tokenizer, tmp_path / "pruned")
    loaded, _ = load_model(str(tmp_path / "pruned"), device="cpu")
    assert mlp_widths(loaded) == widths
    assert torch.allclose(logits(loaded, calib), logits(adaptive, calib), atol=1e-5)
    with pytest.raises(RuntimeError, match="mismatch"):  # one intermediate_size cannot describe it
        AutoModelForCausalLM.from_pretrained(tmp_path / "pruned")


@pytest.mark.parametrize("granularity,heads,kv", [("query", 2, 2), ("group", 2, 1)])
def test_width_pruned_model_round_trips(granularity, heads, kv, calib, tmp_path):
    model, _ = fresh_tiny()
    prune_width(model, WidthPruneConfig(mlp_fraction=0.3, heads_fraction=0.5, head_granularity=granularity),
                calib, progress=False)
    assert (model.config.intermediate_size % 8, model.config.num_attention_heads,
            model.config.num_key_value_heads) == (0, heads, kv)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.model.layers[1].self_attn.q_proj.out_features == heads * 64
    assert torch.allclose(logits(loaded, calib), logits(model, calib), atol=1e-5)


def test_depth_pruning_drops_least_important_layers_and_round_trips(calib, tmp_path):
    model, _ = fresh_tiny(num_layers=4)
    with torch.no_grad():  # layer 2 adds nothing to the residual stream: importance 0
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    prune_depth(model, DepthPruneConfig(layers_removed=1), calib, progress=False)
    assert model.config.num_hidden_layers == 3 and model.removed_layers == [2]
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.allclose(logits(loaded, calib), logits(model, calib), atol=1e-5)
    out = loaded.generate(calib[:1, :8], max_new_tokens=4, do_sample=False)  # KV cache slots renumbered
    assert out.shape == (1, 12)


@pytest.mark.parametrize("aware", [False, True])
def test_svd_at_full_rank_reproduces_the_layer(aware):
    x, w = correlated_layer(d_in=64, d_out=48)
    layer = torch.nn.Linear(64, 48)
    layer.weight.data.copy_(w)
    u, s, vh = factorize(w, x.T @ x / x.size(0) if aware else None, damp=0.0)
    factored = factorized_linear(layer, s[:, None] * vh, u)
    with torch.no_grad():
        assert torch.allclose(factored(x), layer(x), atol=1e-3 * layer(x).abs().max())


def test_activation_aware_svd_beats_plain_at_equal_rank():
    x, w = correlated_layer()
    gram = x.T @ x / x.size(0)
    errors = []
    for g in (None, gram):
        u, s, vh = factorize(w, g)
        errors.append(relative_output_error(x, w, u[:, :16] @ (s[:16, None] * vh[:16])))
    assert errors[1] < errors[0]


def test_lowrank_model_has_fewer_parameters(calib):
    model, _ = fresh_tiny()
    before = sum(p.numel() for p in model.model.layers.parameters())
    prune_lowrank(model, LowRankConfig(param_fraction=0.5, targets="mlp"), calib, progress=False)
    after = sum(p.numel() for p in model.model.layers.parameters())
    mlp = 3 * 256 * 512 * 2
    assert after == pytest.approx(before - mlp / 2, rel=0.01)


@pytest.mark.parametrize("make", [
    lambda m, c: prune_magnitude(m, MagnitudeConfig(sparsity=1.0)),
    lambda m, c: prune_wanda(m, WandaConfig(sparsity=-0.1), c, progress=False),
    lambda m, c: prune_magnitude(m, MagnitudeConfig(pattern="4:2")),
    lambda m, c: nm_mask(torch.rand(4, 30), 2, 4),
    lambda m, c: prune_magnitude(m, MagnitudeConfig(pattern="3:7")),  # 256 inputs are not a multiple of 7
    lambda m, c: prune_width(m, WidthPruneConfig(mlp_fraction=0.0, heads_fraction=0.9), c),
    lambda m, c: prune_width(m, WidthPruneConfig(mlp_fraction=1.0), c),
    lambda m, c: prune_width(m, WidthPruneConfig(mlp_fraction=0.3), None),
    lambda m, c: prune_depth(m, DepthPruneConfig(layers_removed=2), c),
    lambda m, c: prune_lowrank(m, LowRankConfig(param_fraction=1.5), c),
    lambda m, c: prune_wanda(m, WandaConfig(pattern="2:4", row_spread=0.1), c, progress=False),
    lambda m, c: prune_wanda(m, WandaConfig(per_row=False, row_spread=0.1), c, progress=False),
    lambda m, c: prune_sparsegpt(m, SparseGPTConfig(row_spread=0.5), c, progress=False),
])
def test_bad_input_raises_a_clear_workshop_error(make, calib):
    model, _ = fresh_tiny()
    before = logits(model, calib)
    with pytest.raises(WorkshopError) as error:
        make(model, calib)
    assert error.value.fix  # says what to do
    assert torch.equal(logits(model, calib), before)  # and nothing was half-pruned


def test_parse_pattern():
    assert parse_pattern(" 2:4 ") == (2, 4)


def test_prune_command_writes_a_loadable_checkpoint(tmp_path, capsys):
    from common.cli import build_parser
    parser = build_parser()
    out = tmp_path / "pruned"
    args = parser.parse_args(["prune", "--model", "tiny-random", "--device", "cpu", "--method", "width",
                              "--sparsity", "0.25", "--out", str(out), "--json"])
    result = args.run(args).result
    assert result["config_after"]["intermediate_size"] == 384
    assert result["parameters_after"] < result["parameters_before"]
    model, _ = load_model(str(out), device="cpu")
    assert model.config.intermediate_size == 384
    args = parser.parse_args(["prune", "--model", "tiny-random", "--device", "cpu", "--method", "width", "--sparsity",
                              "0.25", "--importance", "taylor", "--allocation", "adaptive", "--calib-samples", "4",
                              "--calib-seqlen", "64", "--json"])
    result = args.run(args).result
    assert sum(result["mlp_widths"]) == 2 * 384 and result["config_after"]["intermediate_size"] == max(result["mlp_widths"])
    bad = parser.parse_args(["prune", "--model", "tiny-random", "--method", "width", "--pattern", "2:4"])
    with pytest.raises(WorkshopError):
        bad.run(bad)


def _lab03_run_calls() -> dict:
    """{name: (function name, config)} of every run("name", function, Config(...)) in lab 03."""
    from common.prune import magnitude, modelopt_sparsity, sparsegpt, wanda
    from conftest import lab_run_calls
    return lab_run_calls("solutions/03_pruning_and_low_rank.ipynb", (magnitude, modelopt_sparsity, sparsegpt, wanda,))


def test_cli_table_is_the_labs_own_list():
    from common.prune.presets import lab03_table
    table = {name: (prune.__name__, config) for name, prune, config in lab03_table()}
    assert table == _lab03_run_calls()
    assert list(table) == list(_lab03_run_calls())  # same order


def test_cli_table_runs_every_row(capsys, monkeypatch):
    import common.budgets
    from common.cli import build_parser
    from common.prune.presets import lab03_table
    small = common.budgets.get_budget("quick", sweep_eval_windows=1, eval_seqlen=64, calib_samples=2, calib_seqlen=64)
    monkeypatch.setattr(common.budgets, "get_budget", lambda *a, **k: small)
    args = build_parser().parse_args(["prune", "--model", "tiny-random", "--device", "cpu", "--table", "lab03",
                                      "--json"])
    result = args.run(args).result
    assert [row["method"] for row in result["rows"]] == ["dense"] + [name for name, _, _ in lab03_table()]
    assert result["rows"][0]["zeros"] == 0
    assert all(row["zeros"] == pytest.approx(0.5, abs=0.01) and min(row["ppl"].values()) > 1
               for row in result["rows"][1:])
    assert list(result["protocol"]) == ["wiki", "python-docs"]
    assert all("seqlen=64, windows=1" in protocol for protocol in result["protocol"].values())


@pytest.mark.parametrize("argv", [["--table", "lab03", "--method", "wanda"], ["--table", "lab03", "--sparsity", "0.7"],
                                  []])
def test_cli_table_and_method_are_one_or_the_other(argv):
    from common.cli import build_parser
    args = build_parser().parse_args(["prune", "--model", "tiny-random", *argv])
    with pytest.raises(WorkshopError) as error:
        args.run(args)
    assert error.value.fix


def test_sensitivity_settings_default_to_the_default_text(tiny):
    from common.eval import perplexity
    from common.prune.sensitivity import EvalSettings, evaluate
    model, tokenizer = tiny
    settings = EvalSettings(seqlen=32, max_windows=1)
    assert evaluate(model, tokenizer, settings) == perplexity(model, tokenizer, "wiki", 32, 1, progress=False).ppl
