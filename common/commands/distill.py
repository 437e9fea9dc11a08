"""`workshop distill`: recover a (pruned) student by distilling from a teacher; writes a checkpoint that
loads with from_pretrained.

On several GPUs: `torchrun --nproc-per-node N -m common distill ...` runs it once per GPU, with the
student and teacher sharded over them (FSDP2, common/distill/distributed.py); rank 0 alone prints
and writes. --batch is the global batch, split evenly over the N GPUs.
"""
from dataclasses import asdict
from pathlib import Path

from . import Output, add_data_options, perplexity_dict, perplexity_lines, protocol_from
from ..errors import WorkshopError
from ..outputs import check_new_output, reported_write_errors

HELP = "Distil a teacher into a (pruned) student: ce_weight*CE + (1-ce_weight)*T^2*KL."


def add_arguments(p) -> None:
    p.add_argument("--student", required=True, help="the student: a directory written by save_pretrained (or tiny-random)")
    p.add_argument("--teacher", help="the teacher's model spec (default: --model)")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the mode's budget)")
    p.add_argument("--temperature", type=float, default=2.0, help="softmax temperature T of the KL term")
    # Defaults: lab 04's main run, so `workshop distill --student DIR --eval` reproduces its KD row and
    # `--ce-weight 1` its CE-only row.
    p.add_argument("--ce-weight", type=float, default=0.2, help="weight of the data's cross-entropy (1 = CE-only fine-tuning)")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (AdamW, warm-up over a tenth of the "
                   "steps, cosine decay)")
    p.add_argument("--batch", type=int, help="windows per micro-batch, over all GPUs under torchrun (default: the "
                   "mode's budget)")
    p.add_argument("--train-seqlen", type=int, help="tokens per training window (default: the mode's budget)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (same tokens, less memory)")
    p.add_argument("--hidden-loss-weight", type=float, default=0.0, help="weight of the hidden-state MSE (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher-placement", choices=("sharded", "replicated"), default="sharded",
                   help="under torchrun: the teacher sharded over the GPUs like the student (least memory), or a "
                   "whole copy on each GPU (no communication for its forward)")
    p.add_argument("--eval", action="store_true", help="perplexity of teacher and student before and after")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="save a resumable checkpoint in OUT.checkpoint every N steps (a rerun resumes from it)")
    p.add_argument("--out", help="write the trained student here (save_pretrained)")
    add_data_options(p, calibrate=False, train=True)


def run(args) -> Output:
    from ..budgets import get_budget
    from ..distill import distributed
    from ..distill.train import DistillConfig
    from ..models import resolve_device
    budget = get_budget()
    protocol = protocol_from(args)

    def given(value, default):  # 0 is a value (and an error), not "use the default"
        return default if value is None else value

    steps = given(args.steps, budget.train_steps)
    # made (and so checked) before anything loads: bad numbers fail in a second
    config = DistillConfig(steps=steps, temperature=args.temperature, ce_weight=args.ce_weight, lr=args.lr,
                           warmup_steps=steps // 10, batch=given(args.batch, budget.train_batch),
                           seqlen=given(args.train_seqlen, budget.train_seqlen),
                           grad_accum=args.grad_accum, seed=args.seed, hidden_loss_weight=args.hidden_loss_weight,
                           checkpoint_dir=f"{args.out}.checkpoint" if args.out and args.checkpoint_every else None,
                           checkpoint_every=args.checkpoint_every, teacher_placement=args.teacher_placement)
    if args.student != "tiny-random" and not (Path(args.student).expanduser() / "config.json").is_file():
        what = "is not a model folder (it has no config.json)" if Path(args.student).expanduser().is_dir() else \
            "is not a directory"
        raise WorkshopError(f"--student {args.student} {what}.",
                            "Give the folder of a pruned model, e.g. one written by `workshop prune --method width "
                            "--sparsity 0.3 --out pruned` (then --student pruned).")
    if args.out:
        check_new_output(args.out, example="recovered")
    device = distributed.rank_device(resolve_device(args.device))
    with distributed.process_group(device):
        return _distill(args, config, protocol, budget.mode, device)


def _distill(args, config, protocol, mode: str, device) -> Output:
    """Load, (evaluate,) train, (evaluate,) write: on every rank under torchrun, which is why the
    evaluations and the gathering of the weights run everywhere, and only rank 0 writes."""
    from ..distill import distributed
    from ..distill.train import DistillHistory, distill
    from ..eval import check_seqlen
    from ..models import load_model
    progress = distributed.is_main()  # the evaluations' progress bars: rank 0's alone
    student, tokenizer = load_model(args.student, dtype=args.dtype, device=device)
    saved_dtype = student.dtype
    teacher, _ = load_model(args.teacher or args.model, dtype=args.dtype, device=device)
    check_seqlen(student, config.seqlen)
    data = protocol.training(tokenizer)
    result = {"student": args.student, "teacher": args.teacher or args.model, "config": asdict(config),
              "mode": mode, "world_size": distributed.world_size(), "train_data": protocol.train_data,
              "train_tokens": data.numel(),
              "epochs": config.steps * config.batch * config.grad_accum * config.seqlen / data.numel()}
    lines = [f"training text {protocol.train_data}:train, {data.numel():,} tokens: {result['epochs']:.2f} epochs "
             f"at this budget"]
    if args.eval:
        teacher_ppl = protocol.evaluate(teacher, tokenizer, progress)
        before = protocol.evaluate(student, tokenizer, progress)
        result["teacher_ppl"], result["student_ppl_before"] = perplexity_dict(teacher_ppl), perplexity_dict(before)
        lines += perplexity_lines(teacher_ppl, "PPL teacher       ") + perplexity_lines(before, "PPL student before")
    history = DistillHistory()
    student = distill(student, config, data, teacher=teacher, history=history)
    summary = history.to_dict()
    summary.pop("records")
    result |= summary | {"first_loss": history.records[0]["loss"], "last_loss": history.records[-1]["loss"],
                         "losses": history.losses()}
    on = f" on {distributed.world_size()} processes" if distributed.world_size() > 1 else ""
    lines.insert(0, f"trained {config.steps} steps{on} on {history.tokens:,} tokens in {history.seconds:.1f} s "
                    f"({history.tokens_per_s:,.0f} tok/s); loss {result['first_loss']:.3f} -> {result['last_loss']:.3f}")
    if args.eval:
        after = protocol.evaluate(student, tokenizer, progress)
        result["student_ppl_after"] = perplexity_dict(after)
        lines += perplexity_lines(after, "PPL student after ")
    if args.out:
        with reported_write_errors(args.out):
            _write(student, args.student, saved_dtype, tokenizer, args.out)
        result["out"] = args.out
        lines.append(f"student written to {args.out} (loads with from_pretrained)")
    return Output(result, "\n".join(lines))


def _write(student, spec: str, dtype, tokenizer, out: str) -> None:
    """save_pretrained_atomic by rank 0. Under torchrun the student holds slices of its weights: every
    rank sends its own, and rank 0 puts them into a whole copy of the student, loaded afresh on the CPU."""
    from ..distill import distributed
    from ..models import load_model, save_pretrained_atomic
    if distributed.world_size() > 1:
        weights = distributed.full_model_state(student)
        if not distributed.is_main():
            return
        student, _ = load_model(spec, dtype=dtype, device="cpu", progress=False)
        student.load_state_dict(weights)
    save_pretrained_atomic(student.to(dtype), tokenizer, out)
