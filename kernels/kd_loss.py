"""The distillation loss in one pass over the logits (Triton): cross-entropy and T²·KL(teacher‖student).

`common.distill.losses.kd_loss` writes the loss the readable way: upcast the logits to fp32, three
log-softmaxes, an exp, a difference, a product, a sum, and autograd's copies of each on the way back.
With a 49,152-token vocabulary and 32×512 positions every one of those tensors is 3.2 GB, so the loss
alone moved about 0.2 TB per training step, longer than the model's own forward and backward.

Here each program takes one position (a row of the logits) and reads it twice:
  pass 1  running maxima and sums of exp, lane by lane, for three softmaxes at once: the student's at
          T = 1 (cross-entropy), the student's at T and the teacher's at T (KL). The KL needs one more
          running sum, sum_j exp(t_j/T - m) (t_j - s_j)/T, rescaled with the teacher's sum of exp:
          KL = sum_j p_j (t_j - s_j)/T - lse(t/T) + lse(s/T).
  pass 2  the gradient with respect to the student's logits, written once in their dtype:
          ce_weight/n (softmax(s) - onehot(target)) + (1 - ce_weight) T/n (softmax(s/T) - softmax(t/T)).
Backward multiplies that stored gradient by the incoming scalar. Rows whose target is negative (the
last position of each sequence, which predicts nothing) add nothing and get a zero gradient.
Masked lanes hold a large finite negative number rather than -inf, so no lane ever computes inf - inf.
"""
import torch
import triton
import triton.language as tl

NEGATIVE = tl.constexpr(-1.0e30)  # "minus infinity" that stays finite under subtraction


@triton.jit
def _online_update(m, z, x, mask):
    # One step of a running log-sum-exp per lane: m the lane's maximum so far, z its sum of exp(x - m).
    m_new = tl.maximum(m, x)
    z = z * tl.exp(m - m_new) + tl.where(mask, tl.exp(x - m_new), 0.0)
    return m_new, z


@triton.jit
def _combine(m, z):
    # Merge the lanes: log sum exp over the row, and the factor that brings each lane to the row maximum.
    m_row = tl.max(m, 0)
    rescale = tl.exp(m - m_row)
    return m_row + tl.log(tl.sum(z * rescale, 0)), rescale


@triton.jit
def _kd_loss_kernel(s_ptr, t_ptr, target_ptr, grad_ptr, ce_ptr, kl_ptr, V: tl.constexpr, inv_temperature, ce_scale, kl_scale,
                    HAS_TEACHER: tl.constexpr, WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    target = tl.load(target_ptr + row)
    valid = (target >= 0).to(tl.float32)
    lanes = tl.arange(0, BLOCK)
    s_row, t_row, g_row = s_ptr + row * V, t_ptr + row * V, grad_ptr + row * V

    m_s = tl.full([BLOCK], NEGATIVE, tl.float32)   # student, T = 1
    z_s = tl.zeros([BLOCK], tl.float32)
    m_q = tl.full([BLOCK], NEGATIVE, tl.float32)   # student, T
    z_q = tl.zeros([BLOCK], tl.float32)
    m_p = tl.full([BLOCK], NEGATIVE, tl.float32)   # teacher, T
    z_p = tl.zeros([BLOCK], tl.float32)
    w_p = tl.zeros([BLOCK], tl.float32)            # sum of exp(t/T - m_p) (t - s)/T
    target_logit = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + lanes
        mask = cols < V
        s = tl.load(s_row + cols, mask=mask, other=0.0).to(tl.float32)
        target_logit += tl.where(cols == target, s, 0.0)
        m_s, z_s = _online_update(m_s, z_s, tl.where(mask, s, NEGATIVE), mask)
        if HAS_TEACHER:
            s_t = s * inv_temperature
            m_q, z_q = _online_update(m_q, z_q, tl.where(mask, s_t, NEGATIVE), mask)
            t_t = tl.load(t_row + cols, mask=mask, other=0.0).to(tl.float32) * inv_temperature
            x = tl.where(mask, t_t, NEGATIVE)
            m_new = tl.maximum(m_p, x)
            rescale = tl.exp(m_p - m_new)
            e = tl.where(mask, tl.exp(x - m_new), 0.0)
            z_p = z_p * rescale + e
            w_p = w_p * rescale + e * (t_t - s_t)
            m_p = m_new

    lse_s, _ = _combine(m_s, z_s)
    tl.store(ce_ptr + row, valid * (lse_s - tl.sum(target_logit, 0)))
    lse_q = 0.0
    lse_p = 0.0
    if HAS_TEACHER:
        lse_q, _ = _combine(m_q, z_q)
        m_row = tl.max(m_p, 0)
        rescale = tl.exp(m_p - m_row)
        z_row = tl.sum(z_p * rescale, 0)
        lse_p = m_row + tl.log(z_row)
        tl.store(kl_ptr + row, valid * (tl.sum(w_p * rescale, 0) / z_row - lse_p + lse_q))

    if WRITE_GRAD:
        for start in range(0, V, BLOCK):
            cols = start + lanes
            mask = cols < V
            s = tl.load(s_row + cols, mask=mask, other=0.0).to(tl.float32)
            g = ce_scale * (tl.exp(s - lse_s) - (cols == target).to(tl.float32))
            if HAS_TEACHER:
                t = tl.load(t_row + cols, mask=mask, other=0.0).to(tl.float32)
                g += kl_scale * (tl.exp(s * inv_temperature - lse_q) - tl.exp(t * inv_temperature - lse_p))
            tl.store(g_row + cols, (valid * g).to(grad_ptr.dtype.element_ty), mask=mask)


class _FusedKDLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student_logits, teacher_logits, input_ids, temperature, ce_weight, block):
        vocab = student_logits.size(-1)
        student = student_logits.reshape(-1, vocab).contiguous()
        teacher = student if teacher_logits is None else teacher_logits.reshape(-1, vocab).contiguous()
        # Position t predicts token t + 1; the last position of each sequence predicts nothing (-1).
        targets = torch.cat([input_ids[:, 1:], input_ids.new_full((input_ids.size(0), 1), -1)], 1).reshape(-1)
        rows = targets.numel()
        n = rows - input_ids.size(0)
        ce_scale = 1.0 if teacher_logits is None else ce_weight
        write_grad = student_logits.requires_grad
        grad = torch.empty_like(student) if write_grad else student  # never written when not needed
        ce = torch.empty(rows, dtype=torch.float32, device=student.device)
        kl = torch.zeros(rows, dtype=torch.float32, device=student.device)
        _kd_loss_kernel[(rows,)](student, teacher, targets.contiguous(), grad, ce, kl, vocab, 1.0 / temperature,
                                 ce_scale / n, (1.0 - ce_weight) * temperature / n,
                                 HAS_TEACHER=teacher_logits is not None, WRITE_GRAD=write_grad, BLOCK=block)
        ce_mean, kl_mean = ce.sum() / n, temperature ** 2 * kl.sum() / n
        loss = ce_scale * ce_mean + (1.0 - ce_scale) * kl_mean
        if write_grad:
            ctx.save_for_backward(grad)
        ctx.input_shape = student_logits.shape
        ctx.mark_non_differentiable(ce_mean, kl_mean)
        return loss, ce_mean, kl_mean

    @staticmethod
    def backward(ctx, grad_loss, _grad_ce, _grad_kl):
        grad, = ctx.saved_tensors
        return (grad * grad_loss.to(grad.dtype)).reshape(ctx.input_shape), None, None, None, None, None


def fused_kd_loss(student_logits, teacher_logits, input_ids, temperature: float = 2.0, ce_weight: float = 0.5,
                  block: int = 4096):
    """ce_weight · CE + (1 - ce_weight) · T² · KL(teacher_T ‖ student_T) over next-token positions, as kd_loss;
    teacher_logits None: CE only. Returns (loss, ce, T²·KL) as 0-d tensors (the last is 0 without a
    teacher); only the loss carries a gradient. Logits [batch, positions, vocab] in any float dtype."""
    block = min(block, triton.next_power_of_2(student_logits.size(-1)))
    return _FusedKDLoss.apply(student_logits, teacher_logits, input_ids, float(temperature), float(ce_weight), block)
