"""Checkers of lab 03 (Pruning and low rank).

The references come from common.prune, imported here inside each checker, never from the lab's own
namespace: the lab imports no function that returns an exercise's answer before the exercise.
The one-layer exercises are judged the way the methods are meant to be judged, by the layer's output
error on held-out inputs (common/prune/one_layer.py), plus the property that makes each method what
it is (Wanda's per-row comparison, SparseGPT's sparsity).
"""
import torch

from . import ExerciseFailed, check, not_solved, predicted, unsolved


def check_nm_mask(make_mask):
    """`make_mask(scores, n, m)` must keep the n highest scores of every group of m along each row."""
    from ..prune.masks import nm_mask
    generator = torch.Generator().manual_seed(3)
    for n, m in ((2, 4), (4, 8)):
        scores = torch.rand(8, 32, generator=generator)
        try:
            answer = make_mask(scores, n, m)
        except NotImplementedError:
            return not_solved("N:M mask", nm_mask)
        ok = (isinstance(answer, torch.Tensor) and answer.shape == scores.shape
              and torch.equal(answer.bool(), nm_mask(scores, n, m)))
        check(f"{n}:{m} mask", ok, "groups are m consecutive entries of a row (along the input dimension): "
              "reshape the scores to [rows, cols // m, m], take topk(n) along the last dimension, scatter True "
              "at those indices into a zero bool tensor, reshape back.")
    return make_mask


def _pruned_weight(prune, name, weight, *args):
    """The learner's pruned weight, or None while the exercise is open (its NotImplementedError)."""
    try:
        answer = prune(weight, *args)
    except NotImplementedError:
        return None
    if not isinstance(answer, torch.Tensor) or answer.shape != weight.shape:
        raise ExerciseFailed(f"{name}: return the pruned weight, a tensor shaped like the weight "
                             f"{tuple(weight.shape)}, with zeros where weights were removed.")
    return answer.detach().float()


def _errors_line(errors: dict) -> str:
    return "held-out output error " + ", ".join(f"{name} {error:.4f}" for name, error in errors.items())


def check_wanda_layer(prune, weight: torch.Tensor, inputs: torch.Tensor, held_out: torch.Tensor, sparsity: float):
    """`prune(weight, inputs, sparsity)` must zero, in each output row, the `sparsity` fraction of weights
    with the lowest |W_ij| * ||X_j|| (X_j: input channel j over the calibration tokens `inputs`), and so
    lose less of the layer's output on `held_out` inputs than magnitude pruning does (wherever the
    reference Wanda does: on smoke mode's few tokens it need not)."""
    from ..prune.one_layer import magnitude_pruned, output_error, wanda_pruned
    name = f"Wanda on one layer at {sparsity:.0%}"
    reference = wanda_pruned(weight, inputs, sparsity)
    answer = _pruned_weight(prune, name, weight, inputs, sparsity)
    if answer is None:
        return not_solved(name, reference)
    errors = {"magnitude": output_error(weight, magnitude_pruned(weight, sparsity), held_out),
              "yours": output_error(weight, answer, held_out)}
    below_magnitude = (errors["yours"] < errors["magnitude"]
                       or output_error(weight, reference, held_out) >= errors["magnitude"])
    per_row = int(sparsity * weight.size(1))
    zeros_per_row = (answer == 0).sum(1)
    if not torch.all(zeros_per_row == per_row):
        raise ExerciseFailed(f"{name}: rows lose {int(zeros_per_row.min())} to {int(zeros_per_row.max())} weights, "
                             f"every row must lose {per_row}. Hint: Wanda compares the weights of each output row "
                             "with each other (a row is one output), not over the whole matrix: topk along dim=1.")
    same = ((answer != 0) == (reference != 0)).float().mean().item()
    check(f"{name} ({_errors_line(errors)})", same > 0.999 and below_magnitude,
          f"your mask matches Wanda's on {same:.1%} of the weights. The score is |W_ij| times the L2 norm of "
          "input channel j over the calibration tokens (inputs[:, j].norm()), the same for every row i; zero "
          "the lowest-scoring fraction of each row and keep the other weights unchanged.")
    return answer


def check_sparsegpt_layer(prune, weight: torch.Tensor, hessian: torch.Tensor, held_out: torch.Tensor,
                          inputs: torch.Tensor, sparsity: float):
    """`prune(weight, hessian, sparsity)` must remove `sparsity` of the weights and update the others so that
    the layer's output error is SparseGPT's (within 5%) on the calibration `inputs`, the error the update
    minimises (without the update it is far above), and on `held_out` inputs, and so below Wanda's and
    magnitude's wherever the reference SparseGPT gets there."""
    from ..prune.one_layer import magnitude_pruned, output_error, sparsegpt_pruned, wanda_pruned
    name = f"SparseGPT on one layer at {sparsity:.0%}"
    reference = sparsegpt_pruned(weight, hessian, sparsity)
    answer = _pruned_weight(prune, name, weight, hessian, sparsity)
    if answer is None:
        return not_solved(name, reference)
    errors = {"magnitude": output_error(weight, magnitude_pruned(weight, sparsity), held_out),
              "Wanda": output_error(weight, wanda_pruned(weight, inputs, sparsity), held_out),
              "SparseGPT (reference)": output_error(weight, reference, held_out),
              "yours": output_error(weight, answer, held_out)}
    zeros = (answer == 0).float().mean().item()
    if abs(zeros - sparsity) > 0.005:
        raise ExerciseFailed(f"{name}: {zeros:.1%} of your weights are zero, not {sparsity:.0%}. Hint: in each "
                             "block prune the `sparsity` fraction of its weights with the lowest cost, and set the "
                             "pruned weights to exactly 0 after their update.")
    others = min(errors["magnitude"], errors["Wanda"])
    below_others = errors["yours"] < others or errors["SparseGPT (reference)"] >= others
    fitted = output_error(weight, answer, inputs) <= 1.05 * output_error(weight, reference, inputs)
    check(f"{name} ({_errors_line(errors)})", errors["yours"] <= 1.05 * errors["SparseGPT (reference)"]
          and below_others and fitted,
          "per block, cost = w^2 / u_jj^2 (u: the upper Cholesky factor of H^-1) chooses the mask; then, column by "
          "column, error = w[:, j] * pruned[:, j] / u[j, j] and w[:, j:] -= outer(error, u[j, j:]) repairs the "
          "columns to the right. Without that update the error is Wanda's, not SparseGPT's.")
    return answer


def each_predicted(what: str, value, names) -> dict:
    """{name: the learner's prediction for `what` of each of `names`} from a dict `value`; a prediction
    left as `...` is said once (not once per name), one of the wrong kind once per name."""
    if unsolved(value):
        predicted(what, value)
        return {name: None for name in names}
    if not isinstance(value, dict):
        print(f"Your prediction \u00ab{what}\u00bb should be a dict {{method: number}}; got {value!r}. "
              "The lab goes on without it.")
        return {name: None for name in names}
    return {name: predicted(f"{what}, {name}", value.get(name)) for name in names}
