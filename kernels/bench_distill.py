"""Where a distillation step's time goes, on a GPU: the loss alone (formulas vs the fused kernel), then
whole steps of `common.distill.distill`, with a profile of how much of the step the GPU was busy.

    python -m kernels.bench_distill [--steps 20] [--json OUT.json]

The models are random Llamas with the embedded model's shapes (SmolLM2-135M: 30 layers, width 576,
vocabulary 49,152): weights do not change the speed. The student trains in fp32 weights under bf16
autocast, the teacher runs in bf16, one micro-batch of 32 x 512 tokens: lab 05's full-mode KD step.
"""
import argparse
import json
import time
from dataclasses import replace

import torch

from common.distill import DistillConfig, DistillHistory, distill, kd_loss
from common.hardware import device_description, median_seconds, package_versions

EMBEDDED_SHAPES = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                       num_attention_heads=9, num_key_value_heads=3, head_dim=64, tie_word_embeddings=True,
                       max_position_embeddings=8192)


def embedded_shaped(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**EMBEDDED_SHAPES)).cuda()


def time_loss(batch: int, seqlen: int, fused: bool, repeats: int = 10) -> float:
    """Milliseconds for the loss's forward and backward on bf16 logits (median of `repeats`)."""
    vocab = EMBEDDED_SHAPES["vocab_size"]
    student = torch.randn(batch, seqlen, vocab, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    teacher = torch.randn(batch, seqlen, vocab, device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(0, vocab, (batch, seqlen), device="cuda")
    def forward_and_backward():
        student.grad = None
        kd_loss(student, teacher, ids, 2.0, 0.7, fused=fused)[0].backward()
    return 1e3 * median_seconds(forward_and_backward, student.device, repeats)


def time_steps(steps: int, batch: int, seqlen: int) -> dict:
    """Whole `distill` steps: tokens/s and seconds per step, then a profile of three more steps."""
    teacher = embedded_shaped(0).to(torch.bfloat16).eval()
    student = embedded_shaped(1)
    data = torch.randint(0, EMBEDDED_SHAPES["vocab_size"], (1_000_000,))
    config = DistillConfig(steps=2, batch=batch, seqlen=seqlen, ce_weight=0.7, temperature=2.0)
    distill(student, config, data, teacher=teacher, progress=False)  # warm-up: allocator, kernels' compilation
    history = DistillHistory()
    distill(student, replace(config, steps=steps), data, teacher=teacher, progress=False, history=history)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        distill(student, replace(config, steps=3), data, teacher=teacher, progress=False)
        wall = time.perf_counter() - t0
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_device_time_total, reverse=True)[:12]
    return {"seconds_per_step": history.seconds / steps, "tokens_per_s": history.tokens_per_s,
            "peak_memory_gib": history.peak_memory_bytes / 2**30,
            "gpu_busy_fraction": gpu_us / 1e6 / wall,
            "kernel_launches_per_step": sum(e.count for e in events if e.device_type.name == "CUDA") / 3,
            "top_kernels_ms_per_step": {e.key[:80]: e.self_device_time_total / 1e3 / 3 for e in top}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    result = {"device": device_description(), "versions": package_versions(),
              "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "batch": args.batch, "seqlen": args.seqlen,
              "loss_ms": {"formulas": time_loss(args.batch, args.seqlen, fused=False),
                          "fused": time_loss(args.batch, args.seqlen, fused=True)}}
    torch.cuda.empty_cache()
    result["step"] = time_steps(args.steps, args.batch, args.seqlen)
    print(json.dumps(result, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
