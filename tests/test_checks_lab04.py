"""Lab 04's checkers hand back their reference for the unsolved stub and reject plausible wrong answers."""
import re

import pytest
import torch
import torch.nn.functional as F

from common.checks import ExerciseFailed
from common.checks.lab04 import check_distillation_kl, check_kd_step, check_loss_falls
from common.models import tiny_random
from conftest import unsolved_function   # an exercise left open: the stub labs/ hands the learner


def kl(student_logits, teacher_logits, temperature, *, reverse=False, t_squared=True, over_positions="mean"):
    """T^2 * KL(teacher_T || student_T) and its usual slips, switched on one at a time."""
    vocab = student_logits.size(-1)
    log_p_t = F.log_softmax(teacher_logits.reshape(-1, vocab) / temperature, -1)
    log_p_s = F.log_softmax(student_logits.reshape(-1, vocab) / temperature, -1)
    if reverse:
        log_p_t, log_p_s = log_p_s, log_p_t
    per_position = (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1)
    value = per_position.mean() if over_positions == "mean" else per_position.sum()
    return value * (temperature ** 2 if t_squared else 1.0)


@pytest.fixture(scope="module")
def logits():
    generator = torch.Generator().manual_seed(1)
    return torch.randn(1, 12, 50, generator=generator) * 3, torch.randn(1, 12, 50, generator=generator) * 3


def test_the_kl_checker_hands_back_its_reference_which_passes(logits, capsys):
    student, teacher = logits
    reference = check_distillation_kl(unsolved_function, student, teacher)
    assert reference is not unsolved_function and "NOT SOLVED YET" in capsys.readouterr().out
    assert check_distillation_kl(reference, student, teacher) is reference
    assert check_distillation_kl(kl, student, teacher) is kl
    assert "PASS" in capsys.readouterr().out


@pytest.mark.parametrize("slip, hint", [
    (dict(reverse=True), "KL(student || teacher)"),
    (dict(t_squared=False), "T**2 factor is missing"),
    (dict(over_positions="sum"), "sums over positions"),
])
def test_the_kl_checker_names_the_usual_slips(logits, slip, hint):
    student, teacher = logits
    with pytest.raises(ExerciseFailed, match=re.escape(hint)):
        check_distillation_kl(lambda s, t, temperature: kl(s, t, temperature, **slip), student, teacher)


def test_the_kl_checker_wants_a_tensor_with_the_students_gradient(logits):
    student, teacher = logits
    with pytest.raises(ExerciseFailed, match="one-element tensor"):
        check_distillation_kl(lambda s, t, temperature: kl(s, t, temperature).item(), student, teacher)
    with pytest.raises(ExerciseFailed, match="no gradient"):
        check_distillation_kl(lambda s, t, temperature: kl(s.detach(), t, temperature), student, teacher)


# ---------------------------------------------------------------------------------------------
# The KD step, on two small random Llamas
# ---------------------------------------------------------------------------------------------
def step(student, teacher, ids, optimizer, temperature, ce_weight, *, no_grad=True, zero_grad=True, shift=True,
         reverse=False, update=True):
    """The KD step and its usual slips, switched on one at a time."""
    if no_grad:
        with torch.no_grad():
            teacher_logits = teacher(ids).logits
    else:
        teacher_logits = teacher(ids).logits
    logits = student(ids).logits
    targets = ids[:, 1:] if shift else ids[:, :-1]
    ce = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), targets.reshape(-1))
    loss = ce_weight * ce + (1 - ce_weight) * kl(logits[:, :-1], teacher_logits[:, :-1], temperature, reverse=reverse)
    if zero_grad:
        optimizer.zero_grad()
    loss.backward()
    if update:
        optimizer.step()
    return loss.item()


@pytest.fixture(scope="module")
def models():
    student, _ = tiny_random(seed=1, num_layers=1)
    teacher, _ = tiny_random(seed=0, num_layers=1)
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, 256, (2, 16), generator=generator) for _ in range(2)]
    return student, teacher, batches


def test_the_kd_step_checker_hands_back_its_reference_which_passes(models, capsys):
    student, teacher, batches = models
    reference = check_kd_step(unsolved_function, student, teacher, batches, 2.0, 0.3)
    assert reference is not unsolved_function and "NOT SOLVED YET" in capsys.readouterr().out
    assert check_kd_step(reference, student, teacher, batches, 2.0, 0.3) is reference
    assert check_kd_step(step, student, teacher, batches, 2.0, 0.3) is step
    assert "PASS" in capsys.readouterr().out
    assert all(p.grad is None for p in teacher.parameters()) and all(p.grad is None for p in student.parameters())


@pytest.mark.parametrize("slip, hint", [
    (dict(no_grad=False), "torch.no_grad"),
    (dict(zero_grad=False), "zero_grad"),
    (dict(shift=False), "predicts token t\\+1"),
    (dict(reverse=True), "first loss"),
    (dict(update=False), "did not change"),
])
def test_the_kd_step_checker_rejects_the_usual_slips(models, slip, hint):
    student, teacher, batches = models
    with pytest.raises(ExerciseFailed, match=hint):
        check_kd_step(lambda *args: step(*args, **slip), student, teacher, batches, 2.0, 0.3)
    assert all(p.grad is None for p in teacher.parameters())


def test_a_loss_that_does_not_fall_is_rejected(capsys):
    assert check_loss_falls([3.0, 2.5, 2.2]) == [3.0, 2.5, 2.2]
    assert "PASS" in capsys.readouterr().out
    for losses in ([3.0, 3.1, 3.2], [3.0, float("nan")], [3.0]):
        with pytest.raises(ExerciseFailed):
            check_loss_falls(losses)


def test_the_share_of_the_gap_closed_reads_the_runs_as_the_lab_says():
    from common.eval import gap_closed
    assert gap_closed(10.0, 30.0, 20.0) == pytest.approx(0.5)
    assert gap_closed(10.0, 30.0, 30.0) == 0.0 and gap_closed(10.0, 30.0, 10.0) == 1.0
    assert gap_closed(10.0, 30.0, 8.0) > 1 and gap_closed(10.0, 30.0, 35.0) < 0
