"""What stops the decode-speed targets of the Marlin-style kernel (GPU only): one record, kernels/LIMITS.json.

    python -m kernels.limits [--json kernels/LIMITS.json]

Three floors, each one a faster kernel or decode step would have to go under:
- **The bytes.** A plain streaming read of exactly the layer's codes, scales and zeros (`streaming_read_us`: a
  Triton kernel that loads every byte once and keeps one number per block), rotated over copies larger than
  twice the L2 like every timing here: the least time any W4A16 kernel can take on the layer, and bf16 time /
  it the most it can gain. Beside it, cuBLAS's bf16 product with a [N, K/4] weight (the codes' bytes): one
  vendor kernel's read of that many bytes, not the bandwidth.
- **The kernel's parts.** The kernel as built, and built again with only its copies (the cp.async ring, its
  waits and barriers; no dequantization, no MMA) and with only its math (no copy after the ring's first fill),
  same grid and slices (w4a16.cu, W4A16_PROBE). If the whole takes about the larger part's time, that part is
  the limit; about their sum, the two do not overlap. On layers of a few microseconds (SmolLM2's) the math-only
  build has taken up to 8% longer than the whole kernel on the H200: there the parts are not a split of the time.
- **A kernel's floor.** A CUDA graph of dependent one-element kernels, time per kernel: a decode step of k
  kernels reading B bytes takes at least k times that plus B at the copy bandwidth (`step_floor_us`, with k
  and B from the kernels/DECODE*.json records).
"""
import argparse
import datetime
import json

import torch
import triton
import triton.language as tl

from common.hardware import device_description, machine_ceilings, package_versions

from .bench import time_rotating, weight_copies
from .marlin import choose_splits, load_extension, locks_for

SHAPES = {"llama3-8b gate/up": (14336, 4096), "llama3-8b down": (4096, 14336),  # name: (N, K)
          "smollm2 gate/up": (1536, 576), "smollm2 down": (576, 1536)}
ROWS = (1, 16, 64)
PARTS = {"marlin_us": 0, "copies_only_us": 1, "math_only_us": 2}  # record key: W4A16_PROBE of the build


@triton.jit
def _read_all(src, out, words, BLOCK: tl.constexpr, STEPS: tl.constexpr):
    # Each program reads STEPS x BLOCK consecutive int32 words once (streamed past L2) and stores one word.
    start = tl.program_id(0) * BLOCK * STEPS
    acc = tl.zeros([BLOCK], dtype=tl.int32)
    for step in range(STEPS):
        offsets = start + step * BLOCK + tl.arange(0, BLOCK)
        acc ^= tl.load(src + offsets, mask=offsets < words, other=0, eviction_policy="evict_first")
    tl.store(out + tl.program_id(0), tl.xor_sum(acc, axis=0))


def streaming_read_us(nbytes: int, block: int = 1024, steps: int = 8) -> float:
    """Microseconds to read `nbytes` from DRAM once with a plain streaming kernel, over rotating copies."""
    words = -(-nbytes // 4)
    programs = -(-words // (block * steps))
    buffers = [(torch.randint(-2**31, 2**31 - 1, (words,), device="cuda", dtype=torch.int32),
                torch.empty(programs, device="cuda", dtype=torch.int32)) for _ in range(weight_copies(4 * words))]
    return time_rotating(lambda src, out: _read_all[(programs,)](src, out, words, BLOCK=block, STEPS=steps), buffers)


def layer_bytes(n: int, k: int, group: int) -> int:
    """Bytes of an INT4 layer as the kernel reads them: 4-bit codes, 16-bit scales and zeros per group."""
    return n * k // 2 + 2 * 2 * n * (k // group)


def kernel_floor_us(kernels: int = 200) -> float:
    """Microseconds per kernel of a CUDA graph of `kernels` dependent one-element additions."""
    x = torch.zeros(1, device="cuda")
    return time_rotating(lambda: x.add_(1), [()] * kernels)


def step_floor_us(kernels: int, weight_bytes: int, floor_us: float, bandwidth: float) -> float:
    """The least time a decode step of `kernels` kernels reading `weight_bytes` can take."""
    return kernels * floor_us + weight_bytes / bandwidth * 1e6


def step_parts(bf16: dict, w4a16: dict, bandwidth: float, floor_us: float) -> dict:
    """One model's decode step in µs from two rows of a bench_decode record (bf16 and W4A16, same mode): where
    the W4A16 step's kernel time goes, the step if its linear layers ran at the copy bandwidth (the rest as
    measured), and the floor its kernel count and bytes set. `ceiling` = bf16's step / that perfect-linears
    step: the most any W4A16 kernel could give this step without changing the rest."""
    marlin, rest = w4a16["marlin_us_per_step"], w4a16["kernel_us_per_step"] - w4a16["marlin_us_per_step"]
    perfect = rest + w4a16["weight_bytes"] / bandwidth * 1e6
    bf16_step = 1e6 / bf16["tokens_per_s"]
    return {"bf16_step_us": bf16_step, "w4a16_step_us": 1e6 / w4a16["tokens_per_s"], "marlin_us": marlin,
            "rest_us": rest, "perfect_linears_step_us": perfect, "ceiling": bf16_step / perfect,
            "measured": w4a16["tokens_per_s"] / bf16["tokens_per_s"],
            "floor_step_us": step_floor_us(w4a16["kernels_per_step"], w4a16["weight_bytes"], floor_us, bandwidth)}


def shape_limits(name: str, n: int, k: int, m: int) -> dict:
    """bf16, the code-sized bf16 read, and the kernel whole and in parts, on one layer shape and row count."""
    group = 128 if k % 128 == 0 else 64
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    linear = lambda a, w: a @ w.t()
    dense = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(weight_copies(2 * n * k))]
    code_sized = [torch.randn(n, k // 4, device="cuda", dtype=torch.bfloat16) for _ in range(weight_copies(n * k // 2))]
    row = {"shape": name, "N": n, "K": k, "M": m, "group": group, "layer_bytes": layer_bytes(n, k, group),
           "read_us": streaming_read_us(layer_bytes(n, k, group)),
           "bf16_us": time_rotating(linear, [(x, w) for w in dense]),
           "code_bytes_us": time_rotating(linear, [(x[:, :k // 4].contiguous(), w) for w in code_sized])}
    del dense, code_sized
    # Random codes, scales and zeros in the kernel's layout: its time does not depend on their values.
    weights = [(torch.randint(-2**31, 2**31 - 1, (k // 64, 8 * n), device="cuda", dtype=torch.int32),
                torch.rand(k // group, n, device="cuda", dtype=torch.bfloat16) * 0.01,
                torch.randint(0, 16, (k // group, n), device="cuda").to(torch.bfloat16))
               for _ in range(weight_copies(n * k // 2))]
    row["splits"] = splits = choose_splits(n, k, group, m)
    locks = locks_for(x.device)
    for key, probe in PARTS.items():
        ext = load_extension(probe=probe)
        gemm = lambda q, s, z: ext.w4a16_gemm(x, q, s, z, locks, group, splits, 0, None, 1e-6, False, None,
                                               torch.cuda.current_stream().cuda_stream)
        row[key] = time_rotating(gemm, weights)
    return row


def run() -> dict:
    bandwidth = machine_ceilings("cuda", torch.bfloat16).bandwidth
    rows = [shape_limits(name, n, k, m) for name, (n, k) in SHAPES.items() for m in ROWS]
    return {"device": device_description(), "versions": package_versions(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "copy_bytes_per_s": bandwidth, "kernel_floor_us": kernel_floor_us(), "rows": rows}


def report(record: dict) -> str:
    lines = [f"{record['device']}, {record['date']}: copy bandwidth {record['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
             f"a dependent kernel in a CUDA graph {record['kernel_floor_us']:.2f} µs",
             f"{'shape':18} {'M':>3} {'bf16':>6} {'read':>6} {'ceiling':>8} {'cuBLAS':>7} {'ours':>6} {'vs bf16':>8} "
             f"{'of read':>8} {'copies':>7} {'math':>6}",
             "(µs; read = a streaming read of the layer's codes, scales and zeros; ceiling = bf16 / read; cuBLAS = "
             "bf16 GEMM on a code-sized weight; of read = read / ours)"]
    nan = float("nan")  # records made before the streaming read (2026-12-04) have no read column
    for r in record["rows"]:
        read = r.get("read_us", nan)
        lines.append(f"{r['shape']:18} {r['M']:3d} {r['bf16_us']:6.1f} {read:6.1f} "
                     f"{r['bf16_us'] / read:7.2f}x {r['code_bytes_us']:7.1f} {r['marlin_us']:6.1f} "
                     f"{r['bf16_us'] / r['marlin_us']:7.2f}x {read / r['marlin_us']:7.0%} "
                     f"{r['copies_only_us']:7.1f} {r['math_only_us']:6.1f}")
    if any("read_us" not in r for r in record["rows"]):
        lines.append("(this record predates the streaming-read floor: read, ceiling and of read are empty; "
                     "python -m kernels.limits on a GPU fills them)")
    return "\n".join(lines)


def launch_for_profiler(name: str, m: int, calls: int = 3) -> None:
    """Run the kernel `calls` times on one shape, for Nsight Compute to profile, e.g. how evenly the SMs work:
    ncu --metrics sm__cycles_active.min,sm__cycles_active.avg,sm__cycles_active.max,sm__cycles_elapsed.max
        -k regex:w4a16 python -m kernels.limits --launch "llama3-8b gate/up" 1"""
    from .marlin import repack, w4a16_marlin
    from .bench import quantize_w4
    n, k = SHAPES[name]
    group = 128 if k % 128 == 0 else 64
    packed, s, z, _ = quantize_w4(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, group)
    weight = repack(packed, s, z, group)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    for _ in range(calls):
        w4a16_marlin(x, weight)
    torch.cuda.synchronize()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the record here (kernels/LIMITS.json)")
    parser.add_argument("--launch", nargs=2, metavar=("SHAPE", "M"),
                        help="only run the kernel on one shape and row count (for Nsight Compute)")
    args = parser.parse_args()
    if args.launch:
        launch_for_profiler(args.launch[0], int(args.launch[1]))
        return
    record = run()
    print(report(record))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)


if __name__ == "__main__":
    main()
