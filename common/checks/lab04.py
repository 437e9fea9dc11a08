"""Checkers of lab 04 (Knowledge distillation).

The references are written here, not imported from common.distill: the lab's exercises ask for the
same functions, so importing them would make the check compare the library with itself.
"""
import copy
import math

import torch
import torch.nn.functional as F

from . import ExerciseFailed, check, not_solved


# ---------------------------------------------------------------------------------------------
# Exercise: T^2 * KL(teacher_T || student_T), averaged over positions
# ---------------------------------------------------------------------------------------------
def _distillation_kl(student_logits, teacher_logits, temperature: float) -> torch.Tensor:
    """T^2 * mean over positions of sum_v p_teacher(v) * (log p_teacher(v) - log p_student(v)), at temperature T."""
    vocab = student_logits.size(-1)
    log_p_teacher = F.log_softmax(teacher_logits.reshape(-1, vocab).float() / temperature, dim=-1)
    log_p_student = F.log_softmax(student_logits.reshape(-1, vocab).float() / temperature, dim=-1)
    return temperature ** 2 * (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1).mean()


def _diagnosis(answer: float, student_logits, teacher_logits, temperature: float) -> str:
    """The usual slip that gives `answer`, if one does (a hint worth more than 'expected x')."""
    positions = student_logits.numel() // student_logits.size(-1)
    reference = _distillation_kl(student_logits, teacher_logits, temperature).item()
    slips = {
        "it is KL(student || teacher): the teacher's distribution weighs the log-ratio, not the student's":
            _distillation_kl(teacher_logits, student_logits, temperature).item(),
        "the T**2 factor is missing": reference / temperature ** 2,
        "it sums over positions: average over them (a loss per token, like the cross-entropy)": reference * positions,
    }
    for why, value in slips.items():
        if math.isclose(answer, value, rel_tol=1e-4) and not math.isclose(value, reference, rel_tol=1e-4):
            return why + ". "
    return ""


def check_distillation_kl(kl_fn, student_logits, teacher_logits, temperatures=(1.0, 2.0, 4.0)):
    """`kl_fn(student_logits, teacher_logits, T)`: a 0-d tensor (it is backpropagated later) equal to the
    reference at each temperature, on the lab's real logits, with the reference's gradient."""
    name = "T^2 * KL(teacher_T || student_T), averaged over positions"
    hint = ("softmax both logits at temperature T over the vocabulary (log_softmax(logits / T, -1)), weigh "
            "log p_teacher - log p_student by p_teacher, sum over the vocabulary, average over every other "
            "dimension, multiply by T**2; return the tensor (no .item()).")
    values = []
    for temperature in temperatures:
        try:
            answer = kl_fn(student_logits, teacher_logits, temperature)
        except NotImplementedError:
            return not_solved(name, _distillation_kl)
        if not isinstance(answer, torch.Tensor) or answer.numel() != 1:
            raise ExerciseFailed(f"{name}: got {type(answer).__name__}, expected a one-element tensor. Hint: {hint}")
        expected = _distillation_kl(student_logits, teacher_logits, temperature).item()
        if not math.isclose(answer.item(), expected, rel_tol=1e-4):
            why = _diagnosis(answer.item(), student_logits, teacher_logits, temperature)
            raise ExerciseFailed(f"{name}: at T={temperature:g} got {answer.item():.6g}, expected {expected:.6g}. "
                                 f"Hint: {why}{hint}")
        values.append(answer.item())
    # the training step backpropagates through it: the gradient must be the reference's
    generator = torch.Generator().manual_seed(0)
    small_student = torch.randn(2, 3, 17, generator=generator, requires_grad=True)
    small_teacher = torch.randn(2, 3, 17, generator=generator)
    answer = kl_fn(small_student, small_teacher, 2.0)
    if not answer.requires_grad:
        raise ExerciseFailed(f"{name}: the result carries no gradient to the student's logits. Hint: do not "
                             "detach the student's side (no .item(), .detach() or torch.no_grad() in the loss).")
    answer.backward()
    reference = small_student.detach().clone().requires_grad_(True)
    _distillation_kl(reference, small_teacher, 2.0).backward()
    check(name + " (and its gradient)", torch.allclose(small_student.grad, reference.grad, rtol=1e-4, atol=1e-7),
          "the value is right but the gradient is not: compute it from the student's logits with torch operations.")
    return kl_fn


# ---------------------------------------------------------------------------------------------
# Exercise: one KD training step
# ---------------------------------------------------------------------------------------------
def _kd_step(student, teacher, ids, optimizer, temperature: float, ce_weight: float) -> float:
    """ce_weight * CE(data) + (1 - ce_weight) * T^2 * KL(teacher_T || student_T) over next-token positions; one update."""
    with torch.no_grad():
        teacher_logits = teacher(ids).logits
    student_logits = student(ids).logits
    vocab = student_logits.size(-1)
    ce = F.cross_entropy(student_logits[:, :-1].reshape(-1, vocab).float(), ids[:, 1:].reshape(-1))
    kl = _distillation_kl(student_logits[:, :-1], teacher_logits[:, :-1], temperature)
    loss = ce_weight * ce + (1 - ce_weight) * kl
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def _run_steps(step_fn, student, teacher, batches, temperature, ce_weight, lr):
    model = copy.deepcopy(student).float().train()   # fp32: a bf16 weight would round a small update away
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)   # an update proportional to the gradient: checks it
    losses = [float(step_fn(model, teacher, ids, optimizer, temperature, ce_weight)) for ids in batches]
    return model, losses


def check_kd_step(step_fn, student, teacher, batches, temperature: float, ce_weight: float, lr: float = 5e-2):
    """`step_fn(student, teacher, ids, optimizer, T, ce_weight) -> loss` run on a copy of `student` over
    `batches` (two or more), beside the reference step on another copy, both with plain SGD: the same
    losses (the second one shows whether gradients were zeroed), the same parameters after the steps,
    and no gradient left on the teacher."""
    name = "one KD step: teacher under no_grad, student forward, ce_weight*CE + (1-ce_weight)*T^2*KL, backward, update"
    for p in teacher.parameters():
        p.grad = None
    try:
        model, losses = _run_steps(step_fn, student, teacher, batches, temperature, ce_weight, lr)
    except NotImplementedError:
        return not_solved(name, _kd_step)
    try:
        reference, expected = _run_steps(_kd_step, student, teacher, batches, temperature, ce_weight, lr)
        teacher_grads = any(p.grad is not None for p in teacher.parameters())
        update = sum((r.detach() - p.detach()).double().pow(2).sum().item()
                     for r, p in zip(reference.parameters(), student.parameters()))
        moved = sum((m.detach() - p.detach()).double().pow(2).sum().item()
                    for m, p in zip(model.parameters(), student.parameters()))
        differ = sum((m.detach() - r.detach()).double().pow(2).sum().item()
                     for m, r in zip(model.parameters(), reference.parameters()))
    finally:
        for p in teacher.parameters():
            p.grad = None
    shown = ", ".join(f"{x:.5f}" for x in losses)
    if teacher_grads:
        raise ExerciseFailed(f"{name}: the teacher's parameters received gradients. Hint: run the teacher's "
                             "forward under torch.no_grad(): it is not trained, and its graph costs memory.")
    if not math.isclose(losses[0], expected[0], rel_tol=1e-4):
        raise ExerciseFailed(f"{name}: first loss {losses[0]:.6f}, expected {expected[0]:.6f}. Hint: position t "
                             "predicts token t+1: CE of logits[:, :-1] against ids[:, 1:], and the KL over the same "
                             "positions (logits[:, :-1] of both models); loss = ce_weight*CE + (1-ce_weight)*KL.")
    if moved == 0:
        raise ExerciseFailed(f"{name}: the student's parameters did not change. Hint: loss.backward(), then "
                             "optimizer.step().")
    if not all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(losses[1:], expected[1:])):
        raise ExerciseFailed(f"{name}: losses {shown}, expected {', '.join(f'{x:.5f}' for x in expected)}: the "
                             "first loss is right, the update after it is not. Hint: backpropagate the loss you "
                             "return (ce_weight*CE + (1-ce_weight)*KL), once, and step the optimizer you were given.")
    check(name, differ <= 1e-4 * update,
          "the losses match but the parameters after the last step do not: clear the gradients every step "
          "(optimizer.zero_grad() before loss.backward()), otherwise they add up over the steps.")
    return step_fn


def check_loss_falls(losses):
    """A training step must lower the loss of the batch it trains on, over a few steps."""
    finite = all(math.isfinite(x) for x in losses)
    check(f"the loss on the batch it trains on falls over {len(losses)} steps ({losses[0]:.3f} -> {losses[-1]:.3f})",
          finite and len(losses) >= 2 and losses[-1] < losses[0],
          "the step must move the parameters against the gradient: optimizer.step() after loss.backward(), "
          "with the gradients cleared each step.")
    return losses
