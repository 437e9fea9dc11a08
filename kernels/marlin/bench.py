"""Time the Marlin-style W4A16 kernel against bf16 cuBLAS on the Llama-3-8B MLP shapes (GPU only).

    python -m kernels.marlin.bench

Timed as `workshop bench-kernels` times its rows (kernels.bench.time_rotating: calls captured in a
CUDA graph, the median of the graph's replays, launch overhead out). The weight is a random bf16
linear quantized by QuantLinear (INT4, group 128) and repacked; "TB/s of codes" counts only the 4-bit codes read.
"""
import torch

from common.quant.qlinear import QuantLinear
from kernels.bench import time_rotating
from kernels.marlin import repack, w4a16_marlin

SHAPES = ((14336, 4096), (4096, 14336))  # Llama-3-8B gate/up and down: (out_features, in_features)


def main():
    for n, k in SHAPES:
        linear = torch.nn.Linear(k, n, bias=False).cuda().to(torch.bfloat16)
        layer = QuantLinear.from_linear(linear, "int4", group_size=128)
        packed = repack(layer.qweight, layer.scales, layer.zeros, 128)
        for m in (1, 16, 64):
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            dense = time_rotating(lambda a, w: a @ w.T, [(x, linear.weight)])
            marlin = time_rotating(w4a16_marlin, [(x, packed)])
            print(f"{n}x{k} M={m}: bf16 {dense:.1f} us, marlin {marlin:.1f} us, {dense / marlin:.2f}x, "
                  f"{n * k / 2 / marlin / 1e6:.2f} TB/s of codes")


if __name__ == "__main__":
    main()
