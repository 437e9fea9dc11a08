"""Checkers of lab 04 (Knowledge distillation)."""
import torch

from . import check, check_close, not_solved, unsolved


def check_softened_probs(answer, logits, temperature: float):
    expected = torch.softmax(logits.float() / temperature, dim=-1)
    name = f"softened distribution at T={temperature}"
    if unsolved(answer):
        return not_solved(name, expected)
    ok = answer is not None and isinstance(answer, torch.Tensor) and answer.shape == expected.shape and \
        torch.allclose(answer.float(), expected, atol=1e-6)
    check(name, ok, "divide the logits by T before the softmax over the last (vocabulary) dimension.")
    return answer


def check_forward_kl(answer, student_logits, teacher_logits, temperature: float):
    from ..distill.losses import forward_kl
    return check_close(f"T^2 * KL(teacher || student) at T={temperature}", answer,
                       forward_kl(student_logits, teacher_logits, temperature).item(), 1e-4,
                       "sum p_teacher * (log p_teacher - log p_student) over the vocabulary (both at temperature "
                       "T), average over positions, multiply by T**2.")


def check_kd_loss(answer, student_logits, teacher_logits, ids, temperature: float, alpha: float):
    from ..distill.losses import kd_loss
    return check_close(f"alpha*CE + (1-alpha)*T^2*KL (alpha={alpha}, T={temperature})", answer,
                       kd_loss(student_logits, teacher_logits, ids, temperature, alpha)[0].item(), 1e-4,
                       "position t predicts token t+1: use logits[:, :-1] against ids[:, 1:] for the CE, and the "
                       "same positions for the KL.")


def _gap_closed(teacher_ppl: float, pruned_ppl: float, recovered_ppl: float) -> float:
    return (pruned_ppl - recovered_ppl) / (pruned_ppl - teacher_ppl)


def check_gap_closed(gap_closed_fn, ppl_teacher: float, ppl_pruned: float, ppl_recovered: float):
    """`gap_closed_fn(teacher_ppl, pruned_ppl, recovered_ppl)`: the fraction of the pruning gap recovered."""
    name = "fraction of the pruning gap recovered"
    try:
        answer = gap_closed_fn(ppl_teacher, ppl_pruned, ppl_recovered)
    except NotImplementedError:
        return not_solved(name, _gap_closed)
    check_close(name, answer, _gap_closed(ppl_teacher, ppl_pruned, ppl_recovered), 1e-6,
                "(PPL after pruning - PPL after training) / (PPL after pruning - PPL of the teacher).")
    return gap_closed_fn


def check_easy_to_hard(ordered_windows, windows, teacher):
    from ..eval import window_nll
    device = next(teacher.parameters()).device

    def teacher_nll(rows):
        return torch.cat([window_nll(teacher, w[None].to(device)).cpu() for w in rows])

    name = "windows ordered from easy to hard by the teacher's loss"
    if unsolved(ordered_windows):
        return not_solved(name, windows[teacher_nll(windows).argsort()])
    nll = teacher_nll(ordered_windows)
    same_set = sorted(map(tuple, ordered_windows.tolist())) == sorted(map(tuple, windows.tolist()))
    check(name, same_set and bool((nll[1:] >= nll[:-1] - 1e-4).all()),
          "score every window with window_nll(teacher, ...) and reorder them with argsort (ascending).")
    return ordered_windows
