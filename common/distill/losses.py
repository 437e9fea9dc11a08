"""Knowledge-distillation losses, each a small function of logits (or hidden states).

Shapes: logits [..., vocab] (any leading dims: batch, positions); every loss is the mean over the
positions (the leading dims), so it is comparable with the cross-entropy of a language model.

Forward KL, KL(teacher_T || student_T), is Hinton's KD: the student must cover every token the
teacher gives mass to (mass-covering). Multiplying by T^2 keeps its gradients the same size as the
cross-entropy's when T changes (the softened gradients shrink like 1/T^2). Reverse KL,
KL(student_T || teacher_T), is mode-seeking: the student is punished for mass where the teacher has
none, not for missing some of the teacher's modes.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


def _flatten(logits: torch.Tensor) -> torch.Tensor:
    return logits.reshape(-1, logits.size(-1)).float()  # fp32: log-softmax in bf16 loses the tails


def forward_kl(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    """T^2 · mean over positions of KL(softmax(teacher/T) || softmax(student/T))."""
    log_p_teacher = F.log_softmax(_flatten(teacher_logits) / temperature, dim=-1)
    log_p_student = F.log_softmax(_flatten(student_logits) / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return temperature ** 2 * kl.mean()


def reverse_kl(student_logits, teacher_logits, temperature: float = 1.0) -> torch.Tensor:
    """T^2 · mean over positions of KL(softmax(student/T) || softmax(teacher/T))."""
    return forward_kl(teacher_logits, student_logits, temperature)


def topk_kl(student_logits, teacher_logits, k: int, temperature: float = 1.0) -> torch.Tensor:
    """Forward KL on the teacher's top-k tokens only (both distributions renormalised over them).

    What you can do when only the teacher's top-k logits were stored (sequence-level caches, APIs);
    with k = vocab size it is exactly `forward_kl`.
    """
    teacher, student = _flatten(teacher_logits), _flatten(student_logits)
    top_teacher, index = teacher.topk(k, dim=-1)
    return forward_kl(student.gather(-1, index), top_teacher, temperature)


def next_token_ce(logits, input_ids) -> torch.Tensor:
    """Language-model cross-entropy: position t predicts token t+1."""
    return F.cross_entropy(_flatten(logits[:, :-1]), input_ids[:, 1:].reshape(-1))


def kd_loss(student_logits, teacher_logits, input_ids, temperature: float = 2.0, ce_weight: float = 0.5,
            fused: bool | None = None):
    """ce_weight · CE(data, student) + (1 - ce_weight) · T^2 · KL(teacher_T || student_T), over next-token positions.

    Returns (loss, parts): parts holds the two terms as detached 0-d tensors, for logging (reading
    them is left to the caller, so the GPU is not stopped mid-step). fused None: on a CUDA device the
    same loss runs as one Triton kernel that reads the logits twice (kernels/kd_loss.py), since the
    formulas below make a dozen fp32 copies of the logits; False: always the formulas below.
    """
    teacher_logits = teacher_logits if ce_weight != 1.0 else None
    no_kl = torch.full((), float("nan"), device=student_logits.device)
    if fused if fused is not None else student_logits.is_cuda:
        from kernels.kd_loss import fused_kd_loss
        loss, ce, kl = fused_kd_loss(student_logits, teacher_logits, input_ids, temperature, ce_weight)
        return loss, {"ce": ce, "kl": no_kl if teacher_logits is None else kl}
    ce = next_token_ce(student_logits, input_ids)
    if teacher_logits is None:
        return ce, {"ce": ce.detach(), "kl": no_kl}
    kl = forward_kl(student_logits[:, :-1], teacher_logits[:, :-1], temperature)
    return ce_weight * ce + (1 - ce_weight) * kl, {"ce": ce.detach(), "kl": kl.detach()}


class HiddenStateLoss(nn.Module):
    """MSE between chosen student and teacher hidden states, through a learned linear projection
    (student width -> teacher width) when the widths differ, identity otherwise.

    Each pair's MSE is divided by the teacher state's mean square: the residual stream grows by
    orders of magnitude along the depth (and a few channels carry huge values), so a raw MSE would
    weigh the last layers only and its weight would mean something different on every model.

    `pairs` is a list of (student_layer, teacher_layer) indices into `output_hidden_states`
    (0 = embeddings, i = output of decoder layer i). The projection is trained with the student and
    thrown away afterwards; it is never part of the exported model.
    """

    def __init__(self, student_width: int, teacher_width: int, pairs):
        super().__init__()
        self.pairs = list(pairs)
        self.projections = nn.ModuleList(
            nn.Identity() if student_width == teacher_width else nn.Linear(student_width, teacher_width, bias=False)
            for _ in self.pairs)

    def forward(self, student_hidden, teacher_hidden) -> torch.Tensor:
        losses = [F.mse_loss(project(student_hidden[s].float()), teacher_hidden[t].float())
                  / teacher_hidden[t].float().pow(2).mean().clamp_min(1e-8)
                  for project, (s, t) in zip(self.projections, self.pairs)]
        return torch.stack(losses).mean()
