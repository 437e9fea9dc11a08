"""Marlin-style W4A16 GEMM in CUDA C++ (kernels/marlin/w4a16.cu): the offline weight repacking, its
exact inverse, a pure-PyTorch model of what the kernel computes, and the loader of the extension.

QuantLinear uses it on CUDA for INT4 layers with at most 64 rows of input (decode, small batches), its
repacked weight kept beside the plain layout (`common.quant.kernel_paths.marlin_weight`); NOTES.md has
its speed and what limits it; `workshop bench-kernels` times it beside the other paths (its "Marlin"
column).

Repacked layout, for the weight of a QuantLinear (N = out_features, K = in_features, groups of g along K):
  qweight  int32 [K // 64, 8 * N]: per K tile of 64 and per block of 16 output columns, 32 lanes x 4
           words; word `step` of lane l holds the 8 codes of that lane's mma.m16n8k16 B fragments for
           k16 step `step` of the tile and both n8 halves of the 16 columns. With r = l // 4, c = l % 4,
           k0 = 16 * step + 2c (tile-relative), nibble i of the word (bits 4i..4i+3) is the code of
               i = 0: (n = r, k0)      i = 1: (n = r, k0 + 8)      i = 2: (r + 8, k0)      i = 3: (r + 8, k0 + 8)
               i = 4..7: the same with k + 1
           so (word >> 4j) & 0x000F000F holds nibbles j and j + 4 in its two 16-bit halves: the register
           b0 (j = 0, 2) or b1 (j = 1, 3) of n8 tile j // 2, low half first.
  scales, zeros  [K // g, N] (transposed, same dtype): the 64 columns of a block are 128 contiguous bytes.
"""
from __future__ import annotations

import functools
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import torch

from common.errors import WorkshopError
from common.quant.layout import pack_int4, unpack_int4

TILE_K = 64       # K of one repacked code tile (a pipeline stage holds one or two)
TILE_N = 64       # output columns per thread block
MAX_ROWS = 64     # M the kernel takes (4 MMA tiles of 16 rows)
MAGIC = {torch.float16: (0x6400, 1024.0), torch.bfloat16: (0x4300, 128.0)}  # exponent bits, value
_HERE = Path(__file__).resolve().parent
SOURCES = (_HERE / "binding.cpp", _HERE / "w4a16.cu")


class MarlinWeight(NamedTuple):
    qweight: torch.Tensor   # int32 [K // 64, 8 N], fragment order
    scales: torch.Tensor    # [K // g, N]
    zeros: torch.Tensor     # [K // g, N]
    group_size: int         # g (K for per channel)

    @property
    def shape(self) -> tuple[int, int]:
        """(N, K) of the weight."""
        return self.qweight.shape[1] // 8, self.qweight.shape[0] * TILE_K


# The codes of one K tile x 16 columns, [N, K] viewed as
#   (n16 block j, half h, row r, tile t, step s, k half kh, lane column c, pair p)
# with n = 16 j + 8 h + r and k = 64 t + 16 s + 8 kh + 2 c + p, permuted to the stored order
#   (t, j, r, c, s, p, h, kh): lane = 4 r + c, word = s, nibble = 4 p + 2 h + kh.
_TO_FRAGMENTS = (3, 0, 2, 6, 4, 7, 1, 5)
_FROM_FRAGMENTS = tuple(_TO_FRAGMENTS.index(i) for i in range(8))


def _group(group_size: int | None, K: int) -> int:
    return K if group_size in (None, -1) else group_size


def check_shapes(N: int, K: int, group_size: int) -> None:
    """Raise a WorkshopError for shapes the kernel does not take (same rules as the binding's checks)."""
    if K % TILE_K or N % TILE_N:
        raise WorkshopError(f"The Marlin W4A16 kernel needs in_features % {TILE_K} == 0 and out_features % {TILE_N} "
                            f"== 0; this layer is {N}x{K}.", "Keep the Triton kernel (kernels.w4a16) for this layer.")
    if not (group_size == 32 or (group_size > 0 and group_size % TILE_K == 0)) or K % group_size:
        raise WorkshopError(f"Group size {group_size} is not supported by the Marlin W4A16 kernel (K = {K}).",
                            "Quantize with group size 32, 64, 128 (a multiple of 64 dividing K) or per channel.")


def repack(qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int | None) -> MarlinWeight:
    """QuantLinear's INT4 tensors (qweight uint8 [N, K // 2], scales/zeros [N, K // g]) -> the kernel's
    fragment-ordered tensors. A pure permutation of codes and of scales/zeros: `unpack` inverts it exactly.
    `group_size` None or -1 means per channel (g = K). Runs on any device."""
    N, K = qweight.shape[0], qweight.shape[1] * 2
    g = _group(group_size, K)
    check_shapes(N, K, g)
    if tuple(scales.shape) != (N, K // g) or tuple(zeros.shape) != (N, K // g):
        raise WorkshopError(f"scales/zeros have shapes {tuple(scales.shape)}/{tuple(zeros.shape)}, expected "
                            f"{(N, K // g)} for group size {g}.", "Pass the layer's own scales and zeros.")
    if not torch.equal(zeros, zeros.round()):
        raise WorkshopError("The Marlin W4A16 kernel takes integer zero points (it subtracts them exactly in 16-bit "
                            "floats); these zeros have fractions.",
                            "Quantize with integer zeros (QuantLinear's INT4 does), or keep the Triton kernel.")
    codes = unpack_int4(qweight)                                   # uint8 [N, K]
    codes = codes.reshape(N // 16, 2, 8, K // TILE_K, 4, 2, 4, 2).permute(*_TO_FRAGMENTS)
    nibbles = codes.reshape(-1, 8)                                 # one row per word, nibble order
    words = (nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)).contiguous()  # 4 bytes, nibble 2b low in byte b
    qw = words.view(torch.int32).reshape(K // TILE_K, 8 * N)       # little-endian: byte b = bits 8b..8b+7
    return MarlinWeight(qw, scales.t().contiguous(), zeros.t().contiguous(), g)


def unpack(packed: MarlinWeight) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The exact inverse of `repack`: (qweight uint8 [N, K // 2], scales [N, K // g], zeros [N, K // g], g)."""
    N, K = packed.shape
    nibbles = _word_nibbles(packed.qweight)                        # [K/64 * 8N, 8]
    codes = nibbles.reshape(K // TILE_K, N // 16, 8, 4, 4, 2, 2, 2).permute(*_FROM_FRAGMENTS).reshape(N, K)
    return pack_int4(codes), packed.scales.t().contiguous(), packed.zeros.t().contiguous(), packed.group_size


def _word_nibbles(qweight: torch.Tensor) -> torch.Tensor:
    """int32 words -> their 8 nibbles, nibble i = bits 4i..4i+3, as uint8 [words, 8]."""
    b = qweight.contiguous().view(torch.uint8).reshape(-1, 4)
    return torch.stack([b & 0xF, b >> 4], dim=-1).reshape(-1, 8)


def dequantize_repacked(packed: MarlinWeight, dtype: torch.dtype) -> torch.Tensor:
    """What the kernel's registers hold, modelled in PyTorch from the repacked tensors alone: [N, K] in `dtype`.

    Follows w4a16.cu step by step: per lane and word, register j = (word >> 4j) & 0x000F000F | MAGIC (two
    16-bit floats MAGIC + code), then (v - (MAGIC + zero)) * scale in `dtype`, with the lane -> (n, k) mapping
    of the mma.m16n8k16 B fragment; for float16 and odd j, the kernel's shorter form: the codes left at bits
    4-7, (word >> 4(j - 1)) & 0x00F000F0 | MAGIC = MAGIC + 16 code, then fma(v, 1/16, -(MAGIC / 16 + zero)).
    Each 16-bit operation rounds once, like the GPU's HSUB2/HFMA2/HMUL2. For integer zeros this equals
    QuantLinear.dequantized_weight(dtype) exactly (tests/test_marlin.py)."""
    if dtype not in MAGIC:
        raise WorkshopError(f"The kernel computes in float16 or bfloat16, not {dtype}.", "Pass one of those.")
    N, K = packed.shape
    bits, value = MAGIC[dtype]
    words = packed.qweight.reshape(K // TILE_K, N // 16, 32, 4).to(torch.int64) & 0xFFFFFFFF  # [t, j, lane, step]
    dev = packed.qweight.device
    lane = torch.arange(32, device=dev)
    r, c = lane // 4, lane % 4
    step = torch.arange(4, device=dev)
    t, j = torch.arange(K // TILE_K, device=dev), torch.arange(N // 16, device=dev)
    out = torch.empty(N, K, dtype=dtype, device=packed.qweight.device)
    scales, zeros = packed.scales.to(dtype), packed.zeros.to(dtype)
    for reg in range(4):                                           # the four B registers of a word
        tile, kh = reg // 2, reg % 2                               # n8 tile (h) and k half of this register
        in_place = kh == 1 and dtype == torch.float16              # MAGIC + 16 code: nibbles left at bits 4-7
        shift, mask = (4 * (reg - 1), 0x00F000F0) if in_place else (4 * reg, 0x000F000F)
        v = ((words >> shift) & mask) | (bits | (bits << 16))
        n = (16 * j[None, :, None, None] + 8 * tile + r[None, None, :, None]).expand(K // TILE_K, -1, -1, 4)
        for pair, half in ((0, v & 0xFFFF), (1, v >> 16)):          # low half: k0, high half: k0 + 1
            k = (TILE_K * t[:, None, None, None] + 16 * step[None, None, None, :] + 8 * kh
                 + 2 * c[None, None, :, None] + pair).expand(-1, N // 16, -1, -1)
            q_magic = half.to(torch.int16).view(dtype)             # MAGIC + (16) code (< 0x8000: no sign bit)
            grp = k // packed.group_size
            if not in_place:
                centred = q_magic - (zeros[grp, n] + torch.tensor(value, dtype=dtype))  # MAGIC + zero: exact
            else:  # an fma rounds once: its exact result, then one rounding
                neg_zero = -(zeros[grp, n] + torch.tensor(value / 16, dtype=dtype))
                centred = (q_magic.double() * (1 / 16) + neg_zero.double()).to(dtype)
            out[n, k] = centred * scales[grp, n]                     # one rounding each, in dtype
    return out


# ------------------------------------------------------------------------------------------------------
# The CUDA extension, built at first use.
_extensions: dict = {}  # W4A16_PROBE value (w4a16.cu) -> the built module; 0 is the real kernel


def load_extension(verbose: bool = False, probe: int = 0):
    """Build (once, cached by torch under ~/.cache/torch_extensions) and import the extension. torch compiles
    for the visible GPUs' architectures unless TORCH_CUDA_ARCH_LIST says otherwise (e.g. "9.0"). `probe` 1 or 2
    builds the copies kernels/limits.py times (w4a16.cu's W4A16_PROBE: the copies only, the math only)."""
    if probe in _extensions:
        return _extensions[probe]
    if not torch.cuda.is_available():
        raise WorkshopError("The Marlin W4A16 kernel needs a CUDA GPU; none is visible.",
                            "On a CPU, use QuantLinear's dequantize-then-matmul path.")
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        raise WorkshopError(f"The Marlin W4A16 kernel needs compute capability 8.0+ (cp.async, bf16 mma.sync); "
                            f"this GPU is {major}.{minor}.", "Use the Triton kernel (kernels.w4a16) on this GPU.")
    from torch.utils.cpp_extension import load
    _extensions[probe] = load(name="workshop_marlin_w4a16" + (f"_probe{probe}" if probe else ""),
                              sources=[str(s) for s in SOURCES], extra_cflags=["-O3"],
                              extra_cuda_cflags=["-O3", "-lineinfo", *([f"-DW4A16_PROBE={probe}"] if probe else [])],
                              verbose=verbose)
    return _extensions[probe]


def k_tile_for(K: int, group_size: int) -> int:
    """K per pipeline stage the kernel takes (w4a16.cu, k_tile_for): 128 where K and the group allow."""
    return 128 if K % 128 == 0 and (group_size <= 64 or group_size % 128 == 0) else 64


MAX_BLOCKS_PER_SM = 4  # blocks per SM choose_splits aims for, where they fit


@functools.lru_cache(maxsize=None)
def resident_blocks(device_index: int, rows: int, K: int, group_size: int, k_tile: int, bf16: bool) -> int:
    """Blocks of the kernel launched for `rows` rows, K, group and K tile that fit on one SM of the GPU at once
    (CUDA's occupancy calculator: registers and shared memory of that instantiation)."""
    with torch.cuda.device(device_index):
        return load_extension().resident_blocks(rows, K, group_size, k_tile, bf16)


def choose_splits(N: int, K: int, group_size: int, rows: int = 1, k_tile: int = 0,
                  device: torch.device | None = None, dtype: torch.dtype = torch.bfloat16) -> int:
    """K slices per column tile: the most that keep every block of the launch resident at once, at most
    MAX_BLOCKS_PER_SM per SM (a block keeps only a few K tiles in flight, and one SM's warps hide each other's
    latency), each slice at least 2 K tiles. A second wave of blocks costs more than the slices gain: the
    earlier rule ignored how many blocks fit, and at 32 rows on the 8B gate/up layer took 3 slices where 2
    took 17% less time (kernels/marlin/NOTES.md, fifth version, has the sweeps)."""
    k_tile = k_tile or k_tile_for(K, group_size)
    index = _device_index(torch.device("cuda") if device is None else torch.device(device))
    sms = torch.cuda.get_device_properties(index).multi_processor_count
    per_sm = min(MAX_BLOCKS_PER_SM, resident_blocks(index, rows, K, group_size, k_tile, dtype == torch.bfloat16))
    return max(1, min(per_sm * sms // (N // TILE_N), (K // k_tile) // 2))


def _device_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


_locks: dict = {}  # (device index, stream) -> int32 counters, one per column tile of 64, zero between calls


def locks_for(device: torch.device, stream: torch.cuda.Stream | None = None) -> torch.Tensor:
    """The kernel's counters for split-K on one GPU stream: how many K slices of each column tile are done. The
    last slice adds the partial sums and sets its counter back to zero, so one zeroed tensor serves every call
    on that stream (sized for N up to 4M columns). One per stream: two streams sharing counters would count
    each other's slices. Made at a stream's first call; during a CUDA graph capture it comes from the graph's
    memory pool and lives as long as this table holds it."""
    index = _device_index(device)
    stream = stream if stream is not None else torch.cuda.current_stream(index)
    key = (index, stream.cuda_stream)
    if key not in _locks:
        with torch.cuda.device(index), torch.cuda.stream(stream):
            _locks[key] = torch.zeros(1 << 16, dtype=torch.int32, device=torch.device("cuda", index))
    return _locks[key]


@torch.library.custom_op("workshop::w4a16_marlin", mutates_args=())
def _gemm(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, group_size: int, splits: int, k_tile: int, norm_weight: torch.Tensor | None, eps: float, silu_mul: bool,
          residual: torch.Tensor | None) -> torch.Tensor:
    # A registered operator, so torch.compile (decode's compiled step) keeps it as one opaque call. The
    # split-K counters are back at zero when it returns: no mutation anyone can see. They and the alignment
    # are looked at here, where the stream and the tensors are real even under torch.compile: the binding's
    # own alignment check would end the process on the H200 image (see w4a16_marlin).
    if x.data_ptr() % 16:
        raise WorkshopError("x does not start on a 16-byte boundary (cp.async copies 16 bytes).",
                            "A sliced view can do this: pass x.clone().")
    with torch.cuda.device(x.device):
        stream = torch.cuda.current_stream(x.device)
        return load_extension().w4a16_gemm(x, qweight, scales, zeros, locks_for(x.device, stream), group_size, splits,
                                           k_tile, norm_weight, eps, silu_mul, residual, stream.cuda_stream)


@_gemm.register_fake
def _(x, qweight, scales, zeros, group_size, splits, k_tile, norm_weight, eps, silu_mul, residual):
    return x.new_empty(x.shape[0], qweight.shape[1] // 8)


def w4a16_marlin(x: torch.Tensor, packed: MarlinWeight, splits: int | None = None, k_tile: int = 0, *,
                 norm_weight: torch.Tensor | None = None, eps: float = 1e-6, silu_mul: bool = False,
                 residual: torch.Tensor | None = None) -> torch.Tensor:
    """out[..., N] = f(x) @ W^T (+ residual) on the GPU, W given by `repack`; x fp16 or bf16 with at most 64
    rows (leading dimensions flattened), `packed` repacked with scales and zeros in x's dtype. splits: K slices (None:
    `choose_splits`) and k_tile (K per pipeline stage, 64 or 128; 0: `k_tile_for`) are for benchmarks and
    for callers that choose them once (QuantLinear).

    What a decode step does next to a linear layer, done inside the same kernel (`fused_reference` is the
    same in plain PyTorch): f = RMSNorm with `norm_weight` and `eps` (Llama's, x / sqrt(mean(x^2) + eps) *
    weight), or with `silu_mul` the input is gate and up side by side, [..., 2K], and f = silu(gate) * up;
    `residual` [..., N] is added to the result."""
    N, K = packed.shape
    width = 2 * K if silu_mul else K
    # Checked here as well as in the binding: on the H200 image an error thrown by the compiled
    # extension crashed the process (segmentation fault) instead of reaching Python.
    if x.shape[-1] != width:
        raise WorkshopError(f"x has {x.shape[-1]} features, the weight takes {K}" +
                            (" (with silu_mul: gate and up side by side, 2K)." if silu_mul else "."),
                            "Pass the layer's input.")
    if x.dtype not in MAGIC:
        raise WorkshopError(f"The Marlin W4A16 kernel takes float16 or bfloat16 activations, got {x.dtype}.",
                            "Cast them (x.to(torch.bfloat16)) or use the dequantize-then-matmul path for float32.")
    if norm_weight is not None and silu_mul:
        raise WorkshopError("RMSNorm (norm_weight) and silu_mul are inputs of different layers (q/k/v or gate/up, "
                            "and down).", "Pass one of them.")
    if norm_weight is not None and (norm_weight.shape != (K,) or norm_weight.dtype != x.dtype):
        raise WorkshopError(f"norm_weight is {tuple(norm_weight.shape)} {norm_weight.dtype}; the RMSNorm before this "
                            f"layer has a [{K}] weight of x's dtype ({x.dtype}).", "Pass norm.weight.to(x.dtype).")
    x2 = x.reshape(-1, width).contiguous()
    rows = x2.shape[0]
    if not 1 <= rows <= MAX_ROWS:
        raise WorkshopError(f"The Marlin W4A16 kernel takes 1..{MAX_ROWS} rows, got {rows}.",
                            "For prefill, dequantize once and use a dense matmul, or call it per 64-row chunk.")
    if residual is not None and (residual.shape[:-1].numel() != rows or residual.shape[-1] != N or
                                 residual.dtype != x.dtype):
        raise WorkshopError(f"residual is {tuple(residual.shape)} {residual.dtype}; the output is {rows} x {N} "
                            f"{x.dtype}.", "Pass the tensor the layer's output is added to.")
    if k_tile not in (0, 64, 128) or (k_tile == 128 and k_tile_for(K, packed.group_size) != 128):
        raise WorkshopError(f"k_tile={k_tile} does not fit K={K} with group size {packed.group_size}.",
                            "Use 0 (the kernel's choice) or 64.")
    k_tile = k_tile or k_tile_for(K, packed.group_size)
    if splits is None:
        splits = choose_splits(N, K, packed.group_size, rows, k_tile, x.device, x.dtype)
    if not torch.compiler.is_compiling():
        load_extension()  # a build failure is a WorkshopError here, not inside the operator
    if packed.scales.dtype != x.dtype:  # a cast here would run on every call
        raise WorkshopError(f"The repacked scales are {packed.scales.dtype} and the activations {x.dtype}.",
                            "Repack once with the activations' dtype: repack(qweight, scales.to(dtype), "
                            "zeros.to(dtype), group_size).")
    out = _gemm(x2, packed.qweight, packed.scales, packed.zeros, packed.group_size, splits, k_tile,
                None if norm_weight is None else norm_weight.contiguous(), eps, silu_mul,
                None if residual is None else residual.reshape(rows, N).contiguous())
    return out.reshape(*x.shape[:-1], N)


def fused_reference(x: torch.Tensor, weight: torch.Tensor, *, norm_weight: torch.Tensor | None = None,
                    eps: float = 1e-6, silu_mul: bool = False,
                    residual: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """What `w4a16_marlin` computes with a prologue and a residual, in float64 PyTorch on the dense weight
    [N, K] (e.g. QuantLinear.dequantized_weight), with f(x) as the second result: the reference its tests
    compare with (the kernel rounds f(x) to x's 16-bit dtype; this does not)."""
    x = x.double()
    if norm_weight is not None:
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.double()
    if silu_mul:
        gate, up = x.chunk(2, dim=-1)
        x = torch.nn.functional.silu(gate) * up
    out = x @ weight.double().T
    return (out if residual is None else out + residual.double()), x


_unusable: dict = {}  # device index -> why the kernel cannot run there (said once)


def usable(device: torch.device) -> bool:
    """Whether the kernel builds and runs on `device` (a CUDA GPU, sm_80+, with nvcc to build it). The first
    failure is said once as a warning; callers then keep their other path."""
    index = _device_index(device)
    if index not in _unusable:
        try:
            with torch.cuda.device(index):
                load_extension()
            locks_for(torch.device("cuda", index))  # the current stream's, made before any graph capture
            _unusable[index] = None
        except Exception as error:  # no nvcc, a compiler error, an old GPU: the caller falls back
            _unusable[index] = str(error).splitlines()[0]
            warnings.warn(f"The Marlin W4A16 kernel cannot run on cuda:{index} ({_unusable[index]}); "
                          "INT4 layers use the Triton kernel and the dequantize-then-matmul path instead.")
    return _unusable[index] is None


PROFILE = _HERE / "profile-h200.txt"


def read_profile(path: Path = PROFILE) -> dict:
    """The recorded Nsight Compute profile of the kernel (NOTES.md): its metrics by name (the last number
    on each metric line), the layer's shape, instructions per weight and warp stalls per issued instruction."""
    metrics, shape = {}, {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("# shape:"):
            shape = {k: int(v) for k, v in (item.split("=") for item in line.split(":", 1)[1].split())}
        elif line.startswith("    "):  # "name   [unit]   value", columns two or more spaces apart
            fields = re.split(r"\s{2,}", line.strip())
            metrics[fields[0]] = float(fields[-1].replace(",", ""))
    stalls = {name.split("stalled_")[1].split("_per_issue")[0]: value for name, value in metrics.items()
              if "issue_stalled_" in name}
    instructions = metrics["smsp__inst_executed.sum"] * 32  # warp instructions x threads per warp
    return {"metrics": metrics, "shape": shape, "stalls": dict(sorted(stalls.items(), key=lambda kv: -kv[1])),
            "instructions_per_weight": instructions / (shape["N"] * shape["K"])}
