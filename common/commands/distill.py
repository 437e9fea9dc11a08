"""`workshop distill`: recover a (pruned) student by distilling from a teacher; writes a checkpoint that
loads with from_pretrained."""
from dataclasses import asdict
from pathlib import Path

from . import Output, add_data_options, perplexity_dict, perplexity_lines, protocol_from
from ..errors import WorkshopError

HELP = "Distil a teacher into a (pruned) student: alpha*CE + (1-alpha)*T^2*KL."


def add_arguments(p) -> None:
    p.add_argument("--student", required=True, help="the student: a directory written by save_pretrained (or tiny-random)")
    p.add_argument("--teacher", help="the teacher's model spec (default: --model)")
    p.add_argument("--steps", type=int, help="optimizer steps (default: the mode's budget)")
    p.add_argument("--temperature", type=float, default=2.0, help="softmax temperature T of the KL term")
    # Defaults: lab 04's main run, so `workshop distill --student DIR --eval` reproduces its KD row and
    # `--alpha 1` its CE-only row.
    p.add_argument("--alpha", type=float, default=0.2, help="weight of the data's cross-entropy (1 = CE-only fine-tuning)")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (AdamW, warm-up over a tenth of the "
                   "steps, cosine decay)")
    p.add_argument("--batch", type=int, help="windows per micro-batch (default: the mode's budget)")
    p.add_argument("--train-seqlen", type=int, help="tokens per training window (default: the mode's budget)")
    p.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (same tokens, less memory)")
    p.add_argument("--hidden-loss-weight", type=float, default=0.0, help="weight of the hidden-state MSE (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", action="store_true", help="perplexity of teacher and student before and after")
    p.add_argument("--checkpoint-every", type=int, default=0,
                   help="save a resumable checkpoint in OUT.checkpoint every N steps (a rerun resumes from it)")
    p.add_argument("--out", help="write the trained student here (save_pretrained)")
    add_data_options(p, calibrate=False, train=True)


def run(args) -> Output:
    from ..budgets import get_budget
    from ..eval import check_seqlen
    from ..models import load_model, save_pretrained_atomic
    from ..distill.train import DistillConfig, distill
    budget = get_budget()
    protocol = protocol_from(args)

    def given(value, default):  # 0 is a value (and an error), not "use the default"
        return default if value is None else value

    steps = given(args.steps, budget.train_steps)
    config = DistillConfig(steps=steps, temperature=args.temperature, alpha=args.alpha, lr=args.lr,
                           warmup_steps=steps // 10, batch=given(args.batch, budget.train_batch),
                           seqlen=given(args.train_seqlen, budget.train_seqlen),
                           grad_accum=args.grad_accum, seed=args.seed, hidden_loss_weight=args.hidden_loss_weight,
                           checkpoint_dir=f"{args.out}.checkpoint" if args.out and args.checkpoint_every else None,
                           checkpoint_every=args.checkpoint_every)
    config.validate()  # before loading anything: bad numbers fail in a second
    if args.student != "tiny-random" and not Path(args.student).expanduser().is_dir():
        raise WorkshopError(f"--student {args.student} is not a directory.",
                            "Give the directory of a pruned model (e.g. written by `workshop prune --out DIR`).")
    student, tokenizer = load_model(args.student, dtype=args.dtype, device=args.device)
    saved_dtype = student.dtype
    teacher, _ = load_model(args.teacher or args.model, dtype=args.dtype, device=args.device)
    check_seqlen(student, config.seqlen)
    data = protocol.training(tokenizer)
    result = {"student": args.student, "teacher": args.teacher or args.model, "config": asdict(config),
              "mode": budget.mode, "train_data": protocol.train_data, "train_tokens": data.numel(),
              "epochs": steps * config.batch * config.grad_accum * config.seqlen / data.numel()}
    lines = [f"training text {protocol.train_data}:train, {data.numel():,} tokens: {result['epochs']:.2f} epochs "
             f"at this budget"]
    if args.eval:
        teacher_ppl, before = protocol.evaluate(teacher, tokenizer), protocol.evaluate(student, tokenizer)
        result["teacher_ppl"], result["student_ppl_before"] = perplexity_dict(teacher_ppl), perplexity_dict(before)
        lines += perplexity_lines(teacher_ppl, "PPL teacher       ") + perplexity_lines(before, "PPL student before")
    student, history = distill(student, teacher, config, data)
    summary = history.to_dict()
    summary.pop("records")
    result |= summary | {"first_loss": history.records[0]["loss"], "last_loss": history.records[-1]["loss"]}
    lines.insert(0, f"trained {config.steps} steps on {history.tokens:,} tokens in {history.seconds:.1f} s "
                    f"({history.tokens_per_s:,.0f} tok/s); loss {result['first_loss']:.3f} -> {result['last_loss']:.3f}")
    if args.eval:
        after = protocol.evaluate(student, tokenizer)
        result["student_ppl_after"] = perplexity_dict(after)
        lines += perplexity_lines(after, "PPL student after ")
    if args.out:
        save_pretrained_atomic(student.to(saved_dtype), tokenizer, args.out)
        result["out"] = args.out
        lines.append(f"student written to {args.out} (loads with from_pretrained)")
    return Output(result, "\n".join(lines))
