"""Knowledge distillation: losses (losses.py), the training loop (train.py) and the same recipe
through nvidia-modelopt (modelopt_kd.py); `workshop distill` is common/commands/distill.py."""
from .losses import HiddenStateLoss, forward_kl, kd_loss, next_token_ce, reverse_kl, topk_kl
from .train import DistillConfig, DistillHistory, distill, teacher_generated_ids, training_ids

__all__ = ["DistillConfig", "DistillHistory", "HiddenStateLoss", "distill", "forward_kl", "kd_loss",
           "next_token_ce", "reverse_kl", "teacher_generated_ids", "topk_kl", "training_ids"]
