"""`workshop bench-kernels`: time the GEMM paths on the GPU; writes kernels/RESULTS.md (.json, .png)."""
import json
from pathlib import Path

from . import Output

HELP = ("Time the GEMM paths (bf16, W4A16, tinygemm, INT8, FP8, 2:4) on Llama-3-8B- and SmolLM2-shaped "
        "linears (GPU).")


def add_arguments(p) -> None:
    p.add_argument("--shapes", help="comma-separated shape names (default: all); see kernels/bench.py")
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[2] / "kernels" / "RESULTS.md"),
                   help="markdown report (a .json and a .png roofline are written beside it)")


def run(args) -> Output:
    import torch
    from kernels import bench
    from ..hardware import machine_ceilings
    from ..paths import write_json_atomic
    result = bench.run(shapes=args.shapes.split(",") if args.shapes else None)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(out.with_suffix(".json").read_text()) if out.with_suffix(".json").exists() else None
    write_json_atomic(out.with_suffix(".json"), result)
    ceilings = machine_ceilings("cuda", torch.bfloat16)
    bench.plot_roofline(result, out.with_suffix(".png"), ceilings.bandwidth, ceilings.matmul_flops)
    text = bench.markdown(result) + (f"\n{bench.agreement(previous, result)}" if previous else "") + \
        f"\n![roofline]({out.with_suffix('.png').name})\n"
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    return Output(result, text)
