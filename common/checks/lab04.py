"""Checkers of lab 04 (Knowledge distillation)."""
import torch

from . import check, check_close


def check_softened_probs(answer, logits, temperature: float) -> None:
    expected = torch.softmax(logits.float() / temperature, dim=-1)
    ok = answer is not None and isinstance(answer, torch.Tensor) and answer.shape == expected.shape and \
        torch.allclose(answer.float(), expected, atol=1e-6)
    check(f"softened distribution at T={temperature}", ok,
          "divide the logits by T before the softmax over the last (vocabulary) dimension.")


def check_forward_kl(answer, student_logits, teacher_logits, temperature: float) -> None:
    from ..distill.losses import forward_kl
    check_close(f"T^2 * KL(teacher || student) at T={temperature}", answer,
                forward_kl(student_logits, teacher_logits, temperature).item(), 1e-4,
                "sum p_teacher * (log p_teacher - log p_student) over the vocabulary (both at temperature T), "
                "average over positions, multiply by T**2.")


def check_kd_loss(answer, student_logits, teacher_logits, ids, temperature: float, alpha: float) -> None:
    from ..distill.losses import kd_loss
    check_close(f"alpha*CE + (1-alpha)*T^2*KL (alpha={alpha}, T={temperature})", answer,
                kd_loss(student_logits, teacher_logits, ids, temperature, alpha)[0].item(), 1e-4,
                "position t predicts token t+1: use logits[:, :-1] against ids[:, 1:] for the CE, and the "
                "same positions for the KL.")


def check_gap_recovered(answer, ppl_teacher: float, ppl_pruned: float, ppl_recovered: float) -> None:
    check_close("fraction of the pruning gap recovered", answer,
                (ppl_pruned - ppl_recovered) / (ppl_pruned - ppl_teacher), 1e-6,
                "(PPL after pruning - PPL after training) / (PPL after pruning - PPL of the teacher).")


def check_easy_to_hard(ordered_windows, windows, teacher) -> None:
    from ..eval import window_nll
    nll = torch.cat([window_nll(teacher, w[None].to(next(teacher.parameters()).device)).cpu()
                     for w in ordered_windows])
    same_set = sorted(map(tuple, ordered_windows.tolist())) == sorted(map(tuple, windows.tolist()))
    check("windows ordered from easy to hard by the teacher's loss",
          same_set and bool((nll[1:] >= nll[:-1] - 1e-4).all()),
          "score every window with window_nll(teacher, ...) and reorder them with argsort (ascending).")
