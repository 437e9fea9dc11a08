"""`workshop bench-kernels`: time every GEMM path on Llama-3-8B- and SmolLM2-shaped linears.

Method: each path's calls, cycling over several copies of the weights (together larger than L2, so
no path is timed out of cache), are captured in a CUDA graph after warm-up; the graph's replays are
timed with CUDA events and the median of repeats is reported. Each row reports microseconds, the effective bandwidth on the bytes the path must read
(weights + activations + output), TFLOP/s, and the ratio to bf16 cuBLAS and to tinygemm.
"""
import datetime
import statistics

import torch

from common.errors import WorkshopError
from common.hardware import device_description, package_versions
from common.quant.layout import dequantize_int4, unpack_int4
from common.quant.qlinear import QuantLinear

from .gemm_paths import fp8_linear, int8_linear, quantize_fp8, quantize_int8_rows, tinygemm_linear, tinygemm_pack
from .gemm_paths import two_four_sparse
from .marlin import MAX_ROWS, repack, w4a16_marlin
from .w4a16 import CONFIG_CACHE, w4a16_matmul

SHAPES = {  # name: (N = out_features, K = in_features)
    "llama3-8b q/o": (4096, 4096), "llama3-8b gate/up": (14336, 4096), "llama3-8b down": (4096, 14336),
    "smollm2 gate/up": (1536, 576), "smollm2 down": (576, 1536),
}
BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 4096)


def time_rotating(fn, operands: list, repeats: int = 20) -> float:
    """Median microseconds per call of fn(*operands[i]), cycling through the operand sets.

    The calls are captured once in a CUDA graph and the graph is replayed, so the figure is the
    kernels' time and not Python's launch overhead (decode on a real model runs as graphs too).
    """
    calls = max(len(operands), 10)
    for ops in operands[:2]:  # compile, autotune and allocate outside the capture
        fn(*ops)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(*operands[i % len(operands)])
    graph.replay()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / calls)
    return statistics.median(times)


def weight_copies(nbytes: int, device: int | None = None) -> int:
    """How many distinct copies of a weight of `nbytes` to cycle through so that together they exceed twice the
    GPU's L2 cache: no call is timed reading from cache (SmolLM2's INT4 rows take a few hundred copies)."""
    l2 = torch.cuda.get_device_properties(torch.cuda.current_device() if device is None else device).L2_cache_size
    return max(2, -(-2 * l2 // nbytes))


def gemlite_linear(codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int):
    """The same INT4 weight ((code - zero) * scale, HQQ's convention as ours) as a layer of gemlite, a public
    Triton W4A16 library (PyPI `gemlite`, an optional dependency); None where it is not installed."""
    try:
        from gemlite import DType, GemLiteLinear
    except ImportError:
        return None
    n, k = codes.shape
    dtype = {torch.bfloat16: DType.BF16, torch.float16: DType.FP16}[scales.dtype]
    layer = GemLiteLinear(4, group_size=group_size, in_features=k, out_features=n, input_dtype=dtype,
                          output_dtype=dtype)
    layer.pack(codes.to(torch.uint8), scales, zeros, bias=None)
    return layer


def gemlite_version() -> str | None:
    try:
        from importlib.metadata import version
        return version("gemlite")
    except Exception:
        try:
            import gemlite
            return getattr(gemlite, "__version__", "unknown")
        except ImportError:
            return None


def quantize_w4(w: torch.Tensor, group_size: int):
    """Round-to-nearest INT4 of `w` as QuantLinear stores it: (packed codes, scales, zeros, codes)."""
    linear = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
    linear.weight.data = w
    layer = QuantLinear.from_linear(linear, "int4", group_size)
    return layer.qweight, layer.scales, layer.zeros, unpack_int4(layer.qweight)


def bench_shape(name: str, n: int, k: int, batch_sizes) -> list:
    dtype = torch.bfloat16
    group_size = 128 if k % 128 == 0 else 64
    copies = weight_copies(n * k // 2)  # enough for the int4 paths (bf16 copies are 4x larger)
    weights = [torch.randn(n, k, device="cuda", dtype=dtype) * 0.02 for _ in range(copies)]
    w4, peer = [], []  # peer: the same weights in gemlite, where installed
    for w in weights:
        packed, s, z, codes = quantize_w4(w, group_size)
        w4.append((packed, s, z, tinygemm_pack(codes, s, z, group_size), repack(packed, s, z, group_size)))
        if (layer := gemlite_linear(codes, s, z, group_size)) is not None:
            peer.append(layer)
    int8_w = [quantize_int8_rows(w) for w in weights]
    fp8_w = [quantize_fp8(w, rowwise=False) for w in weights]
    rows = []
    for m in batch_sizes:
        x = [torch.randn(m, k, device="cuda", dtype=dtype) for _ in range(4)]
        flops = 2 * m * n * k
        act_bytes = 2 * (m * k + m * n)
        t_bf16 = time_rotating(lambda a, w: a @ w.t(), [(x[i % 4], w) for i, w in enumerate(weights)])
        t_w4 = time_rotating(lambda a, q, s, z: w4a16_matmul(a, q, s, z, group_size),
                             [(x[i % 4], q, s, z) for i, (q, s, z, _, _) in enumerate(w4)])
        t_tiny = time_rotating(lambda a, tw, sz: tinygemm_linear(a, tw, sz, group_size),
                               [(x[i % 4], tw, sz) for i, (_, _, _, (tw, sz), _) in enumerate(w4)])
        row = {"shape": name, "N": n, "K": k, "M": m, "group": group_size, "bf16_us": t_bf16, "w4a16_us": t_w4, "tinygemm_us": t_tiny,
               "w4a16_TBps": (n * k / 2 + 2 * 2 * n * k / group_size + act_bytes) / t_w4 / 1e6,
               "bf16_TBps": (2 * n * k + act_bytes) / t_bf16 / 1e6,
               "bf16_TFLOPs": flops / t_bf16 / 1e6, "w4a16_TFLOPs": flops / t_w4 / 1e6}
        if m <= MAX_ROWS:  # the Marlin-style CUDA kernel (kernels/marlin), QuantLinear's path up to 64 rows
            row["marlin_us"] = time_rotating(w4a16_marlin, [(x[i % 4], mw) for i, (*_, mw) in enumerate(w4)])
            row["marlin_TBps"] = row["w4a16_TBps"] * t_w4 / row["marlin_us"]
        if peer and m <= MAX_ROWS:
            row["gemlite_us"] = time_rotating(lambda a, layer: layer(a), [(x[i % 4], g) for i, g in enumerate(peer)])
        if m > 16:
            row["int8_us"] = time_rotating(lambda a, wq: int8_linear(a, wq[0], wq[1]),
                                           [(x[i % 4], wq) for i, wq in enumerate(int8_w)])
        if m % 16 == 0:
            row["fp8_us"] = time_rotating(lambda a, wf: fp8_linear(a, wf[0], wf[1]),
                                          [(x[i % 4], wf) for i, wf in enumerate(fp8_w)])
        rows.append(row)
    return rows


def check_correctness(n: int = 4096, k: int = 4096, group_size: int = 128) -> dict:
    """Relative error of each path against a float32 reference on fresh random data."""
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02
    packed, s, z, codes = quantize_w4(w, group_size)
    w_deq = dequantize_int4(packed, s, z, group_size)
    marlin_packed = repack(packed, s, z, group_size)
    peer = gemlite_linear(codes, s, z, group_size)
    errors = {}
    for m in (1, 7, 64, 256):
        x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        ref = x.float() @ w_deq.t()
        out = w4a16_matmul(x, packed, s, z, group_size).float()
        errors[f"w4a16 M={m}"] = ((out - ref).norm() / ref.norm()).item()
        tw, sz = tinygemm_pack(codes, s, z, group_size)
        errors[f"tinygemm M={m}"] = ((tinygemm_linear(x, tw, sz, group_size).float() - ref).norm() / ref.norm()).item()
        if m <= MAX_ROWS:
            errors[f"Marlin M={m}"] = ((w4a16_marlin(x, marlin_packed).float() - ref).norm() / ref.norm()).item()
            if peer is not None:
                errors[f"gemlite M={m}"] = ((peer(x).float() - ref).norm() / ref.norm()).item()
    return errors


def square_comparisons(size: int = 8192) -> dict:
    """bf16 vs FP8, INT8 and 2:4 on a large compute-bound GEMM, and 2:4 at decode-like M=16."""
    a = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(size, size, device="cuda", dtype=torch.bfloat16)
    out = {"bf16_us": time_rotating(lambda x, y: x @ y.t(), [(a, w)])}
    wf = quantize_fp8(w, rowwise=False)
    out["fp8_us"] = time_rotating(lambda x: fp8_linear(x, *wf), [(a,)])
    af = quantize_fp8(a, rowwise=False)  # activations already in FP8 (as a previous FP8 layer would leave them)
    out["fp8_gemm_only_us"] = time_rotating(
        lambda x, sx: torch._scaled_mm(x, wf[0].t(), scale_a=sx, scale_b=wf[1], out_dtype=torch.bfloat16), [af])
    wf_row = quantize_fp8(w, rowwise=True)
    out["fp8_rowwise_us"] = time_rotating(lambda x: fp8_linear(x, wf_row[0], wf_row[1], rowwise=True), [(a,)])
    wi = quantize_int8_rows(w)
    out["int8_us"] = time_rotating(lambda x: int8_linear(x, *wi), [(a,)])
    sparse, dense = two_four_sparse(w)
    out["sparse24_us"] = time_rotating(lambda x: torch.nn.functional.linear(x, sparse), [(a,)])
    small = torch.randn(16, size, device="cuda", dtype=torch.bfloat16)
    out["bf16_M16_us"] = time_rotating(lambda x: x @ dense.t(), [(small,)])
    out["sparse24_M16_us"] = time_rotating(lambda x: torch.nn.functional.linear(x, sparse), [(small,)])
    return out


def run(shapes=None, batch_sizes=BATCH_SIZES) -> dict:
    if not torch.cuda.is_available():
        raise WorkshopError("bench-kernels times GPU kernels and this machine has no GPU.",
                            "Run it on a GPU machine; meanwhile kernels/RESULTS.md holds the last recorded run "
                            "(its first lines name the GPU it ran on).")
    chosen = shapes or list(SHAPES)
    unknown = [s for s in chosen if s not in SHAPES]
    if unknown:
        raise WorkshopError(f"Unknown shape(s) {unknown}.", f"Choose from: {', '.join(SHAPES)}.")
    rows = [r for name in chosen for r in bench_shape(name, *SHAPES[name], batch_sizes)]
    return {"device": device_description(), "driver": _driver(), "versions": package_versions(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "gemlite": gemlite_version(), "rows": rows, "square_8192": square_comparisons(),
            "correctness": check_correctness(),
            "w4a16_configs": {str(key): config for key, config in CONFIG_CACHE.items()}}


def _driver() -> str:
    try:
        import pynvml
        pynvml.nvmlInit()
        return pynvml.nvmlSystemGetDriverVersion()
    except Exception:
        return "unknown"


def markdown(result: dict) -> str:
    v = result["versions"]
    lines = ["# Kernel benchmark", "",
             f"Device: {result['device']}, driver {result['driver']}; torch {v['torch']}, triton {v['triton']}, "
             f"Python {v['python']}; {result['date']}.", "",
             "Median of 20 replays of a CUDA graph of >= 10 calls (CUDA events), weights rotated over copies "
             "larger than 2x L2 in total.",
             "W4A16 = ours in Triton (kernels/w4a16.py); Marlin = ours in CUDA C++ (kernels/marlin, M <= 64, "
             "QuantLinear's path there); both group 128, asymmetric; tinygemm = torch._weight_int4pack_mm. "
             "TB/s counts the bytes a path must read and write (codes, scales, zeros, activations, output).", "",
             (f"gemlite {result['gemlite']} (PyPI, Triton) ran beside them on the same weights." if result.get("gemlite")
              else "gemlite (PyPI, a public Triton W4A16 library) is not installed here: its column is empty."), "",
             "| shape | M | bf16 µs | W4A16 µs | Marlin µs | tinygemm µs | gemlite µs | W4A16 vs bf16 | Marlin vs bf16 | "
             "Marlin vs tinygemm | Marlin TB/s | INT8 µs | FP8 µs |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    nan = float("nan")
    for r in result["rows"]:
        marlin = r.get("marlin_us", nan)
        lines.append(f"| {r['shape']} ({r['N']}x{r['K']}) | {r['M']} | {r['bf16_us']:.1f} | {r['w4a16_us']:.1f} | "
                     f"{marlin:.1f} | {r['tinygemm_us']:.1f} | {r.get('gemlite_us', nan):.1f} | "
                     f"{r['bf16_us'] / r['w4a16_us']:.2f}x | "
                     f"{r['bf16_us'] / marlin:.2f}x | {r['tinygemm_us'] / marlin:.2f}x | {r.get('marlin_TBps', nan):.2f} | "
                     f"{r.get('int8_us', nan):.1f} | {r.get('fp8_us', nan):.1f} |")
    sq = result["square_8192"]
    lines += ["", "8192 x 8192 x 8192 (compute bound) and M = 16 (decode-like):", "",
              f"- bf16 {sq['bf16_us']:.0f} µs; FP8 per-tensor {sq['bf16_us'] / sq['fp8_us']:.2f}x "
              f"(the GEMM alone on FP8 activations {sq['bf16_us'] / sq['fp8_gemm_only_us']:.2f}x), FP8 row-wise "
              f"{sq['bf16_us'] / sq['fp8_rowwise_us']:.2f}x, INT8 {sq['bf16_us'] / sq['int8_us']:.2f}x, "
              f"2:4 sparse {sq['bf16_us'] / sq['sparse24_us']:.2f}x faster than bf16 (activation quantization included "
              "for FP8/INT8)",
              f"- M = 16: 2:4 sparse {sq['bf16_M16_us'] / sq['sparse24_M16_us']:.2f}x of bf16", "",
              "Relative error against a float32 reference of the same dequantized weights: " +
              ", ".join(f"{k} {v:.1e}" for k, v in result["correctness"].items())]
    return "\n".join(lines) + "\n"


def agreement(previous: dict, result: dict, tolerance: float = 0.05) -> str:
    """How many of the timings two runs share agree within `tolerance`, and the largest differences."""
    before = {(r["shape"], r["M"]): r for r in previous["rows"]}
    diffs = [(abs(r[k] / before[key][k] - 1), k, *key, before[key][k], r[k])
             for r in result["rows"] if (key := (r["shape"], r["M"])) in before
             for k in ("bf16_us", "w4a16_us", "tinygemm_us", "marlin_us", "gemlite_us") if k in r and k in before[key]]
    if not diffs:
        return ""
    worst = sorted(diffs, reverse=True)[:5]
    return (f"Stability: against the previous run ({previous['date']}), {sum(d[0] <= tolerance for d in diffs)} of "
            f"{len(diffs)} timings (bf16, W4A16, Marlin, tinygemm) agree within {tolerance:.0%}; the largest differences: " +
            "; ".join(f"{k[:-3]} {shape} M={m} {a:.1f} -> {b:.1f} µs" for _, k, shape, m, a, b in worst) + ".\n")


def plot_roofline(result: dict, path, bandwidth_bytes_per_s: float, peak_flops: float):
    """Achieved TFLOP/s against arithmetic intensity for bf16 and W4A16, under the two ceilings."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    intensity = [0.1, 1e4]
    ax.loglog(intensity, [min(i * bandwidth_bytes_per_s, peak_flops) / 1e12 for i in intensity], "k-", lw=1)
    ax.loglog([i for i in (peak_flops / bandwidth_bytes_per_s,)] * 2, [0.01, peak_flops / 1e12], "k:", lw=0.5)
    paths = (("bf16 cuBLAS", "bf16_us", 2, "o"), ("W4A16 (ours, Triton)", "w4a16_us", 0.5, "s"),
             ("Marlin (ours, CUDA)", "marlin_us", 0.5, "^"))
    for path_name, us_key, bytes_per_weight, marker in paths:
        for shape in dict.fromkeys(r["shape"] for r in result["rows"]):
            rows = [r for r in result["rows"] if r["shape"] == shape and "llama" in shape and us_key in r]
            if not rows:
                continue
            xs = [2 * r["M"] * r["N"] * r["K"] / (bytes_per_weight * r["N"] * r["K"] + 2 * r["M"] * (r["K"] + r["N"])) for r in rows]
            ys = [2 * r["M"] * r["N"] * r["K"] / r[us_key] / 1e6 for r in rows]
            ax.loglog(xs, ys, marker, ms=4, label=f"{path_name}, {shape}")
    ax.set_xlabel("arithmetic intensity (FLOPs per byte read)")
    ax.set_ylabel("TFLOP/s")
    ax.set_title(f"Roofline, {result['device']}")
    ax.legend(fontsize=6)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return fig
