"""Lab 03's checkers reject the unsolved stub and a plausible wrong answer."""
import pytest
import torch

from common.checks import ExerciseFailed
from common.checks.lab03 import check_nm_mask, check_sparsegpt_layer, check_wanda_layer, each_predicted
from common.prune.masks import nm_mask
from common.prune.one_layer import gram, output_error
from conftest import unsolved_function   # an exercise left open: the stub labs/ hands the learner


def test_the_nm_mask_checker_falls_back_on_its_reference(capsys):
    reference = check_nm_mask(unsolved_function)
    assert reference is not unsolved_function and "NOT SOLVED YET" in capsys.readouterr().out
    assert check_nm_mask(reference) is reference


@pytest.mark.parametrize("wrong", [
    lambda scores, n, m: nm_mask(scores.T.contiguous(), n, m).T,  # groups down the columns, not along a row
    lambda scores, n, m: nm_mask(-scores, n, m),                  # keeps the lowest scores
])
def test_the_nm_mask_checker_rejects_a_plausible_wrong_mask(wrong):
    with pytest.raises(ExerciseFailed):
        check_nm_mask(wrong)


def a_layer(seed=0, rows=48, cols=128, tokens=1024):
    """A weight and inputs with a few loud channels (as LLM layers have), calibration and held-out."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.ones(cols)
    scale[torch.randperm(cols, generator=generator)[:6]] = 12.0
    factors = torch.randn(cols // 4, cols, generator=generator)  # channels correlated through a few factors

    def inputs(n):
        shared = torch.randn(n, cols // 4, generator=generator) @ factors / (cols // 4) ** 0.5
        return (shared + 0.3 * torch.randn(n, cols, generator=generator)) * scale

    return torch.randn(rows, cols, generator=generator), inputs(tokens), inputs(tokens)


def reference_wanda(weight, inputs, sparsity):
    scores = weight.abs() * inputs.norm(dim=0)[None, :]
    drop = scores.topk(int(sparsity * weight.size(1)), dim=1, largest=False).indices
    return weight.clone().scatter_(1, drop, 0.0)


def whole_matrix_wanda(weight, inputs, sparsity):
    """Wanda's score, compared over the whole matrix instead of within each row."""
    scores = weight.abs() * inputs.norm(dim=0)[None, :]
    cut = scores.flatten().kthvalue(int(sparsity * scores.numel())).values
    return weight * (scores > cut)


def squared_norm_wanda(weight, inputs, sparsity):
    """|W| times the squared norm: another ranking within each row."""
    scores = weight.abs() * inputs.pow(2).sum(0)[None, :]
    drop = scores.topk(int(sparsity * weight.size(1)), dim=1, largest=False).indices
    return weight.clone().scatter_(1, drop, 0.0)


def test_the_wanda_checker_hands_back_its_reference_and_passes_a_right_answer(capsys):
    weight, inputs, held_out = a_layer()
    reference = check_wanda_layer(unsolved_function, weight, inputs, held_out, 0.5)
    assert "NOT SOLVED YET" in capsys.readouterr().out
    assert torch.equal(reference, reference_wanda(weight, inputs, 0.5))
    answer = check_wanda_layer(reference_wanda, weight, inputs, held_out, 0.5)
    assert "PASS" in capsys.readouterr().out and torch.equal(answer, reference)


@pytest.mark.parametrize("wrong", [whole_matrix_wanda, squared_norm_wanda,
                                   lambda w, x, s: reference_wanda(w, torch.ones_like(x), s)])  # |w| alone
def test_the_wanda_checker_rejects_a_plausible_wrong_answer(wrong):
    weight, inputs, held_out = a_layer()
    with pytest.raises(ExerciseFailed):
        check_wanda_layer(wrong, weight, inputs, held_out, 0.5)


def obs_sparsegpt(weight, hessian, sparsity, block_size=32, damp=0.01, update=True):
    """The lab's solution; update=False keeps SparseGPT's mask and drops its weight update."""
    w = weight.float().clone()
    h = hessian.float() + damp * hessian.diagonal().mean() * torch.eye(len(hessian))
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    for start in range(0, w.size(1), block_size):
        end = min(start + block_size, w.size(1))
        cost = w[:, start:end].pow(2) / u.diagonal()[start:end].pow(2)
        pruned = torch.zeros_like(cost, dtype=torch.bool)
        pruned.view(-1)[cost.flatten().topk(int(sparsity * cost.numel()), largest=False).indices] = True
        for j in range(start, end):
            error = w[:, j] * pruned[:, j - start] / u[j, j]
            if update:
                w[:, j:] -= torch.outer(error, u[j, j:])
            w[:, j][pruned[:, j - start]] = 0
    return w


def test_the_sparsegpt_checker_hands_back_its_reference_and_passes_a_right_answer(capsys):
    weight, inputs, held_out = a_layer()
    hessian = gram(inputs)
    reference = check_sparsegpt_layer(unsolved_function, weight, hessian, held_out, inputs, 0.5)
    assert "NOT SOLVED YET" in capsys.readouterr().out
    assert (reference == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    check_sparsegpt_layer(obs_sparsegpt, weight, hessian, held_out, inputs, 0.5)
    assert "PASS" in capsys.readouterr().out
    # What the exercise is about: the update makes the held-out error smaller than Wanda's.
    assert output_error(weight, reference, held_out) < output_error(weight, reference_wanda(weight, inputs, 0.5), held_out)


@pytest.mark.parametrize("wrong", [
    lambda w, h, s: obs_sparsegpt(w, h, s, update=False),                      # SparseGPT's mask, no update
    lambda w, h, s: obs_sparsegpt(w, torch.linalg.inv(h), s),                  # H where H^-1 belongs
    lambda w, h, s: obs_sparsegpt(w, h, 0.4),                                  # the wrong sparsity
])
def test_the_sparsegpt_checker_rejects_a_plausible_wrong_answer(wrong):
    weight, inputs, held_out = a_layer()
    with pytest.raises(ExerciseFailed):
        check_sparsegpt_layer(wrong, weight, gram(inputs), held_out, inputs, 0.5)


def test_a_prediction_per_method_is_said_once_when_left_open(capsys):
    assert each_predicted("ratio", ..., ("a", "b")) == {"a": None, "b": None}
    assert capsys.readouterr().out.count("NOT SOLVED YET") == 1
    assert each_predicted("ratio", {"a": 2, "b": "x"}, ("a", "b")) == {"a": 2.0, "b": None}
    assert each_predicted("ratio", 3.0, ("a",)) == {"a": None}
