"""Batch-1 decode speed on real models' shapes: bf16 against W4A16 (GPU only).

    python -m kernels.bench_decode [--specs llama-1b-shaped llama-8b-layer] [--modes compiled ...] [--json OUT.json]

The models are random weights in the shapes of `common.models.SHAPED_SPECS` (decode time depends on
shapes, not values), so the speed-ups are those a 135M model's launch overhead hides. W4A16: every
linear layer, the head included, round-to-nearest INT4 with groups of 128, or 64 where 128 does not
divide a layer's input (smollm2-135m-shaped: 576) (QuantLinear; on a GPU its
forward runs the Marlin-style kernel for up to 64 rows). Decoded by `common.decode.StaticGreedyDecoder`
(static KV cache, one CUDA graph per step) with the lean step in four ways: eager, compiled,
compiled with each layer's rotary + KV write + attention in one kernel (kernels/decode_attention.py),
and that with the INT4 layers' RMSNorm, SiLU x up and residual add inside the Marlin-style kernel
(`fused_linears`; bf16 has no such layers, so its last two rows are the same step measured twice);
tokens/s is the median of 3 repeats of 128 tokens after a 64-token prompt. Each row also gives the
weight bytes a step reads, the bound that sets at the device's copy bandwidth, and the kernels one step
launches with their summed GPU time (the profiler, one step outside the graph): where that sum is far
below the step's time, the step waits between kernels, not in them; and the part of it spent in the
Marlin-style kernel (kernels/limits.py uses it).
"""
import argparse
import datetime
import json

import torch

from common.decode import StaticGreedyDecoder
from common.eval import decode_bound_tokens_per_s
from common.hardware import device_description, machine_ceilings, median_seconds, package_versions
from common.models import load_model
from common.quant.qlinear import QuantLinear, replace_linears

PROMPT, NEW_TOKENS = 64, 128


def weight_bytes(model) -> int:
    """Bytes of the linear layers' stored weights: what one decode step must read at batch 1."""
    total = 0
    for m in model.modules():
        if isinstance(m, QuantLinear):
            total += sum(t.numel() * t.element_size() for t in (m.qweight, m.scales, m.zeros) if t is not None)
        elif isinstance(m, torch.nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
    return total


# mode: (compile, fused_attention, fused_linears)
MODES = {"graph": (False, False, False), "compiled": (True, False, False),
         "compiled, fused attention": (True, True, False), "compiled, fused attention + linears": (True, True, True)}


def decode_run(model, compile: bool, fused_attention: bool, fused_linears: bool, repeats: int = 3) -> dict:
    """Tokens/s at batch 1 (median of repeats after one that captures the graph) and the CUDA kernels
    one step launches (the step run once outside the graph under the profiler)."""
    torch._dynamo.reset()  # every decoder compiles its own step: without this, Dynamo's limit of 8 recompiles ends the run
    decoder = StaticGreedyDecoder(model, 1, PROMPT + NEW_TOKENS + 1, cuda_graph=True, compile=compile, lean=True,
                                  fused_attention=fused_attention, fused_linears=fused_linears)
    prompt = torch.zeros(1, PROMPT, dtype=torch.long)
    seconds = median_seconds(lambda: decoder.decode(NEW_TOKENS), decoder.device, repeats, warmup=1,
                             setup=lambda: decoder.prefill(prompt))
    with torch.inference_mode(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        decoder.step()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return {"tokens_per_s": NEW_TOKENS / seconds, "kernels_per_step": len(kernels),
            "kernel_us_per_step": sum(e.time_range.elapsed_us() for e in kernels),
            "marlin_us_per_step": sum(e.time_range.elapsed_us() for e in kernels if "w4a16_kernel" in e.name)}


def bench(spec: str, copy_bytes_per_s: float, modes: list) -> list:
    rows = []
    for fmt in ("bf16", "w4a16"):
        model, _ = load_model(spec, dtype=torch.bfloat16, device="cuda", progress=False)
        if fmt == "w4a16":
            widths = {m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)}
            group = 128 if all(k % 128 == 0 for k in widths) else 64
            replace_linears(model, "int4", group_size=group, skip=(), progress=False)
        nbytes = weight_bytes(model)
        for mode in modes:
            compile, attention, linears = MODES[mode]
            row = {"spec": spec, "format": fmt, "mode": mode, "compiled": compile, "fused_attention": attention,
                   "fused_linears": linears, **decode_run(model, compile, attention, linears), "weight_bytes": nbytes,
                   "bound_tokens_per_s": decode_bound_tokens_per_s(nbytes, copy_bytes_per_s)}
            row["fraction_of_bound"] = row["tokens_per_s"] / row["bound_tokens_per_s"]
            rows.append(row)
            print(f"{spec:16s} {fmt:5s} {mode:35s} {row['tokens_per_s']:8,.0f} tok/s  "
                  f"{nbytes / 1e6:7.0f} MB/step  bound {row['bound_tokens_per_s']:8,.0f}  "
                  f"{row['fraction_of_bound']:.0%}  {row['kernels_per_step']} kernels/step, "
                  f"{row['kernel_us_per_step']:,.0f} us in them", flush=True)
        del model
        torch.cuda.empty_cache()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", nargs="+", default=["llama-1b-shaped", "llama-8b-layer"])
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--json", help="write the rows and the device here")
    args = parser.parse_args()
    bandwidth = machine_ceilings("cuda", torch.bfloat16).bandwidth  # a 1 GiB copy, read + write
    print(f"copy bandwidth {bandwidth / 1e12:.2f} TB/s")
    rows = [row for spec in args.specs for row in bench(spec, bandwidth, args.modes)]
    for spec in args.specs:
        for mode in args.modes:
            pick = {r["format"]: r["tokens_per_s"] for r in rows if r["spec"] == spec and r["mode"] == mode}
            print(f"{spec} {mode}: W4A16 / bf16 = {pick['w4a16'] / pick['bf16']:.2f}x")
    if args.json:
        record = {"device": device_description(), "versions": package_versions(),
                  "date": datetime.date.today().isoformat(), "copy_bytes_per_s": bandwidth, "rows": rows}
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
