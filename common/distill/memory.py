"""GPU memory of a distillation step, per GPU, from the two models' configs: the arithmetic that decides
whether a teacher and a student fit on one card, and how many cards FSDP2 must spread them over.

Counted: the student's fp32 weights, gradients and AdamW's two moments (16 bytes per parameter), the
teacher's weights in its dtype (no gradients, no optimizer), each divided by the number of GPUs when
sharded, and the logits of one micro-batch per GPU (student and teacher in bf16, and the gradient the
fused loss writes). Not counted: the other activations kept for the backward pass (they depend on the
sequence length, checkpointing and the attention kernel; measure them, as lab 04 does), FSDP2's
gathered layer (one layer's full weights at a time) and the allocator's slack.
"""
from dataclasses import dataclass

STUDENT_BYTES_PER_PARAMETER = 4 + 4 + 8   # fp32 weight, fp32 gradient, AdamW's m and v
LOGIT_COPIES = 3                          # student logits, teacher logits, their gradient (bf16 each)


def parameter_count(config) -> int:
    """Parameters of a transformers causal LM built from `config`, counted on the meta device (no memory)."""
    import torch
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


@dataclass
class DistillMemory:
    student_parameters: int
    teacher_parameters: int
    gpus: int
    teacher_sharded: bool
    teacher_bytes_per_parameter: int = 2   # bf16
    tokens_per_gpu: int = 0                # windows x sequence length of one micro-batch on one GPU
    vocab_size: int = 0

    @property
    def student_bytes(self) -> float:
        return STUDENT_BYTES_PER_PARAMETER * self.student_parameters / self.gpus

    @property
    def teacher_bytes(self) -> float:
        whole = self.teacher_bytes_per_parameter * self.teacher_parameters
        return whole / self.gpus if self.teacher_sharded else whole

    @property
    def logits_bytes(self) -> float:
        return LOGIT_COPIES * 2 * self.tokens_per_gpu * self.vocab_size

    @property
    def total_bytes(self) -> float:
        return self.student_bytes + self.teacher_bytes + self.logits_bytes
