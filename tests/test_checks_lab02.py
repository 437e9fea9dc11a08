"""Lab 02's checkers hand back the reference for the unsolved stub and reject a plausible wrong answer.

The layer is synthetic (correlated inputs, as a real layer's are), small enough to run in a second;
the notebook checks the same functions on a layer of the embedded model."""
import pytest
import torch

from common.checks import ExerciseFailed
from common.checks.lab02 import check_gptq_layer, check_protect_salient, check_search_scale
from common.quant.formats import dequantize_int, fake_quant_int, int_scale_zero, quantize_int
from conftest import unsolved_function   # an exercise left open: the stub labs/ hands the learner

BITS, GROUP = 3, 32


def correlated_inputs(tokens: int, width: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(width // 4, width, generator=torch.Generator().manual_seed(0))
    scales = torch.ones(width)
    scales[:3] = 8.0                                # a few channels with large activations, as in a real layer
    return (torch.randn(tokens, width // 4, generator=generator) @ mixing
            + 0.3 * torch.randn(tokens, width, generator=generator)) * scales


@pytest.fixture(scope="module")
def layer():
    weight = torch.randn(48, 128, generator=torch.Generator().manual_seed(1)) * 0.05
    calib = correlated_inputs(2048, 128, seed=2)
    held_out = {"same text": correlated_inputs(1024, 128, seed=3)}
    return weight, 2 * calib.T @ calib / calib.shape[0], held_out, calib


def gptq_loop(W, H, bits, group_size, sign=1.0, feedback=True, factor_of="inverse", pivot_power=1, window=None):
    """The exercise's solution, with switches for the wrong answers a learner might write."""
    W = W.clone().float()
    n = W.shape[1]
    H = H + 0.01 * H.diagonal().mean() * torch.eye(n)
    U = torch.linalg.cholesky(torch.linalg.inv(H) if factor_of == "inverse" else H, upper=True)
    Q = torch.zeros_like(W)
    group = group_size or n
    for i in range(n):
        if i % group == 0:
            scale, zero = int_scale_zero(W[:, i:i + group], bits, symmetric=False)
        q = dequantize_int(quantize_int(W[:, i:i + 1], scale, zero, bits, False), scale, zero)[:, 0]
        Q[:, i] = q
        if feedback:
            err = (W[:, i] - q) / U[i, i] ** pivot_power
            end = n if window is None else i + 1 + window
            W[:, i:end] -= sign * torch.outer(err, U[i, i:end])
    return Q


def test_gptq_layer_solution_passes_and_the_stub_gets_the_library_gptq(layer, capsys):
    weight, H, held_out, _ = layer
    answer = check_gptq_layer(gptq_loop, weight, H, held_out, BITS, GROUP)
    assert answer.shape == weight.shape and "PASS" in capsys.readouterr().out
    reference = check_gptq_layer(unsolved_function, weight, H, held_out, BITS, GROUP)
    assert "NOT SOLVED YET" in capsys.readouterr().out
    # the library rounds each scale to the 16 bits it is stored in: a few values land one step apart
    assert ((reference - answer).abs() > 1e-4).float().mean() < 0.02


@pytest.mark.parametrize("wrong", [
    dict(feedback=False),                # rounds to nearest: no error feedback at all
    dict(sign=-1.0),                     # pushes the error the wrong way
    dict(factor_of="hessian"),           # the Cholesky factor of H instead of H^-1
    dict(pivot_power=2),                 # err / H^-1[i, i] with U's row: the two forms of the update mixed
    dict(window=1),                      # the error pushed onto the next column only
], ids=["no feedback", "wrong sign", "factor of H", "pivot squared", "next column only"])
def test_gptq_layer_rejects_plausible_wrong_loops(layer, wrong):
    weight, H, held_out, _ = layer
    with pytest.raises(ExerciseFailed):
        check_gptq_layer(lambda W, H, b, g: gptq_loop(W, H, b, g, **wrong), weight, H, held_out, BITS, GROUP)


def protect(weight, act_mean, fraction, bits, group_size, scale=None, largest=True, rows=False, divide_back=True):
    k = max(1, round(fraction * act_mean.numel()))
    channels = act_mean.topk(k, largest=largest).indices
    weight = weight.float()
    if scale is None:
        w_hat = fake_quant_int(weight, bits, group_size, symmetric=False)
        if rows:
            w_hat[channels] = weight[channels]
        else:
            w_hat[:, channels] = weight[:, channels]
        return w_hat
    s = torch.ones(weight.shape[1])
    s[channels] = scale
    w_hat = fake_quant_int(weight * s, bits, group_size, symmetric=False)
    return w_hat / s if divide_back else w_hat


def test_protect_salient_solution_passes_and_the_stub_gets_the_reference(layer, capsys):
    weight, _, _, calib = layer
    act_mean = calib.abs().mean(dim=0)
    assert check_protect_salient(protect, weight, act_mean, BITS, GROUP) is protect
    reference = check_protect_salient(unsolved_function, weight, act_mean, BITS, GROUP)
    assert "NOT SOLVED YET" in capsys.readouterr().out
    assert torch.equal(reference(weight, act_mean, 0.01, BITS, GROUP), protect(weight, act_mean, 0.01, BITS, GROUP))


@pytest.mark.parametrize("wrong", [dict(largest=False), dict(rows=True), dict(divide_back=False)],
                         ids=["smallest channels", "rows not columns", "not scaled back"])
def test_protect_salient_rejects_plausible_wrong_answers(layer, wrong):
    weight, _, _, calib = layer
    act_mean = calib.abs().mean(dim=0)
    with pytest.raises(ExerciseFailed):
        check_protect_salient(lambda *a, **k: protect(*a, **k, **wrong), weight, act_mean, BITS, GROUP)


def search(weights, x, bits, group_size, direction=1.0, criterion="output"):
    x_mean = x.abs().float().mean(dim=0)
    best, best_s = float("inf"), torch.ones_like(x_mean)
    for alpha in [i / 5 for i in range(5)]:
        s = x_mean.pow(direction * alpha).clamp(min=1e-4)
        w_hats = [fake_quant_int(w.float() * s, bits, group_size, symmetric=False) / s for w in weights]
        if criterion == "output":
            error = sum(float(((x @ (w - w_hat).T) ** 2).sum()) for w, w_hat in zip(weights, w_hats))
        else:
            error = sum(float(((w - w_hat) ** 2).sum()) for w, w_hat in zip(weights, w_hats))
        if error < best:
            best, best_s = error, s
    return best_s


def test_search_scale_solution_passes_and_the_stub_gets_the_reference(layer, capsys):
    weight, _, _, calib = layer
    weights = [weight, weight.flip(0)]
    assert check_search_scale(search, weights, calib[:512], BITS, GROUP) is search
    reference = check_search_scale(unsolved_function, weights, calib[:512], BITS, GROUP)
    assert "NOT SOLVED YET" in capsys.readouterr().out
    assert torch.allclose(reference(weights, calib[:512], BITS, GROUP), search(weights, calib[:512], BITS, GROUP))


def test_returning_the_updated_weights_is_no_mistake(layer):
    """The update W[:, i:] -= outer(err, U[i, i:]) sets column i to its rounded value (err * U[i, i] = w - q),
    so after the loop the updated W is Q: a learner who returns W is right."""
    weight, H, _, _ = layer
    W = weight.clone()
    Q = gptq_loop(W, H, BITS, GROUP)
    n = W.shape[1]
    Hd = H + 0.01 * H.diagonal().mean() * torch.eye(n)
    U = torch.linalg.cholesky(torch.linalg.inv(Hd), upper=True)
    W = weight.clone()
    for i in range(n):
        W[:, i:] -= torch.outer((W[:, i] - Q[:, i]) / U[i, i], U[i, i:])
    assert torch.allclose(W, Q, atol=1e-5)


@pytest.mark.parametrize("wrong", [dict(direction=-1.0), dict(criterion="weights")],
                         ids=["scales the other way", "weight error instead of output error"])
def test_search_scale_rejects_plausible_wrong_answers(layer, wrong):
    weight, _, _, calib = layer
    with pytest.raises(ExerciseFailed):
        check_search_scale(lambda *a: search(*a, **wrong), [weight, weight.flip(0)], calib[:512], BITS, GROUP)


# The lab's library helpers (common/quant/layer_study.py, common/quant/awq_steps.py, common/tables.py).

def test_on_grid_tells_a_quantized_weight_from_a_float_one(layer):
    from common.quant.layer_study import on_grid, rtn_weight
    weight = layer[0]
    assert on_grid(rtn_weight(weight, BITS, GROUP), BITS, GROUP)
    assert not on_grid(weight, BITS, GROUP)
    assert not on_grid(rtn_weight(weight, 4, GROUP), 3, GROUP)   # 16 levels are not a 3-bit grid


def test_a_static_activation_scale_suffers_from_one_loud_token_and_smoothing_helps_it():
    """W8A8 on one layer: an outlier channel that is large in a few tokens stretches a static per-tensor
    scale for every token, a per-token scale only for those tokens; smoothing moves the channel's range
    into the weights."""
    from common.quant.layer_study import w8a8_relative_error
    generator = torch.Generator().manual_seed(4)
    weight = torch.randn(64, 128, generator=generator) * 0.05

    def inputs(tokens):
        x = torch.randn(tokens, 128, generator=generator)
        x[::16, 5] *= 60.0                  # one channel, loud in one token of 16
        return x
    calib, test = inputs(512), inputs(512)
    per_token = w8a8_relative_error(test, weight, "per_token", calib)
    static = w8a8_relative_error(test, weight, "static", calib)
    assert static > 3 * per_token
    assert w8a8_relative_error(test, weight, "static", calib, alpha=0.5) < static
    assert w8a8_relative_error(test, weight, "per_token", calib, alpha=None) < 1e-3


def test_input_statistics_and_the_awq_steps_run_on_a_model(tiny):
    import copy

    from common.calibration import SHARED_INPUTS
    from common.quant.awq_steps import input_statistics, protect_salient, quantize_each_group
    model, _ = tiny
    batch = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    keep = (0, SHARED_INPUTS[3])
    stats = input_statistics(model, batch, sample_tokens=8, keep=(keep,))
    assert len(stats) == len(SHARED_INPUTS) * model.config.num_hidden_layers
    assert stats[keep].inputs.shape == (32, model.config.intermediate_size)
    assert stats[keep].sample.shape[0] == 8 and stats[(0, SHARED_INPUTS[0])].inputs is None
    assert torch.allclose(stats[keep].mean_abs, stats[keep].inputs.abs().mean(dim=0), rtol=1e-4, atol=1e-6)
    quantized = copy.deepcopy(model)
    quantize_each_group(quantized, stats, lambda ws, s: [protect_salient(w, s.mean_abs, 0.1, 4, None) for w in ws])
    down = quantized.model.layers[0].mlp.down_proj.weight
    assert not torch.equal(down, model.model.layers[0].mlp.down_proj.weight)


def test_the_calibration_matrix_is_rebuilt_from_the_recorded_rows():
    from common.tables import calibration_matrix_text, recorded_calibration_rows
    recorded = {"calibration study: GPTQ W3 g64 calibrated on wiki, PPL wiki": 26.4,
                "calibration study: GPTQ W3 g64 calibrated on wiki, PPL python-docs": 30.0,
                "calibration study: RTN W3 g64 calibrated on -, PPL wiki": 45.8,
                "calibration study: RTN W3 g64 calibrated on -, PPL python-docs": 35.6,
                "PPL wiki, RTN W3 g64": 45.8}
    rows = recorded_calibration_rows(recorded)
    assert {(r["method"], r["calib"]) for r in rows} == {("GPTQ W3 g64", "wiki"), ("RTN W3 g64", None)}
    text = calibration_matrix_text(rows)
    assert "26.4 / 30.0" in text and "45.8 / 35.6" in text
    assert text.splitlines()[0].split()[-2:] == ["wiki", "-"]   # the columns in the order the rows name them
    assert calibration_matrix_text([]) == "(no rows)"
