"""The fused distillation loss (kernels/kd_loss.py) against the readable formulas it replaces on a GPU.

On a CPU the Triton kernel runs in Triton's interpreter; on a GPU (pytest on the device) compiled,
with bf16 logits of the embedded model's vocabulary as well."""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must be set before triton compiles anything

from common.distill.losses import kd_loss  # noqa: E402
from kernels.kd_loss import fused_kd_loss  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def logits_pair(batch, positions, vocab, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = (3 * torch.randn(batch, positions, vocab, generator=g)).to(DEVICE, dtype)
    teacher = (3 * torch.randn(batch, positions, vocab, generator=g)).to(DEVICE, dtype)
    ids = torch.randint(0, vocab, (batch, positions), generator=g).to(DEVICE)
    return student, teacher, ids


def loss_and_grad(student, teacher, ids, temperature, ce_weight, fused, scale=1.0):
    student = student.detach().clone().requires_grad_(True)
    loss, parts = kd_loss(student, teacher, ids, temperature, ce_weight, fused=fused)
    (scale * loss).backward()
    return loss.detach(), parts, student.grad


@pytest.mark.parametrize("vocab, block", [(300, 128), (256, 256), (97, 32)])  # a partial last block, exact, odd
@pytest.mark.parametrize("temperature, ce_weight", [(2.0, 0.7), (1.0, 0.0), (4.0, 0.5)])
def test_fused_loss_and_gradient_match_the_formulas(vocab, block, temperature, ce_weight):
    student, teacher, ids = logits_pair(2, 5, vocab)
    ref_loss, ref_parts, ref_grad = loss_and_grad(student, teacher, ids, temperature, ce_weight, fused=False)
    s = student.detach().clone().requires_grad_(True)
    loss, ce, kl = fused_kd_loss(s, teacher, ids, temperature, ce_weight, block=block)
    loss.backward()
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
    assert ce.item() == pytest.approx(ref_parts["ce"].item(), rel=1e-5)
    assert kl.item() == pytest.approx(ref_parts["kl"].item(), rel=1e-4, abs=1e-6)
    assert torch.allclose(s.grad, ref_grad, rtol=1e-4, atol=1e-7)


def test_without_a_teacher_it_is_the_cross_entropy():
    student, teacher, ids = logits_pair(3, 4, 200)
    for teacher_logits, ce_weight in ((None, 0.5), (teacher, 1.0)):  # no teacher, or a teacher weighed 0
        ref_loss, ref_parts, ref_grad = loss_and_grad(student, teacher_logits, ids, 2.0, ce_weight, fused=False)
        loss, parts, grad = loss_and_grad(student, teacher_logits, ids, 2.0, ce_weight, fused=True)
        assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-5)
        assert torch.isnan(parts["kl"]) and torch.isnan(ref_parts["kl"])
        assert torch.allclose(grad, ref_grad, rtol=1e-4, atol=1e-7)


def test_the_last_position_gets_no_gradient_and_the_incoming_gradient_scales_it():
    student, teacher, ids = logits_pair(2, 6, 128)
    _, _, grad = loss_and_grad(student, teacher, ids, 2.0, 0.7, fused=True)
    _, _, grad_scaled = loss_and_grad(student, teacher, ids, 2.0, 0.7, fused=True, scale=0.25)
    assert torch.all(grad[:, -1] == 0) and torch.all(grad[:, :-1].abs().sum(-1) > 0)
    assert torch.allclose(grad_scaled, 0.25 * grad, rtol=1e-6, atol=0)
    # every gradient row of a softmax difference sums to zero
    assert torch.allclose(grad.sum(-1), torch.zeros_like(grad.sum(-1)), atol=1e-6)


def test_no_gradient_is_written_when_none_is_needed():
    student, teacher, ids = logits_pair(1, 3, 64)
    loss, ce, kl = fused_kd_loss(student, teacher, ids, 2.0, 0.5)
    assert not loss.requires_grad
    assert loss.item() == pytest.approx(kd_loss(student, teacher, ids, 2.0, 0.5, fused=False)[0].item(), rel=1e-5)


@pytest.mark.skipif(DEVICE != "cuda", reason="bf16 logits of a 49,152-token vocabulary: a GPU run")
def test_bf16_logits_of_the_embedded_vocabulary():
    student, teacher, ids = logits_pair(4, 128, 49152, dtype=torch.bfloat16)
    ref_loss, ref_parts, ref_grad = loss_and_grad(student, teacher, ids, 2.0, 0.7, fused=False)
    loss, parts, grad = loss_and_grad(student, teacher, ids, 2.0, 0.7, fused=True)
    assert loss.item() == pytest.approx(ref_loss.item(), rel=1e-4)
    assert ((grad.float() - ref_grad.float()).norm() / ref_grad.float().norm()).item() < 1e-2
