"""The distillation loop: a student learns from a teacher's logits (and optionally hidden states).

`distill(student, DistillConfig(...), train_ids, teacher=teacher) -> student`, the shape of every
technique here (`quantize_gptq(model, config, calib_batch)`); pass `history=DistillHistory()` to read
its losses, tokens and time afterwards. With ce_weight=1 and no teacher it is plain cross-entropy
fine-tuning, the same loop, so the two compare at equal tokens.

- train_ids: a 1-D tensor of token ids (each micro-batch is `batch` windows of `seqlen` at offsets
  drawn from the seed and the step, so a resumed run sees the same batches), or a 2-D tensor of
  prepared windows used in order (curricula, teacher-generated text).
- precision: the student trains in fp32 weights with bf16 autocast on a GPU, fp32 on a CPU; the
  teacher runs in eval mode under no_grad, in whatever dtype it was loaded.
- checkpoints: every `checkpoint_every` steps the student (save_pretrained) and the optimizer,
  schedule and history go to `checkpoint_dir`, written aside and renamed, so a crash never leaves a
  half-written checkpoint; a later call with the same directory resumes from it.
- several GPUs: under `torchrun --nproc-per-node N` the same loop runs on every rank (distributed.py):
  the student (and by default the teacher) is sharded with FSDP2, rank r trains on rows r::N of each
  micro-batch of `batch` windows (the same global batch as one process), logged losses are averaged
  over the ranks once per step, and rank 0 alone shows progress and writes checkpoints. Checkpoints
  hold whole tensors keyed by name, so a run resumes on any number of ranks. The student comes back
  sharded; `distributed.full_model_state(student)` gathers its weights.
"""
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data import DEFAULT_TRAIN, generated_ids, sample_windows, training_ids
from ..errors import WorkshopError
from ..paths import written_aside
from . import distributed
from .losses import HiddenStateLoss, kd_loss

TRAIN_STATE = "train_state.pt"


@dataclass(frozen=True)
class DistillConfig:
    steps: int = 20
    temperature: float = 2.0
    ce_weight: float = 0.5             # weight of the data's cross-entropy; 1.0 = CE-only fine-tuning
    lr: float = 1e-4
    batch: int = 4                     # windows per micro-batch, over all ranks
    seqlen: int = 256
    grad_accum: int = 1                # micro-batches per optimizer step
    seed: int = 0
    hidden_loss_weight: float = 0.0    # > 0 adds the hidden-state MSE (HiddenStateLoss)
    hidden_layers: int = 4             # student layers matched (evenly spaced, the last included)
    temperature_end: float | None = None  # a linear temperature schedule from `temperature` to this
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 0          # 0: only at the end (when checkpoint_dir is set)
    teacher_placement: str = "sharded"  # under torchrun: "sharded" (FSDP2, 1/N of it per GPU) or "replicated"

    def __post_init__(self):
        if self.steps <= 0:
            raise WorkshopError(f"steps={self.steps}: training needs at least one step.", "Use --steps 1 or more.")
        if self.temperature <= 0 or (self.temperature_end is not None and self.temperature_end <= 0):
            raise WorkshopError(f"temperature={self.temperature}: a softmax temperature must be positive.",
                                "Use --temperature above 0 (1 to 4 is usual; 1 is the plain softmax).")
        if not 0.0 <= self.ce_weight <= 1.0:
            raise WorkshopError(f"ce_weight={self.ce_weight} is not a weight between 0 and 1.",
                                "Use --ce-weight in [0, 1]: 1 is CE only, 0 is KD only.")
        if self.lr <= 0 or self.weight_decay < 0 or self.max_grad_norm <= 0:
            raise WorkshopError(f"lr={self.lr}, weight_decay={self.weight_decay}, max_grad_norm={self.max_grad_norm}: "
                                "the optimizer needs a positive rate and clipping norm.",
                                "Use --lr above 0 (e.g. 2e-4), weight_decay >= 0 and max_grad_norm > 0.")
        if self.hidden_loss_weight < 0 or self.hidden_layers < 1:
            raise WorkshopError(f"hidden_loss_weight={self.hidden_loss_weight}, hidden_layers={self.hidden_layers}: "
                                "a loss weight cannot be negative and at least one layer is matched.",
                                "Use --hidden-loss-weight 0 (off) or above, and hidden_layers >= 1.")
        if min(self.batch, self.seqlen - 1, self.grad_accum) < 1:
            raise WorkshopError(f"batch={self.batch}, seqlen={self.seqlen}, grad_accum={self.grad_accum} "
                                "leave nothing to train on.", "Use batch >= 1, seqlen >= 2, grad_accum >= 1.")
        if not 0 <= self.warmup_steps <= self.steps or self.checkpoint_every < 0:
            raise WorkshopError(f"warmup_steps={self.warmup_steps}, checkpoint_every={self.checkpoint_every} with "
                                f"steps={self.steps}: the warm-up is part of the run, and checkpoints come every N >= 0 steps.",
                                "Use 0 <= warmup_steps <= steps (a tenth of them is usual) and checkpoint_every >= 0 "
                                "(0: at the end only).")
        if self.batch % distributed.world_size():
            ranks = distributed.world_size()
            raise WorkshopError(f"batch={self.batch} windows do not split evenly over {ranks} processes.",
                                f"Use a batch that is a multiple of {ranks} (e.g. {-(-self.batch // ranks) * ranks}; "
                                "--grad-accum keeps the memory per GPU), or another --nproc-per-node.")
        if self.teacher_placement not in ("sharded", "replicated"):
            raise WorkshopError(f"teacher_placement={self.teacher_placement!r} is not a placement.",
                                "Use 'sharded' (1/N of the teacher per GPU) or 'replicated' (a whole copy on each).")

    @property
    def needs_teacher(self) -> bool:
        """Whether a loss term reads the teacher (only CE-only fine-tuning trains without one)."""
        return self.ce_weight < 1.0 or self.hidden_loss_weight > 0

    def temperature_at(self, step: int) -> float:
        if self.temperature_end is None or self.steps == 1:
            return self.temperature
        return self.temperature + (self.temperature_end - self.temperature) * step / (self.steps - 1)


@dataclass
class DistillHistory:
    records: list = field(default_factory=list)   # one dict per optimizer step
    tokens: int = 0                  # student tokens trained on
    seconds: float = 0.0             # training time, excluding checkpoints
    peak_memory_bytes: int | None = None
    student_parameters: int = 0
    teacher_parameters: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else float("nan")

    @property
    def model_flops_per_s(self) -> float:
        """6 FLOPs per student parameter per token (forward + backward), 2 per teacher parameter.

        Attention's own FLOPs are left out (small at these sequence lengths), as in the MFU convention.
        """
        flops_per_token = 6 * self.student_parameters + 2 * self.teacher_parameters
        return flops_per_token * self.tokens_per_s

    def resume_from(self, saved: dict) -> None:
        """Take over a checkpoint's history (asdict of the run that wrote it), in place."""
        for name, value in saved.items():
            setattr(self, name, value)

    def losses(self, key: str = "loss") -> list:
        return [r[key] for r in self.records]

    def to_dict(self) -> dict:
        return asdict(self) | {"tokens_per_s": self.tokens_per_s, "model_flops_per_s": self.model_flops_per_s}


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def micro_batch(data: torch.Tensor, config: DistillConfig, index: int) -> torch.Tensor:
    if data.dim() == 2:  # prepared windows, in order, wrapping around
        rows = torch.arange(index * config.batch, (index + 1) * config.batch) % data.size(0)
        return data[rows]
    return sample_windows(data, config.batch, config.seqlen, seed=config.seed * 1_000_003 + index)


def check_training_data(data: torch.Tensor, config: DistillConfig) -> None:
    if data.dim() == 1 and data.numel() <= config.seqlen:
        raise WorkshopError(f"The training text has {data.numel()} tokens, too few for one window of "
                            f"{config.seqlen}.", "Give more training text or a smaller seqlen.")
    if data.dim() == 2 and data.size(0) < config.batch:
        raise WorkshopError(f"There are {data.size(0)} training windows, fewer than one batch of {config.batch}.",
                            "Prepare more windows or use a smaller batch (with grad_accum to keep the tokens).")


def check_teacher(student, teacher, config: DistillConfig) -> None:
    """A teacher where the loss reads one, with the student's vocabulary (logits compare token by token)."""
    if teacher is None and config.needs_teacher:
        raise WorkshopError(f"ce_weight={config.ce_weight}, hidden_loss_weight={config.hidden_loss_weight} weigh a teacher's "
                            "loss, but no teacher was given.",
                            "Pass teacher=..., or ce_weight=1.0 and hidden_loss_weight=0 for CE-only fine-tuning.")
    if teacher is not None and teacher.config.vocab_size != student.config.vocab_size:
        raise WorkshopError(f"The teacher's vocabulary ({teacher.config.vocab_size} tokens) differs from the "
                            f"student's ({student.config.vocab_size}): logits cannot be compared token by token.",
                            "Distil between models that share a tokenizer (e.g. a pruned copy of the teacher).")


def teacher_generated_ids(teacher, tokenizer, n_sequences: int, seqlen: int, batch: int = 8,
                          prompt_tokens: int = 8, seed: int = 0, train_data: str = DEFAULT_TRAIN,
                          cache_dir: str | Path | None = None, progress: bool = True) -> torch.Tensor:
    """Sequence-level KD data: [n_sequences, seqlen] token ids sampled from the teacher itself, each
    sequence started by `prompt_tokens` tokens of the training text (cached on disk)."""
    prompts = sample_windows(training_ids(tokenizer, train_data), n_sequences, prompt_tokens, seed=seed)
    return generated_ids(teacher, tokenizer, prompts, seqlen, batch=batch, seed=seed, cache_dir=cache_dir,
                         progress=progress)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def save_checkpoint(directory: Path, student, state: dict) -> None:
    """The student (save_pretrained) and the training state, written aside then swapped in.

    Collective under torchrun: every rank sends its slices of the weights, rank 0 writes, and the
    others wait for it, so none runs ahead of a checkpoint that is not there yet."""
    weights = distributed.full_model_state(student)
    if distributed.is_main():
        with written_aside(directory, folder=True, replace=True) as tmp:
            student.save_pretrained(tmp, state_dict=weights)
            torch.save(state, tmp / TRAIN_STATE)
    distributed.barrier()


def load_checkpoint(directory: Path, student) -> dict | None:
    if not (directory / TRAIN_STATE).is_file():
        return None
    from ..quant.checkpoint import load_state
    load_state(student, directory, "Resume with the same student, or point checkpoint_dir at a new directory.")
    return torch.load(directory / TRAIN_STATE, weights_only=False)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def _layer_pairs(n_student: int, n_teacher: int, count: int) -> list:
    """(student, teacher) indices into output_hidden_states at the same relative depth, last included."""
    count = max(1, min(count, n_student))
    student_layers = [round(n_student * (i + 1) / count) for i in range(count)]
    return [(s, round(s * n_teacher / n_student)) for s in student_layers]


def lr_factor(step: int, config: DistillConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak rate."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def _shard(student, teacher, hidden_loss, config: DistillConfig) -> None:
    """FSDP2 over the ranks (nothing in a single process). A replicated teacher runs whole on each rank,
    with no communication: faster when it fits on one GPU, but memory is the point of sharding."""
    if distributed.world_size() == 1:
        return
    distributed.shard(student, student.model.layers)
    if teacher is not None and config.teacher_placement == "sharded":
        distributed.shard(teacher, teacher.model.layers)
    if hidden_loss is not None and list(hidden_loss.parameters()):  # its projections train with the student
        distributed.shard(hidden_loss)


def distill(student, config: DistillConfig, train_ids: torch.Tensor, teacher=None, progress: bool = True,
            history: DistillHistory | None = None):
    """Train `student` on `train_ids` against `teacher` (None for CE-only fine-tuning, ce_weight=1); returns
    the student, in fp32 and eval mode (sharded under torchrun).

    `history`, when given, is filled in step by step (a resumed run's holds the earlier steps too): its
    tokens count every rank's, its peak memory is this rank's.
    """
    check_training_data(train_ids, config)
    check_teacher(student, teacher, config)
    history = DistillHistory() if history is None else history
    device = next(student.parameters()).device
    distributed.init(device)
    ranks, rank = distributed.world_size(), distributed.rank()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    student.float().train()
    if teacher is not None:
        teacher.eval()
    use_hidden = config.hidden_loss_weight > 0
    teacher_needed = config.needs_teacher   # check_teacher: then there is one
    torch.manual_seed(config.seed)
    hidden_loss = HiddenStateLoss(student.config.hidden_size, teacher.config.hidden_size,
                                  _layer_pairs(student.config.num_hidden_layers, teacher.config.num_hidden_layers,
                                               config.hidden_layers)).to(device) if use_hidden else None
    history.student_parameters = sum(p.numel() for p in student.parameters())
    history.teacher_parameters = sum(p.numel() for p in teacher.parameters()) if teacher is not None else 0
    checkpoint_dir = Path(config.checkpoint_dir) if config.checkpoint_dir else None
    # weights load whole, before sharding: every rank reads the checkpoint, sharding then keeps its slice
    state = load_checkpoint(checkpoint_dir, student) if checkpoint_dir is not None else None
    if state is not None and use_hidden:
        hidden_loss.load_state_dict(state["hidden_loss"])
    _shard(student, teacher if teacher_needed else None, hidden_loss, config)

    # the modules the optimizer updates, under the names its checkpointed state is keyed by
    trained = torch.nn.ModuleDict({"student": student} | ({"hidden_loss": hidden_loss} if use_hidden else {}))
    parameters = list(trained.parameters())
    # fused: one kernel for every parameter's update on a GPU instead of a dozen per tensor group
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay, betas=(0.9, 0.95),
                                  fused=device.type == "cuda")
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    start = 0
    if state is not None:
        distributed.load_full_optimizer_state(trained, optimizer, state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        history.resume_from(state["history"])
        start = state["step"]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    bar = tqdm(range(start, config.steps), desc="distill" if teacher_needed else "fine-tune",
               initial=start, total=config.steps, disable=not (progress and distributed.is_main()))
    for step in bar:
        t0 = time.perf_counter()
        temperature = config.temperature_at(step)
        totals = {"loss": 0.0, "ce": 0.0, "kl": 0.0, "hidden": 0.0}  # tensors, read once per step
        try:
            for micro in range(config.grad_accum):
                # this rank's share of the global micro-batch: every rank draws the same windows
                ids = micro_batch(train_ids, config, step * config.grad_accum + micro)[rank::ranks].to(device)
                with autocast:
                    teacher_out = None
                    if teacher_needed:
                        with torch.no_grad():
                            teacher_out = teacher(ids, output_hidden_states=use_hidden)
                    out = student(ids, output_hidden_states=use_hidden)
                    loss, parts = kd_loss(out.logits, teacher_out.logits if teacher_out is not None else None,
                                          ids, temperature, config.ce_weight)
                    if use_hidden:
                        hidden = hidden_loss(out.hidden_states, teacher_out.hidden_states)
                        loss = loss + config.hidden_loss_weight * hidden
                        parts["hidden"] = hidden.detach()
                (loss / config.grad_accum).backward()
                for k, v in (parts | {"loss": loss.detach()}).items():
                    totals[k] = totals[k] + v / config.grad_accum
        except torch.cuda.OutOfMemoryError:
            raise WorkshopError(f"CUDA ran out of memory at batch={config.batch}, seqlen={config.seqlen} "
                                f"(peak {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB).",
                                f"Use a smaller batch with gradient accumulation, e.g. batch={max(1, config.batch // 2)}, "
                                f"grad_accum={2 * config.grad_accum} (the same tokens per step), or a shorter seqlen.")
        torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        # averaged over the ranks (their shares are the same size), one all-reduce per step
        means = distributed.mean_over_ranks(torch.stack([torch.as_tensor(v, device=device) for v in totals.values()]))
        totals = dict(zip(totals, means.tolist()))
        seconds = time.perf_counter() - t0  # tolist() waited for the step to finish
        tokens = config.grad_accum * ids.numel() * ranks
        history.tokens += tokens
        history.seconds += seconds
        history.records.append({"step": step + 1, **totals, "lr": schedule.get_last_lr()[0],
                                "temperature": temperature, "tokens": history.tokens})
        bar.set_postfix(loss=f"{totals['loss']:.3f}", tok_s=f"{tokens / seconds:,.0f}")
        last = step + 1 == config.steps
        if checkpoint_dir is not None and (last or (config.checkpoint_every and (step + 1) % config.checkpoint_every == 0)):
            save_checkpoint(checkpoint_dir, student, {
                "step": step + 1, "optimizer": distributed.full_optimizer_state(trained, optimizer),
                "schedule": schedule.state_dict(), "history": asdict(history), "config": asdict(config),
                "hidden_loss": distributed.full_model_state(hidden_loss) if use_hidden else None})
    if device.type == "cuda":
        history.peak_memory_bytes = torch.cuda.max_memory_allocated(device)
    return student.eval()
