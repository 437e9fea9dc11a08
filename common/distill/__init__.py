"""Knowledge distillation: losses (losses.py), the training loop (train.py), the CLI command
(cli.py) and the same recipe through nvidia-modelopt (modelopt_kd.py)."""
from .losses import HiddenStateLoss, forward_kl, kd_loss, next_token_ce, reverse_kl, topk_kl
from .train import DistillConfig, DistillHistory, distill, teacher_generated_ids, training_ids

__all__ = ["DistillConfig", "DistillHistory", "HiddenStateLoss", "distill", "forward_kl", "kd_loss",
           "next_token_ce", "reverse_kl", "teacher_generated_ids", "topk_kl", "training_ids"]
