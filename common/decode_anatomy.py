"""Where the time of one eager decode step goes, on the device at hand (lab 00).

The bandwidth bound (`eval.decode_bound_tokens_per_s`) assumes that a decode step takes as long as
reading the weights once. An eager step of transformers code is usually far slower, and why depends
on the device, so this module profiles a few steps with torch.profiler and splits their time:

- on a GPU, kernels run asynchronously to Python: `busy_s` is the time the GPU ran kernels; for the
  rest of the step it waited for the CPU to launch the next one (`kernels` counts the launches);
- on a CPU, operators run on the cores that also run Python: `busy_s` is the time spent inside
  PyTorch's operators; the rest is Python and the framework between them.

`matmul_s` is the part of `busy_s` spent in matrix products (aten::mm, addmm, bmm), the operators that
read the weights; `operators` counts the PyTorch operators the model's Python code calls per step.
The profiler slows the CPU side of a step a little, so compare `busy_s` and `matmul_s` with a step
timed without it (`eval.measure_throughput`); `profiled_step_s` is the step as profiled.
"""
import contextlib
import os
import sys
import time
from dataclasses import asdict, dataclass

import torch

from .hardware import sync

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm")


@dataclass
class StepAnatomy:
    device: str
    profiled_step_s: float    # wall time of one step under the profiler
    busy_s: float             # GPU: time kernels ran; CPU: time inside PyTorch's operators
    matmul_s: float           # the part of busy_s in matrix products
    operators: int            # PyTorch operators called from Python per step (not counting those they call)
    kernels: int | None       # GPU kernels launched per step; None on a CPU

    def to_dict(self) -> dict:
        return asdict(self)


def _is_aten(event) -> bool:
    return event.name.startswith("aten::")


def _inside_aten(event) -> bool:
    """Whether an operator was called by another operator (aten::linear calls aten::mm, for instance)."""
    parent = event.cpu_parent
    while parent is not None:
        if _is_aten(parent):
            return True
        parent = parent.cpu_parent
    return False


@contextlib.contextmanager
def _quiet_stderr():
    """Kineto prints "profiler_start" and "profiler_stop" lines on the process's stderr (file descriptor 2,
    below Python): keep them out of the notebook while the profiler starts and stops."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


@torch.inference_mode()
def profile_decode_step(model, prompt_len: int = 64, steps: int = 2, seed: int = 0) -> StepAnatomy:
    """Profile `steps` greedy decode steps at batch 1 after a prompt of `prompt_len` random tokens
    (transformers' KV cache, eager forward calls, as `eval.measure_throughput` times them); per step."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    from transformers import DynamicCache
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), generator=generator).to(device)
    cache = DynamicCache(config=model.config)
    token = model(prompt, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1:].argmax(-1)
    token = model(token, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)  # one untimed step
    on_gpu = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_gpu else [])
    sync(device)
    with _quiet_stderr(), profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            token = model(token, past_key_values=cache, use_cache=True).logits[:, -1:].argmax(-1)
        sync(device)
        wall = time.perf_counter() - start
    events = prof.events()
    operators = [e for e in events if e.device_type == DeviceType.CPU and _is_aten(e)]
    matmuls = [e for e in operators if e.name in MATMUL_OPS]
    if on_gpu:
        kernels = [e for e in events if e.device_type == DeviceType.CUDA]
        busy_us = sum(e.time_range.elapsed_us() for e in kernels)
        matmul_us = sum(e.device_time_total for e in matmuls)   # the kernels each product launched
        kernel_count = round(len(kernels) / steps)
    else:
        busy_us = sum(e.self_cpu_time_total for e in operators)
        matmul_us = sum(e.self_cpu_time_total for e in matmuls)
        kernel_count = None
    return StepAnatomy(device=str(device), profiled_step_s=wall / steps, busy_s=busy_us / 1e6 / steps,
                       matmul_s=matmul_us / 1e6 / steps,
                       operators=round(sum(not _inside_aten(e) for e in operators) / steps), kernels=kernel_count)
