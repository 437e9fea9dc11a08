"""The same logit distillation through nvidia-modelopt (`modelopt.torch.distill`), for comparison.

`mtd.convert` wraps the student in a DistillationModel that runs the teacher under no_grad on every
forward and captures the (student, teacher) `lm_head` outputs with hooks; `compute_kd_loss` applies
LogitsDistillationLoss (KL at temperature T, times T^2) and a StaticLossBalancer mixes it with the
student's own CE: (1 - kd_weight)·CE + kd_weight·KD, i.e. kd_weight = 1 - ce_weight. `mtd.export`
removes the wrapper and hooks and returns the plain student.

Found with modelopt 0.47 (runs on the CPU: nothing here needs CUDA):
  - LogitsDistillationLoss(reduction="mean") is `F.kl_div(..., reduction="mean")`, which divides by
    every element, vocabulary included: the KD term is ~vocab_size times smaller than the
    per-token KL (49,152x on SmolLM2). We pass reduction="none" (summed over the vocabulary) and
    average over tokens, which is the textbook loss and the same as common.distill.losses.
  - `mtd.convert` sets requires_grad=False on the teacher's parameters and leaves them so; we restore
    them (a teacher is often the caller's base model, copied again as a student later).
  - the hooks capture all positions, the last one too (which has no next-token target), so its KL
    averages over one more position per window than ours: a tiny difference.
"""
import time
import warnings

import torch
from tqdm.auto import tqdm

from ..errors import WorkshopError
from .losses import next_token_ce
from .train import DistillConfig, DistillHistory, check_teacher, check_training_data, lr_factor, micro_batch


def distill_modelopt(student, config: DistillConfig, train_ids: torch.Tensor, teacher=None, progress: bool = True,
                     history: DistillHistory | None = None):
    """`common.distill.distill` at the same budget, the loss computed by modelopt; returns the student
    (`history`, when given, is filled in as there)."""
    try:
        import modelopt.torch.distill as mtd
    except ImportError as e:
        raise WorkshopError(f"nvidia-modelopt is not importable ({e}).", "pip install nvidia-modelopt==0.47.0")
    check_training_data(train_ids, config)
    if teacher is None:
        raise WorkshopError("modelopt's distillation wraps a student around a teacher, and none was given.",
                            "Pass teacher=..., or common.distill.distill for CE-only fine-tuning.")
    check_teacher(student, teacher, config)
    if config.hidden_loss_weight or config.temperature_end is not None or config.checkpoint_dir:
        raise WorkshopError("distill_modelopt implements the logit loss at a fixed temperature only.",
                            "Use common.distill.distill for hidden-state losses, schedules and checkpoints.")
    device = next(student.parameters()).device
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    torch.manual_seed(config.seed)
    teacher_trainable = {p: p.requires_grad for p in teacher.parameters()}   # mtd.convert freezes the teacher
    student.float().train()
    with warnings.catch_warnings():
        # a KD weight below 1 leaves the rest to the student loss, which compute_kd_loss below does receive
        warnings.filterwarnings("ignore", message="`StaticLossBalancer` weights do not sum to 1.0")
        balancer = mtd.StaticLossBalancer(kd_loss_weight=1.0 - config.ce_weight)
    kd_config = {"teacher_model": teacher,
                 "criterion": {("lm_head", "lm_head"): mtd.LogitsDistillationLoss(config.temperature, reduction="none")},
                 "loss_balancer": balancer}
    model = mtd.convert(student, mode=[("kd_loss", kd_config)])
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    history = DistillHistory() if history is None else history
    history.student_parameters = sum(p.numel() for p in parameters)
    history.teacher_parameters = sum(p.numel() for p in teacher.parameters())
    for step in tqdm(range(config.steps), desc="distill (modelopt)", disable=not progress):
        t0 = time.perf_counter()
        total = 0.0
        for micro in range(config.grad_accum):
            ids = micro_batch(train_ids, config, step * config.grad_accum + micro).to(device)
            with autocast:
                out = model(ids)
                ce = next_token_ce(out.logits, ids)
                loss = model.compute_kd_loss(student_loss=ce, loss_reduction_fn=lambda kl: kl.float().mean())
            (loss / config.grad_accum).backward()
            total += loss.item() / config.grad_accum
        torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        history.seconds += time.perf_counter() - t0
        history.tokens += config.grad_accum * ids.numel()
        history.records.append({"step": step + 1, "loss": total, "lr": schedule.get_last_lr()[0],
                                "temperature": config.temperature, "tokens": history.tokens})
    student = mtd.export(model)
    for p, trainable in teacher_trainable.items():   # the teacher is the caller's model: leave it as it came
        p.requires_grad_(trainable)
    return student.eval()
